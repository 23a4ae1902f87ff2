"""Storage beside the auditor's folder: the event store on eventsourcing (SQLite, PostgreSQL), the append path
and its speed machinery, and whole-log verification over a database, calling reledger.ledger's rules.

store.py (LedgerStore: append, read, prove, checkpoint), plan.py (the append rule: a pure function of the
caches and the checked entries), pool.py (the signature-checking threads and worker processes), schema.py
(tables, triggers, roles of both dialects), sqlite.py and postgres.py (each dialect's recorder and append
transaction), pgpipe.py (libpq's pipeline mode), reader.py (read-only access)."""
