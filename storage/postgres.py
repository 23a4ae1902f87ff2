"""The ledger on PostgreSQL: eventsourcing's recorder with the ledger's tables, and the append
transaction on libpq's pipeline mode (storage/pgpipe.py).

eventsourcing is used through its recorder's public interface: ``create_table`` (extended: the
ledger's tables and triggers are created after the library's, under an advisory lock), the
datastore's ``get_connection``. The append transaction inserts into the events table by its
columns (the library's ``insert_events`` sends one composite array in text form and takes a
table lock; see ``write``), and NOTIFYs the channel eventsourcing's own subscriptions listen on.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.rows import tuple_row

from .pgpipe import Pipeline
from .reader import NAME, DatabaseURL, Tables
from .schema import registry_index, postgres_ddl, postgres_grant_checkpointer_role, postgres_grant_serving_role, postgres_trigger_names

LOCK_TIMEOUT_S = 30  # how long an append waits for another writer's transaction


def _lock_key(label: bytes) -> int:
    return int.from_bytes(hashlib.sha256(label).digest()[:8], "big", signed=True)


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL recorder, plus the ledger's tables and its append transaction."""

    ROW_BLOB = bytes  # binary columns as they are (bytes(b) is b)
    # LedgerStore.finish may write without reading first (a round trip saved: the log's
    # constraints refuse the rows, as an IntegrityError, if it moved)
    WRITE_BLIND = True

    def __init__(self, datastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        name = events_table_name[: -len("_events")] if events_table_name.endswith("_events") else NAME
        self.tables = Tables("postgres", datastore.schema, name)
        self.lock_key = _lock_key(self.tables.log.encode())
        # The channel every append NOTIFYs: the one eventsourcing's subscriptions LISTEN on
        # for this events table (its name, dots as underscores).
        self.notify_channel = events_table_name.replace(".", "_")
        # %b: the arrays go in binary form (psycopg's text form escapes every value in Python)
        self._insert_events_sql = self.tables.q(
            "INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::bytea[])").replace("%s", "%b")
        self._insert_log_sql = self.tables.q(
            "INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
            "SELECT * FROM unnest(?::bigint[], ?::text[], ?::bigint[], ?::text[], ?::text[], "
            "?::bytea[], ?::bigint[], ?::bytea[])").replace("%s", "%b")
        self._notify_sql = 'NOTIFY "%s"' % self.notify_channel.replace('"', '""')  # (as psycopg's Identifier quotes)
        self._db: DatabaseURL | None = None

    def bind(self, db: DatabaseURL) -> None:
        """The ledger's database (its roles are granted on a connection of their own)."""
        self._db = db

    def create_table(self) -> None:
        """Create the tables, types and triggers once. Opens of the same ledger are serialized
        by a session advisory lock, and an existing, complete ledger is left untouched (no DDL,
        so no ACCESS EXCLUSIVE lock while others append or verify)."""
        key = _lock_key(b"reledger-ddl:" + self.tables.log.encode())
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                if self._complete(conn):
                    self.datastore.register_type_adapters()
                    self._add_registry_index(conn)
                    return
                super().create_table()
                with conn.transaction(), conn.cursor() as cur:
                    for stmt in postgres_ddl(self.tables):
                        cur.execute(stmt, prepare=False)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _add_registry_index(self, conn) -> None:
        """A ledger made before the log's partial index of registry entries (storage/schema.py)
        gains it when its owner opens it to write; another role (the serving role) leaves it to
        the owner, and the registry is read by a scan meanwhile (slower, the same answer)."""
        schema, short = self.tables.log.split(".")[0], self.tables.log.split(".")[-1]
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                        (schema.strip('"'), f"{short}_registry"))
            if cur.fetchone() is not None:
                return
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(registry_index(self.tables), prepare=False)
        except psycopg.errors.InsufficientPrivilege:
            pass

    def _complete(self, conn) -> bool:
        names = postgres_trigger_names(self.tables)
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = %s AND t.tgname = ANY(%s) "
                "AND t.tgenabled <> 'D'",
                (self.tables.log.split(".")[0], names))
            return cur.fetchone()[0] == len(names)

    def write(self, plan) -> Any:
        """Run ``plan(cursor) -> (event_rows, log_rows, result)`` in one transaction under the
        ledger's lock, insert what it returns, commit, and return ``result``.

        Two round trips in the common case, on libpq in pipeline mode (storage/pgpipe.py: what
        psycopg's pipeline mode does, at a tenth of its CPU): BEGIN, the lock and the plan's
        first reads (log head, command ids: ``side()``) wait in the pipeline until the plan
        reads, and NOTIFY, the inserts and COMMIT go together at the end. Any error rolls the
        transaction back, and psycopg's exception for it is raised (eventsourcing's, through
        ``get_connection``)."""
        with self.datastore.get_connection() as conn:
            with Pipeline(conn) as pipe:
                pipe.send("BEGIN")
                # Serialize writers before reading the log head, so that index and chain heads
                # are stable and commit order is notification order (what the library's LOCK
                # TABLE ... EXCLUSIVE does). A transaction advisory lock needs no privilege, so
                # the serving role can hold INSERT and SELECT only.
                # enable_seqscan off (this transaction only): its reads are index look-ups, but
                # its statements are prepared and PostgreSQL may keep a generic plan chosen when
                # the log was young (or not analyzed yet): it was a sequential scan for the
                # command ids, one full read of the log per commit until the next ANALYZE.
                pipe.send("SELECT set_config('lock_timeout', %s, true), set_config('enable_seqscan', 'off', true), "
                          "pg_advisory_xact_lock(%s)", (f"{LOCK_TIMEOUT_S}s", self.lock_key))
                event_rows, log_rows, result = plan(PipeCursor(pipe))
                if event_rows:
                    self._write_rows(pipe, event_rows, log_rows)
                pipe.send("COMMIT")
                pipe.sync()
            return result

    def _write_rows(self, pipe: Pipeline, event_rows: list[tuple], log_rows: list[tuple]) -> None:
        """NOTIFY and the two inserts, queued in the pipeline (nothing is read back; an error
        surfaces at COMMIT's sync, and the transaction is rolled back)."""
        # The library's _insert_stored_events sends one array of its composite type in text
        # form, escaped value by value; here each column is one array in binary form (no
        # escaping), and the rows take their notification ids in array order all the same. Each
        # table gets the whole batch in one statement: one gap check.
        events = [list(col) for col in zip(*event_rows)]
        log = [list(col) for col in zip(*log_rows)]
        pipe.send(self._notify_sql)
        pipe.send(self._insert_events_sql, events)
        pipe.send(self._insert_log_sql, log)

    def close_writer(self) -> None:
        """(The append transaction runs on the pool's connections: nothing of its own to close.)"""

    def write_checkpoint(self, size: int, root: bytes, note: bytes, created_us: int) -> None:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(self.tables.q("INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, ?)"),
                        (size, root, note, created_us))

    @property
    def read_cursor(self) -> "PgReadCursor":
        return PgReadCursor(self.datastore)

    def grant_serving_role(self, role: str) -> None:
        if self._db is None:
            raise RuntimeError("the recorder is not bound to its database (bind)")
        with psycopg.connect(self._db.conninfo(), autocommit=True) as conn:
            postgres_grant_serving_role(conn, self.tables, self._db.schema, role)

    def grant_checkpointer_role(self, role: str) -> None:
        if self._db is None:
            raise RuntimeError("the recorder is not bound to its database (bind)")
        with psycopg.connect(self._db.conninfo(), autocommit=True) as conn:
            postgres_grant_checkpointer_role(conn, self.tables, self._db.schema, role)


