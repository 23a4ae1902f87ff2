"""The ledger's tables, triggers and roles, for both SQL dialects, in one place.

Beside eventsourcing's events table (one row per entry: originator_id = chain, originator_version
= seq, topic = entry type, state = the envelope bytes; created by the library's recorder), the
ledger owns two tables outright:

* ``<name>_log``: one row per entry with its gap-free global index, record time, entry hash and
  the RFC 9162 Merkle nodes that the leaf completes (proofs need O(log n) point reads);
* ``<name>_checkpoints``: the signed checkpoints.

All three tables are append-only in the database itself:

* SQLite: triggers refuse UPDATE and DELETE, and an INSERT that meets an existing row (SQLite
  fires no DELETE trigger for the rows that ``REPLACE``, ``INSERT OR REPLACE`` remove unless
  ``recursive_triggers`` is on, which is a setting of the writer's own connection; an upsert's
  ``DO UPDATE`` is refused by the UPDATE trigger as well);
* PostgreSQL: row triggers refuse UPDATE (also an upsert's ``ON CONFLICT DO UPDATE``) and
  DELETE, statement triggers refuse TRUNCATE; ``grant_serving_role`` creates a role that holds
  INSERT and SELECT only.

The log's index is gap-free: a trigger refuses a row whose index is not the next one.
"""

from __future__ import annotations

from .reader import REGISTRY_TYPES_SQL, Tables


def _short(table: str) -> str:
    return table.split(".")[-1]


def _log_and_checkpoints(t: Tables, blob: str, idx: str, options: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {t.log} ("
        f" idx {idx},"
        " chain TEXT NOT NULL,"
        " seq BIGINT NOT NULL,"
        " type TEXT NOT NULL,"
        " command_id TEXT NOT NULL,"
        f" entry_hash {blob} NOT NULL,"
        " recorded_us BIGINT NOT NULL,"
        f" nodes {blob} NOT NULL,"
        " UNIQUE (chain, seq),"
        " UNIQUE (command_id, chain))" + options,
        f"CREATE TABLE IF NOT EXISTS {t.checkpoints} ("
        " size BIGINT PRIMARY KEY,"
        f" root {blob} NOT NULL,"
        f" note {blob} NOT NULL,"
        " created_us BIGINT NOT NULL)",
        registry_index(t),
    ]


def registry_index(t: Tables) -> str:
    """A partial index of the log's key-registry entries (a few hundred among millions): the
    registry is read from them (``records_of_types`` with these types, spelled as here, which the
    planners need to use it), not by a scan of the whole log at a writer's first append."""
    return (f"CREATE INDEX IF NOT EXISTS {_short(t.log)}_registry ON {t.log} (idx) "
            f"WHERE type IN ({REGISTRY_TYPES_SQL})")


# --- SQLite ------------------------------------------------------------------------------------

def sqlite_keys(t: Tables) -> dict[str, list[tuple[str, ...]]]:
    """Each ledger table's unique keys (the columns of each), which an INSERT must not meet.
    (The log's own index needs no trigger of this kind: the gap-free trigger admits only the
    next index, which no row has.)"""
    return {t.events: [("originator_id", "originator_version")],
            t.log: [("chain", "seq"), ("command_id", "chain")],
            t.checkpoints: [("size",)]}


def sqlite_trigger_names(t: Tables) -> list[str]:
    names = [f"{_short(table)}_no_{op}" for table in (t.events, t.log, t.checkpoints)
             for op in ("update", "delete", "replace")]
    return names + [f"{_short(t.log)}_gap_free"]


def sqlite_ddl(t: Tables) -> list[str]:
    """The log and checkpoint tables and the triggers of all three tables (created if missing:
    an existing ledger gains a trigger added here the next time it is opened)."""
    # on SQLite, INTEGER PRIMARY KEY makes idx the table's rowid: one b-tree less per row
    stmts = _log_and_checkpoints(t, "BLOB", "INTEGER PRIMARY KEY", "")
    for table, keys in sqlite_keys(t).items():
        name = _short(table)
        for op in ("UPDATE", "DELETE"):
            stmts.append(
                f"CREATE TRIGGER IF NOT EXISTS {name}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'reledger: {table} is append-only ({op} refused)'); END")
        exists = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table} WHERE " + " AND ".join(f"{c} = NEW.{c}" for c in key) + ")"
            for key in keys)
        stmts.append(
            f"CREATE TRIGGER IF NOT EXISTS {name}_no_replace BEFORE INSERT ON {table} WHEN {exists} "
            f"BEGIN SELECT RAISE(ABORT, 'reledger: {table} is append-only (an INSERT that meets an existing row "
            f"is refused: REPLACE, INSERT OR REPLACE, upsert)'); END")
    stmts.append(
        f"CREATE TRIGGER IF NOT EXISTS {_short(t.log)}_gap_free BEFORE INSERT ON {t.log} "
        f"WHEN NEW.idx != (SELECT COALESCE(MAX(idx) + 1, 0) FROM {t.log}) "
        f"BEGIN SELECT RAISE(ABORT, 'reledger: the log index must be gap-free'); END")
    return stmts


# --- PostgreSQL --------------------------------------------------------------------------------

