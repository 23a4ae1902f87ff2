"""Storage beside the auditor's folder: the event store on eventsourcing (SQLite, PostgreSQL), the append path
and its speed machinery, and whole-log verification over a database, calling reledger.ledger's rules."""