class PipeCursor:
    """The append transaction's cursor for the plan and :class:`Queries` (positional rows) on
    a :class:`reledger.storage.pgpipe.Pipeline`. ``side()`` gives another cursor whose query waits in the
    pipeline with this one's: both answered in one round trip, at the first fetch."""

    def __init__(self, pipe: Pipeline):
        self.pipe, self.slot = pipe, None

    @property
    def cur(self) -> "PipeCursor":
        return self

    def side(self) -> "PipeCursor":
        return PipeCursor(self.pipe)

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.slot = self.pipe.send(sql, tuple(params))

    def fetchone(self):
        rows = self.pipe.rows(self.slot)
        return rows[0] if rows else None

    def fetchall(self):
        return self.pipe.rows(self.slot)


class PgReadCursor:
    """A cursor-like object that takes a pooled connection per query (rows as tuples)."""

    def __init__(self, datastore):
        self.datastore, self._rows = datastore, []

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            self._rows = cur.fetchall()

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


def application_env(db: DatabaseURL) -> dict[str, str]:
    """eventsourcing's settings for the ledger's PostgreSQL schema."""
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": db.dbname,
            "POSTGRES_HOST": db.host, "POSTGRES_PORT": str(db.port), "POSTGRES_USER": db.user,
            "POSTGRES_PASSWORD": db.password, "POSTGRES_SCHEMA": db.schema,
            # Never enable POSTGRES_ENABLE_DB_FUNCTIONS (it skips the table lock) and
            # never wait forever for the lock (shared/notes/eventsourcing-9.5.md).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n", "POSTGRES_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
            "POSTGRES_POOL_SIZE": "4", "POSTGRES_MAX_OVERFLOW": "8",
            # a large batch is planned (chains, keys, Merkle) inside its transaction
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "120",
            "APPLICATION_RECORDER_TOPIC": "reledger.storage.postgres:PostgresLedgerRecorder"}


def ensure_schema(u: DatabaseURL) -> None:
    """Create the URL's schema if it does not exist (concurrent first opens: one creates it)."""
    if u.schema == "public":
        return
    with psycopg.connect(u.conninfo(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (u.schema,)).fetchone():
            return
        with conn.transaction():  # concurrent first opens: one creates, the others wait and see it
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(b"reledger-schema:" + u.schema.encode()),))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{u.schema}"')