def postgres_trigger_names(t: Tables) -> list[str]:
    names = [f"{_short(table)}_{kind}" for table in (t.events, t.log, t.checkpoints)
             for kind in ("append_only", "no_truncate")]
    return names + [f"{_short(t.log)}_gap_free"]


def postgres_ddl(t: Tables) -> list[str]:
    schema = t.log.split(".")[0]
    # as eventsourcing does for its events table: statistics early, so that the planner uses
    # the command id index (idempotency look-ups) long before autovacuum's defaults
    stmts = _log_and_checkpoints(t, "BYTEA", "BIGINT PRIMARY KEY",
                                 " WITH (autovacuum_analyze_threshold = 1000, autovacuum_analyze_scale_factor = 0.01)")
    stmts.append(
        f"CREATE OR REPLACE FUNCTION {schema}.reledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'reledger: % is append-only (% refused)', TG_TABLE_NAME, TG_OP; END $$")
    stmts.append(
        f"CREATE OR REPLACE FUNCTION {schema}.reledger_gap_free_stmt() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "DECLARE lo bigint; hi bigint; n bigint; below bigint; top bigint; "
        "BEGIN SELECT MIN(idx), MAX(idx), COUNT(*) INTO lo, hi, n FROM reledger_new_rows; "
        "IF n = 0 THEN RETURN NULL; END IF; "
        f"SELECT COALESCE(MAX(idx), -1) INTO below FROM {t.log} WHERE idx < lo; "
        f"SELECT MAX(idx) INTO top FROM {t.log}; "
        "IF lo <> below + 1 OR hi - lo + 1 <> n OR top <> hi THEN "
        "RAISE EXCEPTION 'reledger: the log index must be gap-free'; END IF; RETURN NULL; END $$")
    stmts.append(
        f"CREATE OR REPLACE FUNCTION {schema}.reledger_gap_free() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF NEW.idx <> (SELECT COALESCE(MAX(idx) + 1, 0) FROM {t.log}) THEN "
        "RAISE EXCEPTION 'reledger: the log index must be gap-free'; END IF; RETURN NEW; END $$")
    for table in (t.events, t.log, t.checkpoints):
        short = _short(table)
        # (an upsert's ON CONFLICT DO UPDATE fires the UPDATE trigger: refused too)
        stmts.append(f"DROP TRIGGER IF EXISTS {short}_append_only ON {table}")
        stmts.append(f"CREATE TRIGGER {short}_append_only BEFORE UPDATE OR DELETE ON {table} "
                     f"FOR EACH ROW EXECUTE FUNCTION {schema}.reledger_append_only()")
        stmts.append(f"DROP TRIGGER IF EXISTS {short}_no_truncate ON {table}")
        stmts.append(f"CREATE TRIGGER {short}_no_truncate BEFORE TRUNCATE ON {table} "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reledger_append_only()")
    stmts.append(f"DROP TRIGGER IF EXISTS {_short(t.log)}_gap_free ON {t.log}")
    stmts.append(f"CREATE TRIGGER {_short(t.log)}_gap_free AFTER INSERT ON {t.log} "
                 "REFERENCING NEW TABLE AS reledger_new_rows "
                 f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reledger_gap_free_stmt()")
    return stmts


def postgres_grant_checkpointer_role(conn, t: Tables, schema: str, role: str) -> None:
    """Create (if needed) the login role the checkpointer runs as (processes/checkpointer.py), on
    an autocommit psycopg connection: SELECT on the events and the log (to compute roots, chain
    heads and consistency proofs), SELECT and INSERT on the checkpoints, nothing else: it cannot
    append an entry, and the checkpoints stay append-only (their triggers refuse the rest)."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    for table, rights in ((t.events, "SELECT"), (t.log, "SELECT"), (t.checkpoints, "SELECT, INSERT")):
        conn.execute(f'REVOKE ALL ON {table} FROM "{role}"')
        conn.execute(f'GRANT {rights} ON {table} TO "{role}"')


def postgres_grant_serving_role(conn, t: Tables, schema: str, role: str) -> None:
    """Create (if needed) the login role ``reledger serve`` runs as, on an autocommit psycopg
    connection: SELECT and INSERT on the events and log tables (and the events table's sequence,
    as the database names it), SELECT only on the checkpoints (checkpoint rows come only from the
    operator's checkpointing, as the table owner), nothing that alters a ledger table."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    # the projections' follower writes a flush's state rows through a temporary table (binary
    # COPY, projections/state.py): granted here, not left to PUBLIC's default (which a hardened
    # database may have revoked)
    db = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute('GRANT TEMPORARY ON DATABASE "{}" TO "{}"'.format(db.replace('"', '""'), role))
    for table, rights in ((t.events, "SELECT, INSERT"), (t.log, "SELECT, INSERT"), (t.checkpoints, "SELECT")):
        conn.execute(f'REVOKE ALL ON {table} FROM "{role}"')
        conn.execute(f'GRANT {rights} ON {table} TO "{role}"')
    seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'notification_id')", (t.events,)).fetchone()[0]
    if seq is not None:
        conn.execute(f'GRANT USAGE ON SEQUENCE {seq} TO "{role}"')
