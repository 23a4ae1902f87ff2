"""The event store: signed entries on ``eventsourcing``, with a gap-free Merkle log beside them.

Each party's chain is an eventsourcing stream: originator_id = chain, originator_version = seq,
topic = entry type, state = the envelope bytes. The library's primary key (originator_id,
originator_version) makes a fork impossible at the database: two appends for the same seq leave
exactly one. Beside the events table, in the same transaction and under the same lock, the
store writes ``<name>_log``: one row per entry with its gap-free global index, record time,
entry hash and the RFC 9162 Merkle nodes that the leaf completes (so proofs need O(log n)
point reads and an append O(log n) hashing). Checkpoints live in ``<name>_checkpoints``.

All three tables refuse UPDATE and DELETE by triggers (and TRUNCATE on PostgreSQL);
``grant_serving_role`` creates a PostgreSQL role holding INSERT and SELECT only.

An append takes *groups* of envelopes: each group is all-or-nothing, the groups of one call
share one transaction (group commit). Signatures are checked in a thread pool before the write
lock is taken (Ed25519 in ``cryptography`` releases the GIL); chain, key validity, idempotency
and the Merkle log are decided under the lock.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import itertools
import operator
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError as ESIntegrityError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from reledger.ledger import heads as chain_heads, merkle
from reledger.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from reledger.ledger.encoding import micros_to_time_text
from reledger.ledger.entry import EntryError, LeafHasher, SignedEntry, ZERO_HASH, check_envelopes
from .pgpipe import Pipeline
from .reader import NAME, DatabaseURL, Queries, Record, Tables, _tuple
from reledger.ledger.registry import REGISTRY_TYPES, Registry, RegistryError


# --- errors and results --------------------------------------------------------------------

class LogMoved(Exception):
    """``append_groups(..., expect_size=n)`` found ``size`` entries in the log, not n: nothing
    was written."""

    def __init__(self, size: int):
        super().__init__(f"the log holds {size} entries, not the expected number")
        self.size = size


class _ReadFirst(Exception):
    """A write without reading first (LedgerStore.finish) met a refusal its caches decided:
    rolled back, and run again the usual way."""


class AppendError(ValueError):
    """An entry (and so its whole group) was refused; nothing of the group was written.

    ``code`` is one of: malformed, signature, unregistered, unknown_key, foreign_key,
    revoked_key, expired_key, forbidden, genesis, body, conflict, command_conflict.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None, position: int | None = None,
                 chain: str | None = None, seq: int | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.position, self.chain, self.seq = position, chain, seq

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field,
                "position": self.position, "chain": self.chain, "seq": self.seq}


@dataclass(frozen=True)
class Receipt:
    """What the ledger answers for an accepted entry."""

    index: int
    chain: str
    seq: int
    entry_hash: bytes
    recorded_at: str
    duplicate: bool = False  # True when the command id had been recorded already

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "chain": self.chain, "seq": self.seq, "entry_hash": self.entry_hash.hex(),
                "recorded_at": self.recorded_at, "duplicate": self.duplicate}


def _receipt(index: int, chain: str, seq: int, entry_hash: bytes, recorded_at: str, duplicate: bool) -> Receipt:
    """Receipt(...) without the frozen dataclass's per-field object.__setattr__ (hot path)."""
    r = _new(Receipt)
    d = r.__dict__
    d["index"] = index
    d["chain"] = chain
    d["seq"] = seq
    d["entry_hash"] = entry_hash
    d["recorded_at"] = recorded_at
    d["duplicate"] = duplicate
    return r


_new = object.__new__


# --- eventsourcing recorders with the log tables -------------------------------------------

def _log_ddl(t: Tables, backend: str) -> list[str]:
    blob = "BLOB" if backend == "sqlite" else "BYTEA"
    log_name = t.log.split(".")[-1]
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {t.log} ("
        # on SQLite, INTEGER PRIMARY KEY makes idx the table's rowid: one b-tree less per row
        + (" idx INTEGER PRIMARY KEY," if backend == "sqlite" else " idx BIGINT PRIMARY KEY,") +
        " chain TEXT NOT NULL,"
        " seq BIGINT NOT NULL,"
        " type TEXT NOT NULL,"
        " command_id TEXT NOT NULL,"
        f" entry_hash {blob} NOT NULL,"
        " recorded_us BIGINT NOT NULL,"
        f" nodes {blob} NOT NULL,"
        " UNIQUE (chain, seq),"
        " UNIQUE (command_id, chain))" + ("" if backend == "sqlite" else
        # as eventsourcing does for its events table: statistics early, so that the planner
        # uses the command id index (idempotency look-ups) long before autovacuum's defaults
        " WITH (autovacuum_analyze_threshold = 1000, autovacuum_analyze_scale_factor = 0.01)"),
        f"CREATE TABLE IF NOT EXISTS {t.checkpoints} ("
        " size BIGINT PRIMARY KEY,"
        f" root {blob} NOT NULL,"
        f" note {blob} NOT NULL,"
        " created_us BIGINT NOT NULL)",
    ]
    tables = [t.events, t.log, t.checkpoints]
    if backend == "sqlite":
        for table in tables:
            for op in ("UPDATE", "DELETE"):
                stmts.append(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'reledger: {table} is append-only ({op} refused)'); END")
        stmts.append(
            f"CREATE TRIGGER IF NOT EXISTS {log_name}_gap_free BEFORE INSERT ON {t.log} "
            f"WHEN NEW.idx != (SELECT COALESCE(MAX(idx) + 1, 0) FROM {t.log}) "
            f"BEGIN SELECT RAISE(ABORT, 'reledger: the log index must be gap-free'); END")
    else:
        schema = t.log.split(".")[0]
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
        for table in tables:
            short = table.split(".")[-1]
            stmts.append(f"DROP TRIGGER IF EXISTS {short}_append_only ON {table}")
            stmts.append(f"CREATE TRIGGER {short}_append_only BEFORE UPDATE OR DELETE ON {table} "
                         f"FOR EACH ROW EXECUTE FUNCTION {schema}.reledger_append_only()")
            stmts.append(f"DROP TRIGGER IF EXISTS {short}_no_truncate ON {table}")
            stmts.append(f"CREATE TRIGGER {short}_no_truncate BEFORE TRUNCATE ON {table} "
                         f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reledger_append_only()")
        stmts.append(f"DROP TRIGGER IF EXISTS {log_name}_gap_free ON {t.log}")
        stmts.append(f"CREATE TRIGGER {log_name}_gap_free AFTER INSERT ON {t.log} "
                     "REFERENCING NEW TABLE AS reledger_new_rows "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reledger_gap_free_stmt()")
    return stmts


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    """eventsourcing's SQLite recorder, plus the log tables and an append transaction."""

    tables = Tables("sqlite")
    # Binary columns of the rows that write() gets. Python's sqlite3 binds int, float, str and
    # bytearray directly, but passes every other type (bytes too) through its adapter registry
    # first (a tuple built, a dict look-up, two attribute look-ups, per value): a bytearray copy
    # of a few hundred bytes costs less than that.
    ROW_BLOB = bytearray
    WRITE_BLIND = False  # (in-process: reading the log's head first costs no round trip)

    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + _log_ddl(self.tables, "sqlite")

    def write(self, plan) -> Any:
        """Run ``plan(cursor) -> (event_rows, log_rows, result)`` in one IMMEDIATE transaction,
        insert what it returns, commit, and return ``result``. An event row is the tuple
        (originator_id, originator_version, topic, state) of eventsourcing's StoredEvent."""
        with self.datastore.get_connection(commit=True) as conn:  # the pool's writer lock
            raw = self._writer_connection(conn._sqlite_conn)
            cur = raw.cursor()
            # The plan and the rows are a few short-lived tuples per entry and no cycles: the
            # cyclic garbage collector, run every 700 allocations, would only walk them.
            collecting = gc.isenabled()
            gc.disable()
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    event_rows, log_rows, result = plan(cur)
                    if event_rows:
                        cur.executemany(self.insert_events_statement, event_rows)
                        cur.executemany(self.tables.q(
                            "INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), log_rows)
                    cur.execute("COMMIT")
                    return result
                except BaseException:
                    if raw.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            finally:
                if collecting:
                    gc.enable()

    _own_writer: sqlite3.Connection | None = None

    def _writer_connection(self, pooled: sqlite3.Connection) -> sqlite3.Connection:
        """The connection the append transaction runs its statements on, while the pool's
        writer connection is held (so that eventsourcing's writer lock still orders this
        process's writers). eventsourcing opens its connections with a statement cache of one
        statement, so each of a transaction's six or so statements was compiled again every
        time (the log's INSERT, with its indexes and triggers, not cheaply); this connection
        keeps them all. An in-memory database is only reachable through the pool's own."""
        own = self._own_writer
        if own is None:
            pool = self.datastore.pool
            if pool.is_sqlite_memory_mode:
                return pooled
            own = self._own_writer = sqlite3.connect(
                pool.db_name, uri=True, check_same_thread=False, isolation_level=None, cached_statements=32,
                timeout=pool.lock_timeout or 5.0)
        return own

    def close_writer(self) -> None:
        own, self._own_writer = self._own_writer, None
        if own is not None:
            own.close()

    def write_checkpoint(self, size: int, root: bytes, note: bytes, created_us: int) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(self.tables.q("INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, ?)"),
                      (size, root, note, created_us))

    @property
    def read_cursor(self):
        return _SQLiteReadCursor(self.datastore)


class _SQLiteReadCursor:
    """A cursor-like object that takes a pooled reader connection per query."""

    def __init__(self, datastore):
        self.datastore, self._rows = datastore, []

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.datastore.get_connection(commit=False) as conn:
            cur = conn._sqlite_conn.cursor()
            cur.execute(sql, params)
            self._rows = cur.fetchall()

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL recorder, plus the log tables and an append transaction."""

    ROW_BLOB = None  # binary columns as they are (bytes)
    # LedgerStore.finish may write without reading first (a round trip saved: the log's
    # constraints refuse the rows, as an IntegrityError, if it moved)
    WRITE_BLIND = True

    def __init__(self, datastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        name = events_table_name[: -len("_events")] if events_table_name.endswith("_events") else NAME
        self.tables = Tables("postgres", datastore.schema, name)
        self.lock_key = int.from_bytes(hashlib.sha256(self.tables.log.encode()).digest()[:8], "big", signed=True)
        # %b: the arrays go in binary form (psycopg's text form escapes every value in Python)
        self._insert_events_sql = self.tables.q(
            "INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::bytea[])").replace("%s", "%b")
        self._insert_log_sql = self.tables.q(
            "INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
            "SELECT * FROM unnest(?::bigint[], ?::text[], ?::bigint[], ?::text[], ?::text[], "
            "?::bytea[], ?::bigint[], ?::bytea[])").replace("%s", "%b")
        self._notify_sql = 'NOTIFY "%s"' % self.channel_name.replace('"', '""')  # (as psycopg's Identifier quotes it)
        from psycopg.sql import SQL

        for stmt in _log_ddl(self.tables, "postgres"):
            self.sql_create_statements.append(SQL(stmt))  # type: ignore[arg-type]

    def create_table(self) -> None:
        """Create the tables, types and triggers once. Opens of the same ledger are serialized
        by a session advisory lock, and an existing, complete ledger is left untouched (no DDL,
        so no ACCESS EXCLUSIVE lock while others append or verify)."""
        key = int.from_bytes(hashlib.sha256(b"reledger-ddl:" + self.tables.log.encode()).digest()[:8], "big",
                             signed=True)
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                if self._complete(conn):
                    self.datastore.register_type_adapters()
                    return
                super().create_table()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _complete(self, conn) -> bool:
        schema = self.datastore.schema
        names = []
        for table in (self.tables.events, self.tables.log, self.tables.checkpoints):
            short = table.split(".")[-1]
            names += [f"{short}_append_only", f"{short}_no_truncate"]
        names.append(self.tables.log.split(".")[-1] + "_gap_free")
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = %s AND t.tgname = ANY(%s) "
            "AND t.tgenabled <> 'D'",
            (schema, names)).fetchone()
        return int(row["n"]) == len(names)

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
                          "pg_advisory_xact_lock(%s)", (f"{int(self.datastore.lock_timeout)}s", self.lock_key))
                event_rows, log_rows, result = plan(_PipeCursor(pipe))
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

    def write_checkpoint(self, size: int, root: bytes, note: bytes, created_us: int) -> None:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(self.tables.q("INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, ?)"),
                        (size, root, note, created_us))

    @property
    def read_cursor(self):
        return _PgReadCursor(self.datastore)


class _PipeCursor:
    """The append transaction's cursor for the plan and :class:`Queries` (positional rows) on
    a :class:`reledger.storage.pgpipe.Pipeline`. ``side()`` gives another cursor whose query waits in the
    pipeline with this one's: both answered in one round trip, at the first fetch."""

    def __init__(self, pipe: Pipeline):
        self.pipe, self.slot = pipe, None

    @property
    def cur(self) -> "_PipeCursor":
        return self

    def side(self) -> "_PipeCursor":
        return _PipeCursor(self.pipe)

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.slot = self.pipe.send(sql, tuple(params))

    def fetchone(self):
        rows = self.pipe.rows(self.slot)
        return rows[0] if rows else None

    def fetchall(self):
        return self.pipe.rows(self.slot)


class _PgReadCursor:
    def __init__(self, datastore):
        self.datastore, self._rows = datastore, []

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            self._rows = [_tuple(r) for r in cur.fetchall()]

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


class LedgerApplication(Application):
    """The eventsourcing application whose recorder holds the ledger."""

    name = "Reledger"


def application_env(url: str, create: bool = True) -> dict[str, str]:
    u = DatabaseURL.parse(url)
    env = {"ORIGINATOR_ID_TYPE": "text", "CREATE_TABLE": "y" if create else "n"}
    if u.backend == "sqlite":
        env.update({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": u.path,
                    "SQLITE_LOCK_TIMEOUT": "30",
                    "APPLICATION_RECORDER_TOPIC": "reledger.storage.store:SQLiteLedgerRecorder"})
    else:
        env.update({"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": u.dbname,
                    "POSTGRES_HOST": u.host, "POSTGRES_PORT": str(u.port), "POSTGRES_USER": u.user,
                    "POSTGRES_PASSWORD": u.password, "POSTGRES_SCHEMA": u.schema,
                    # Never enable POSTGRES_ENABLE_DB_FUNCTIONS (it skips the table lock) and
                    # never wait forever for the lock (shared/notes/eventsourcing-9.5.md).
                    "POSTGRES_ENABLE_DB_FUNCTIONS": "n", "POSTGRES_LOCK_TIMEOUT": "30",
                    "POSTGRES_POOL_SIZE": "4", "POSTGRES_MAX_OVERFLOW": "8",
                    # a large batch is planned (chains, keys, Merkle) inside its transaction
                    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "120",
                    "APPLICATION_RECORDER_TOPIC": "reledger.storage.store:PostgresLedgerRecorder"})
    return env


def _ensure_pg_schema(u: DatabaseURL) -> None:
    if u.schema == "public":
        return
    import psycopg

    with psycopg.connect(u.conninfo(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (u.schema,)).fetchone():
            return
        key = int.from_bytes(hashlib.sha256(b"reledger-schema:" + u.schema.encode()).digest()[:8], "big", signed=True)
        with conn.transaction():  # concurrent first opens: one creates, the others wait and see it
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{u.schema}"')


# --- the store -------------------------------------------------------------------------

def now_us() -> int:
    return time.time_ns() // 1000


PROCESS_THRESHOLD = 256  # envelopes in one prepare() before the checking moves to worker processes


class _WorkersGone(RuntimeError):
    """The checking processes are gone (killed, or could not start)."""


class _Checkers:
    """Worker processes that run ``entry.check_envelopes`` for a store.

    Each worker has two one-way pipes of 1 MiB (tasks in, answers out) and no helper thread on
    either side: a task (a few hundred envelopes) is written whole without waiting for the
    worker, and an answer waits in its pipe until the writer needs it. Tasks go to the worker
    with the least work in flight; answers come back in each worker's order and are matched
    by ticket. (concurrent.futures' process pool moves every task and answer through two
    threads of the calling process, which then compete with the writer for its GIL.)"""

    PIPE_BYTES = 1 << 20
    MAX_CHUNK = 256  # envelopes in one task (~120 kB): a few tasks in flight fit a pipe
    MIN_CHUNK = 32  # a smaller share of a group goes to another worker (a task has its costs)

    def __init__(self, n: int, ctx) -> None:
        self.workers = []
        for _ in range(n):
            task_r, task_w = ctx.Pipe(duplex=False)
            answer_r, answer_w = ctx.Pipe(duplex=False)
            if not (_grow_pipe(task_w) and _grow_pipe(answer_r)):
                # with small pipes, a worker blocked on a full answer pipe and a writer blocked
                # on a full task pipe could wait for each other: use threads instead
                for conn in (task_r, task_w, answer_r, answer_w):
                    conn.close()
                self.close()
                raise _WorkersGone("pipes of 1 MiB are not available here")
            checked = ctx.RawValue("q", 0)  # envelopes this worker has checked, counted by it
            proc = ctx.Process(target=_checker_main, args=(task_r, answer_w, os.getpid(), checked), daemon=True,
                               name="reledger-check")
            proc.start()
            task_r.close()
            answer_w.close()
            self.workers.append(_CheckerWorker(proc, task_w, answer_r, checked))
        self.next_ticket = 0
        self.lock = threading.Lock()

    def submit(self, envelopes: list[bytes], keys: dict[str, bytes]) -> "_CheckTicket":
        import pickle

        data = pickle.dumps((envelopes, keys), protocol=pickle.HIGHEST_PROTOCOL)
        with self.lock:
            # Take every answer that is ready first (so that no answer pipe fills up, and so
            # that in_flight counts only the envelopes a worker has not checked yet), then give
            # the task to the worker with the fewest of those. Counted before draining, a
            # worker whose answers merely wait unread looked busy: at the end of a pipeline one
            # worker could be given both halves of the last batch while the other sat idle.
            for w in self.workers:
                self._drain(w)
            worker = min(self.workers, key=_CheckerWorker.unchecked)
            return self._send(worker, data, len(envelopes))

    def submit_group(self, envelopes: list[bytes], keys: dict[str, bytes]) -> tuple[list["_CheckTicket"], list[int]]:
        """Hand a group's envelopes to the workers in chunks of at most MAX_CHUNK: (tickets,
        offsets of their chunks in the group), in group order. The shares are chosen so that
        every worker ends with about as many envelopes to check as the others (:func:`_shares`):
        the group's answer waits for its last chunk, so equal halves given to unequally busy
        workers leave one idle while the other finishes, at the end of a pipeline most of all."""
        import pickle

        dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
        sent: list[tuple[int, _CheckTicket]] = []
        with self.lock:
            for w in self.workers:
                self._drain(w)
            shares = _shares([w.unchecked() for w in self.workers], len(envelopes), self.MIN_CHUNK)
            chunks: list[list[tuple[_CheckerWorker, int, int]]] = []  # per worker: (worker, offset, n)
            start = 0
            for worker, share in zip(self.workers, shares):
                if not share:
                    continue
                parts = -(-share // self.MAX_CHUNK)
                mine = []
                for j in range(parts):
                    n = share * (j + 1) // parts - share * j // parts
                    mine.append((worker, start, n))
                    start += n
                chunks.append(mine)
            # Sent in turns, taking the answers that are ready before each task: a group larger
            # than a pipe holds never leaves a worker blocked on a full answer pipe while this
            # process is blocked on the worker's full task pipe.
            for turn in itertools.zip_longest(*chunks):
                for chunk in turn:
                    if chunk is None:
                        continue
                    worker, offset, n = chunk
                    for w in self.workers:
                        self._drain(w)
                    data = dumps((envelopes[offset:offset + n], keys), protocol=protocol)
                    sent.append((offset, self._send(worker, data, n)))
        sent.sort(key=operator.itemgetter(0))
        return [t for _, t in sent], [o for o, _ in sent]

    def _send(self, worker: "_CheckerWorker", data: bytes, n: int) -> "_CheckTicket":
        self.next_ticket += 1
        ticket = _CheckTicket(self, worker, self.next_ticket)
        try:
            worker.tasks.send_bytes(data)
        except (OSError, ValueError) as e:
            raise _WorkersGone(f"a checking process is gone: {e}") from e
        worker.in_flight += n
        worker.sent += n
        worker.pending.append((ticket.number, n))
        return ticket

    def answer(self, ticket: "_CheckTicket"):
        import pickle

        worker = ticket.worker
        with self.lock:
            while ticket.number not in worker.answers:
                self._receive(worker)
            data = worker.answers.pop(ticket.number)
        return pickle.loads(data)

    def _receive(self, worker: "_CheckerWorker") -> None:
        try:
            data = worker.answers_in.recv_bytes()
        except (EOFError, OSError) as e:
            raise _WorkersGone(f"a checking process is gone: {e}") from e
        number, n = worker.pending.popleft()
        worker.in_flight -= n
        if number in worker.forgotten:
            worker.forgotten.discard(number)
        else:
            worker.answers[number] = data

    def _drain(self, worker: "_CheckerWorker") -> None:
        try:
            while worker.pending and worker.answers_in.poll(0):
                self._receive(worker)
        except OSError as e:
            raise _WorkersGone(f"a checking process is gone: {e}") from e

    def forget(self, ticket: "_CheckTicket") -> None:
        """A ticket nobody will ask for (a cancelled batch): drop its answer when it comes."""
        with self.lock:
            ticket.worker.answers.pop(ticket.number, None)
            ticket.worker.forgotten.add(ticket.number)

    def close(self) -> None:
        for w in self.workers:
            for conn in (w.tasks, w.answers_in):
                try:
                    conn.close()
                except OSError:
                    pass
            w.proc.join(timeout=0.5)
            if w.proc.is_alive():
                w.proc.terminate()


@dataclass
class _CheckerWorker:
    proc: Any
    tasks: Any
    answers_in: Any
    checked: Any = None  # shared counter: envelopes the worker has checked (or skipped) so far
    in_flight: int = 0  # envelopes sent and not answered yet
    sent: int = 0  # envelopes sent

    def unchecked(self) -> int:
        """Envelopes sent that the worker has not checked yet: its work ahead, also within the
        task it is busy with (an answer counts a task whole until it is read)."""
        return self.in_flight if self.checked is None else self.sent - self.checked.value

    def __post_init__(self) -> None:
        self.pending: collections.deque[tuple[int, int]] = collections.deque()  # (ticket, envelopes)
        self.answers: dict[int, bytes] = {}
        self.forgotten: set[int] = set()


class _CheckTicket:
    """A task given to a worker; ``result()`` as a Future's."""

    __slots__ = ("pool", "worker", "number")

    def __init__(self, pool: _Checkers, worker: _CheckerWorker, number: int) -> None:
        self.pool, self.worker, self.number = pool, worker, number

    def result(self):
        return self.pool.answer(self)

    def cancel(self) -> None:
        self.pool.forget(self)


def _shares(loads: list[int], n: int, least: int) -> list[int]:
    """How many of ``n`` new envelopes each worker gets, given how many each has not checked
    yet (``loads``): the least loaded are brought up to one common level, as far as the n go
    (water filling), so that all finish about together. A share under ``least`` (when there
    are other shares) goes to the largest share instead."""
    k = len(loads)
    shares = [0] * k
    if n <= 0 or k == 0:
        return shares
    order = sorted(range(k), key=loads.__getitem__)
    total, m = n, 0
    for i, w in enumerate(order):
        total += loads[w]
        m = i + 1
        if m == k or total <= loads[order[m]] * m:  # the level total/m stays below the next load
            break
    level, extra = divmod(total, m)  # the m least loaded end at level (the first `extra` at +1)
    for i, w in enumerate(order[:m]):
        shares[w] = level - loads[w] + (1 if i < extra else 0)
    while True:
        small = [w for w in range(k) if 0 < shares[w] < least]
        if not small or sum(1 for x in shares if x) == 1:
            return shares
        w = min(small, key=shares.__getitem__)
        big = max((x for x in range(k) if x != w), key=shares.__getitem__)
        shares[big] += shares[w]
        shares[w] = 0


def _grow_pipe(conn) -> bool:
    """Give a pipe 1 MiB of buffer (Linux); False where the system does not allow it."""
    try:
        import fcntl

        return fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _Checkers.PIPE_BYTES) \
            >= _Checkers.PIPE_BYTES
    except (ImportError, OSError):
        return False


def _checker_main(tasks, answers, parent: int, checked=None) -> None:
    """A worker process: check each task's envelopes, answer in order, until the pipe closes."""
    import pickle

    _exit_with_parent(parent)
    while True:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):
            return
        envelopes, keys = pickle.loads(data)
        answers.send_bytes(pickle.dumps(_check_counting(envelopes, keys, checked), protocol=pickle.HIGHEST_PROTOCOL))


PROGRESS_STEP = 32  # envelopes a worker checks between two updates of its shared counter


def _check_counting(envelopes: list[bytes], keys: dict[str, bytes], checked=None) -> list[tuple] | tuple:
    """``check_envelopes(envelopes, keys, REGISTRY_TYPES)``, adding to the shared counter
    ``checked`` every PROGRESS_STEP envelopes (the envelopes after a refused one count as
    checked: the task is over), so that the store sees how far a worker is within a task."""
    if checked is None:
        return check_envelopes(envelopes, keys, REGISTRY_TYPES)
    out: list[tuple] = []
    for i in range(0, len(envelopes), PROGRESS_STEP):
        part = check_envelopes(envelopes[i:i + PROGRESS_STEP], keys, REGISTRY_TYPES)
        if type(part) is tuple:  # refused: the position within the whole task
            checked.value += len(envelopes) - i
            return part[:4] + (part[4] + i,) + part[5:]
        out += part
        checked.value += len(part)
    return out


def _exit_with_parent(pid: int) -> None:
    """In a worker process: exit when the store's process is gone (killed, say), rather than
    wait on its queue for ever (a forkserver's child is not the store process's child)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid is someone else's now: the parent is gone
                os._exit(0)

    threading.Thread(target=watch, name="reledger-parent-watch", daemon=True).start()


def _main_importable() -> bool:
    """Whether a forkserver or spawn child can import this program's main module as
    multiprocessing does (not a script read from stdin, say); if not, threads check."""
    import sys

    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:  # python -m ...
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.exists(path)


class LedgerStore:
    """The writable ledger: append, read, prove, checkpoint."""

    def __init__(self, url: str, *, create: bool = True, workers: int | None = None,
                 clock: "Callable[[], int] | None" = None, processes: bool | None = None):
        """``clock`` returns the record time in microseconds (default: the wall clock). A
        simulation (the demo) may pass its own; record times never go backwards either way.

        ``processes`` (default: when there is more than one worker): a :meth:`prepare` of at
        least PROCESS_THRESHOLD envelopes parses and verifies them in ``workers`` processes
        (started once, by forkserver) instead of threads, so that the serial writer and the
        verifiers do not share one GIL."""
        self.url = url
        self.clock = clock or now_us
        self.db = DatabaseURL.parse(url)
        if self.db.backend == "postgres" and create:
            _ensure_pg_schema(self.db)
        self.app = LedgerApplication(env=application_env(url, create))
        self.recorder = self.app.recorder
        self.tables: Tables = self.recorder.tables
        self.queries = Queries(self.tables)
        self._lock = threading.Lock()  # one writer per process; the DB lock serializes processes
        self._workers = workers or os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                        thread_name_prefix="reledger-verify")
        self._use_processes = self._workers > 1 if processes is None else processes
        self._procs: _Checkers | None = None
        self._key_table: tuple[int, dict[str, bytes]] = (-1, {})
        # Caches valid while the log size in the database equals self._size.
        self._size = -1
        self._last_us = 0
        self._frontier = merkle.Frontier()
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._registry = Registry()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._procs is not None:
            self._procs.close()
            self._procs = None
        close_writer = getattr(self.recorder, "close_writer", None)
        if close_writer is not None:
            close_writer()
        self.app.close()

    def __enter__(self) -> "LedgerStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- reading --------------------------------------------------------------------
    def _cur(self):
        return self.recorder.read_cursor

    def size(self) -> int:
        return self.queries.size(self._cur())[0]

    def records(self, start: int = 0, stop: int | None = None, page: int = 2000) -> Iterator[Record]:
        if stop is None:
            stop = self.size()
        i = start
        while i < stop:
            batch = self.queries.records(self._cur(), i, min(stop, i + page))
            yield from batch
            i = min(stop, i + page)

    def record(self, index: int) -> Record | None:
        rs = self.queries.records(self._cur(), index, index + 1)
        return rs[0] if rs else None

    def entry(self, chain: str, seq: int) -> Record | None:
        return self.queries.record_of(self._cur(), chain, seq)

    def chain_records(self, chain: str, start_seq: int = 1, stop_seq: int = 2**62) -> list[Record]:
        return self.queries.records_of_chain(self._cur(), chain, start_seq, stop_seq)

    def chain_head(self, chain: str) -> tuple[int, bytes]:
        """(seq, entry hash) of the chain's last entry; (0, zero hash) for a new chain."""
        return self.queries.chain_head(self._cur(), chain) or (0, ZERO_HASH)

    def chains(self) -> list[tuple[str, int]]:
        return self.queries.chains(self._cur())

    def index_at_time(self, recorded_us: int) -> int:
        return self.queries.index_at_time(self._cur(), recorded_us)

    def current_registry(self) -> Registry:
        """The live key registry (do not mutate): synced with the database, not copied."""
        with self._lock:
            self._sync_caches(self._cur(), *self.queries.size(self._cur()))
            return self._registry

    def registry(self, size: int | None = None) -> Registry:
        """The key registry after the first ``size`` entries (default: all)."""
        if size is None:
            return self.current_registry().copy()
        reg = Registry()
        for rec in self.queries.records_of_types(self._cur(), sorted(REGISTRY_TYPES), 0, size):
            reg.apply(SignedEntry.parse(rec.envelope), rec.index)
        reg.size = size
        return reg

    # --- Merkle ----------------------------------------------------------------------
    def _get_nodes(self, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return self.queries.nodes(self._cur(), coords)

    def root(self, size: int | None = None) -> bytes:
        size = self.size() if size is None else size
        if size == 0:
            return merkle.EMPTY_ROOT
        return merkle.range_root(0, size, self._node_getter(merkle.range_nodes(0, size)))

    def _node_getter(self, coords):
        nodes = self._get_nodes(list(coords))
        return lambda level, index: nodes[(level, index)]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        if not 0 <= index < size <= self.size():
            raise ValueError(f"no entry {index} in a tree of size {size} (log size {self.size()})")
        coords = [c for group in merkle.inclusion_proof_nodes(index, size) for c in group]
        return merkle.inclusion_proof(index, size, self._node_getter(coords))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if not 0 <= size1 <= size2 <= self.size():
            raise ValueError(f"bad sizes {size1}, {size2} (log size {self.size()})")
        coords = [c for group in merkle.consistency_proof_nodes(size1, size2) for c in group]
        return merkle.consistency_proof(size1, size2, self._node_getter(coords))

    def leaf_hash(self, index: int) -> bytes:
        rec = self.record(index)
        if rec is None:
            raise LookupError(f"no entry at index {index}")
        return rec.nodes[:32]

    # --- checkpoints -------------------------------------------------------------------
    def checkpoint(self, signer: NoteSigner) -> bytes:
        """Sign and store a checkpoint of the current log; returns the note. Its origin is the
        signer's key name (a registered checkpoint key). A checkpoint of the same size is
        returned as stored."""
        size = self.size()
        latest = self.latest_checkpoint()
        if latest is not None and latest[0] == size:
            return latest[2]
        registered = [k for k in self.registry(size).checkpoint_keys(size)
                      if k.public_key == signer.public_key_bytes and k.name == signer.name]
        if not registered:
            raise ValueError(f"the checkpoint key {signer.name} is not a registered, unrevoked checkpoint key "
                             "of this ledger (KeyAuthorized with purpose 'checkpoint' and this name)")
        root = self.root(size)
        # and the head of every chain at that size (ledger/heads.py): what lets a bundle prove
        # that it holds the end of its party's chain
        line = chain_heads.line(self.queries.chain_heads(self._cur(), size))
        note = sign_checkpoint(Checkpoint(signer.name, size, root, (line,)), signer)
        try:
            self.recorder.write_checkpoint(size, root, note, self.clock())
        except ESIntegrityError:
            # another writer checkpointed the same size first: answer what is stored
            stored = [n for s, _, n in self.checkpoints() if s == size]
            if not stored:
                raise
            return stored[0]
        return note

    def latest_checkpoint(self) -> tuple[int, bytes, bytes] | None:
        return self.queries.latest_checkpoint(self._cur())

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return self.queries.checkpoints(self._cur())

    # --- appending -----------------------------------------------------------------------
    def append(self, envelopes: Sequence[bytes | SignedEntry]) -> list[Receipt]:
        """Append one all-or-nothing group; raises AppendError (nothing written) on refusal."""
        result = self.append_groups([envelopes])[0]
        if isinstance(result, AppendError):
            raise result
        return result

    def append_groups(self, groups: Sequence[Sequence[bytes | SignedEntry]], *, expect_size: int | None = None,
                      new_commands: bool = False) -> list[list[Receipt] | AppendError]:
        """Append several independent groups in one transaction; each group is accepted whole
        or refused whole (its AppendError takes its place in the answer).

        ``expect_size``: write only if the log holds exactly that many entries when the lock
        is taken, else raise :class:`LogMoved` (nothing written). A caller that checked the
        entries against its own view of the log (the command API) learns that the view was
        stale, and how far the log is, in the same round trip as the write.

        ``new_commands`` (with ``expect_size``): the caller knows that no entry of the log's
        first ``expect_size`` holds any of these command ids. On PostgreSQL, when this store's
        caches are of that size too, the transaction then reads nothing before it writes: one
        round trip instead of two. The log's own constraints (its gap-free index, the unique
        command ids and chain positions) refuse the rows if the log has moved meanwhile; the
        transaction is then rolled back and run again the usual way (which raises LogMoved)."""
        return self.finish(self.prepare(groups), expect_size=expect_size, new_commands=new_commands)

    def prepare(self, groups: Sequence[Sequence[bytes | SignedEntry]]) -> "_Prepared":
        """Parse and check signatures in the pool (no lock held). Pass to :meth:`finish`.

        The check is a hint computed without the lock: a signature is checked with the key its
        key id names in the registry known now; :meth:`finish` decides under the lock whether
        that key was valid for the entry (and checks any signature not checked here)."""
        registry = self._registry
        groups = [list(g) for g in groups]
        procs = None
        if self._use_processes and sum(map(len, groups)) >= PROCESS_THRESHOLD and _main_importable():
            try:
                procs = self._process_pool()
                keys = self._keys_of(registry)
            except _WorkersGone:
                self._use_processes = False
        futures = []
        for g in groups:
            if procs is not None and all(type(x) is bytes for x in g):
                try:
                    tickets, offsets = procs.submit_group(g, keys)
                except _WorkersGone:
                    futures.append(_Done(self._checked_in_threads(g, registry)))
                    continue
                futures.append(_Joined(tickets, offsets, g, keys, self))
                continue
            if len(g) <= 64 and all(type(x) is SignedEntry and "_verified_with" in x.__dict__ for x in g):
                # parsed and verified already (the command API's preparer did it): nothing for
                # the pool to do but a round trip; the writer still checks the deciding key
                futures.append(_Done(_precheck(g, registry)))
                continue
            # split a large group over the pool: Ed25519 releases the GIL, so every core verifies;
            # chunks of at most 128 keep the threads evenly loaded
            size = max(32, min(128, -(-len(g) // self._workers)))
            offsets = list(range(0, len(g), size)) or [0]
            futures.append(_Joined([self._pool.submit(_precheck, g[o:o + size], registry) for o in offsets], offsets))
        return _Prepared(futures)

    def _process_pool(self) -> "_Checkers":
        if self._procs is None:
            import multiprocessing

            methods = multiprocessing.get_all_start_methods()
            # never fork this process: its threads (verifiers, database pools, a server) may
            # hold locks (OpenSSL's among them) that a forked child would inherit held
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._procs = _Checkers(self._workers, ctx)
        return self._procs

    def _keys_of(self, registry: Registry) -> dict[str, bytes]:
        """Key id -> public key of every key the registry knows (a key id always names the same
        public key, so the table only grows; revocations and validity are finish's business)."""
        keys = dict(registry.keys)  # one C-level copy: a writer may be adding keys meanwhile
        if self._key_table[0] != len(keys):
            self._key_table = (len(keys), {k: r.public_key for k, r in keys.items()})
        return self._key_table[1]

    def _checked_in_threads(self, group: list, registry: Registry):
        """The thread path for a group whose worker processes failed (a broken pool)."""
        if self._procs is not None:
            self._procs.close()
        self._procs = None
        self._use_processes = False
        return _precheck(group, registry)

    def finish(self, prepared: "_Prepared", *, expect_size: int | None = None,
               new_commands: bool = False) -> list[list[Receipt] | AppendError]:
        checked = [f.result() for f in prepared.futures]
        with self._lock:
            try:
                before = self._size
                blind = (new_commands and self.recorder.WRITE_BLIND and expect_size is not None
                         and expect_size == self._size)
                try:
                    result = self.recorder.write(lambda cur: self._plan(cur, checked, expect_size, blind))
                except (ESIntegrityError, _ReadFirst):
                    if not blind:
                        raise
                    # the log's constraints refused the rows (it moved under the caches: another
                    # writer), or the plan refused a group: nothing was written; the caches are
                    # reloaded and the log read under the lock first, as usual
                    self._size = -1
                    result = self.recorder.write(lambda cur: self._plan(cur, checked, expect_size))
                result.on_commit()
                if self.db.backend == "postgres" and before >= 0 and self._size // 50_000 > before // 50_000:
                    self._analyze()  # a bulk load outruns autovacuum: keep the planner's statistics fresh
                return list(result)
            except LogMoved:
                raise  # read under the lock, nothing changed: the caches are still right
            except ESIntegrityError as e:
                self._size = -1  # another writer got there first: reload caches next time
                raise AppendError("conflict", f"conflict with a concurrent append: {e}") from e
            except BaseException:
                self._size = -1
                raise

    def append_pipelined(self, batches: Iterable[Sequence[bytes | SignedEntry]], *,
                         ahead: int = 2) -> Iterator[list[Receipt]]:
        """Append many all-or-nothing batches, checking the signatures of the next ``ahead``
        batches while the current one is being written (one batch ahead is not enough: the
        verifying threads would sit idle whenever they finish it before the write does).
        Raises at the first refused batch."""
        it = iter(batches)
        pending: collections.deque = collections.deque()
        for batch in it:
            pending.append(self.prepare([batch]))
            if len(pending) > ahead:
                break
        while pending:
            result = self.finish(pending.popleft())[0]
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.prepare([nxt]))
            if isinstance(result, AppendError):
                for p in pending:  # do not leave work behind in the pool
                    p.cancel()
                raise result
            yield result

    def _sync_caches(self, cur, size: int, last_us: int) -> None:
        """The caches (registry, Merkle frontier, chain heads, record time of the last entry)
        for a log of ``size`` entries whose last was recorded at ``last_us``."""
        if size == self._size:
            return
        if size < self._size or self._size < 0:
            self._registry = Registry()
            start = 0
        else:
            start = self._registry.size
        for rec in self.queries.records_of_types(cur, sorted(REGISTRY_TYPES), start, size):
            self._registry.apply(SignedEntry.parse(rec.envelope), rec.index)
        self._registry.size = size
        coords = merkle.range_nodes(0, size) if size else []
        nodes = self.queries.nodes(cur, coords) if coords else {}
        self._frontier = merkle.Frontier.from_nodes(size, lambda level, index: nodes[(level, index)])
        self._heads = {}
        self._size = size
        self._last_us = last_us

    def _plan(self, cur, checked: list, expect_size: int | None = None,
              blind: bool = False) -> tuple[list[tuple], list[tuple], list]:
        accepted = [g for g in checked if not isinstance(g, AppendError)]
        if blind:  # (finish: the caller vouches for the log's size and its command ids)
            size, last_us, recorded_commands = self._size, self._last_us, {}
        else:
            # The command ids already recorded and the log head: on PostgreSQL both queries wait
            # in the pipeline and are answered together (with BEGIN and the lock) in one round trip.
            command_ids = [s[5] if type(s) is _Checked else s.entry.command_id for g in accepted for s, _ in g]
            side = cur.side() if command_ids and hasattr(cur, "side") else None
            if side is not None:
                self.queries.send_commands(side.cur, command_ids)
            size, last_us = self.queries.size(cur)
            recorded_commands = (self.queries.fetch_commands(side.cur) if side is not None
                                 else self.queries.commands(cur, command_ids))
            if expect_size is not None and size != expect_size:
                raise LogMoved(size)
            self._sync_caches(cur, size, last_us)
        recorded_us = max(self.clock(), last_us)
        recorded_at = micros_to_time_text(recorded_us)

        # Chain heads not cached (usually none: the caches follow this store's own commits).
        wanted_chains = {s[0] if type(s) is _Checked else s.entry.chain for g in accepted for s, _ in g}
        for chain in wanted_chains - self._heads.keys():
            self._heads[chain] = self.queries.chain_head(cur, chain) or (0, ZERO_HASH)

        leaf_hash = LeafHasher(recorded_at).hash  # one record time for the whole transaction
        append_leaf = merkle.append_leaf
        blob = self.recorder.ROW_BLOB  # the type the recorder binds binary columns fastest as

        frontier, heads, registry = self._frontier, dict(self._heads), self._registry
        # (key id, chain) -> the key that registry.key_for answered for an ordinary entry of
        # this transaction. Record time is one for the whole transaction, and a key valid at
        # one index stays valid at later ones until a registry entry changes the registry
        # (a revocation is such an entry), so the cache is emptied whenever one is applied or
        # a group is rolled back.
        key_cache: dict[tuple[str, str], bytes] = {}
        events: list[tuple] = []
        rows: list[tuple] = []
        results: list = []
        batch_commands: dict[tuple[str, str], tuple[int, bytes]] = {}
        batch_receipts: dict[int, Receipt] = {}
        index = size
        for group in checked:
            if isinstance(group, AppendError):
                results.append(group)
                continue
            tree_size, tree = frontier.size, list(frontier.hashes)  # the group's own frontier
            g_heads: dict[str, tuple[int, bytes]] = {}
            g_mark = registry.mark()  # a refused group's registry changes are rolled back (journal)
            g_commands: dict[tuple[str, str], tuple[int, bytes]] = {}
            g_events, g_rows, receipts = [], [], []
            g_receipts: dict[int, Receipt] = {}
            g_index = index
            pos = 0
            try:
                for pos, (signed, pre_key) in enumerate(group):
                    if type(signed) is _Checked:  # a worker process's answer: one unpacking
                        chain, seq, prev, etype, key_id, command_id, entry_hash, _, _, envelope = signed
                    else:
                        e = signed.entry
                        chain, seq, prev, etype, key_id, command_id = e.chain, e.seq, e.prev, e.type, e.key_id, \
                            e.command_id
                        entry_hash, envelope = signed.hash, signed.envelope
                    ckey = (chain, command_id)
                    seen = g_commands.get(ckey) or batch_commands.get(ckey) or recorded_commands.get(ckey)
                    if seen is not None:
                        if seen[1] == entry_hash:
                            pending = g_receipts.get(seen[0]) or batch_receipts.get(seen[0])
                            receipts.append(_receipt(pending.index, pending.chain, pending.seq, pending.entry_hash,
                                                     pending.recorded_at, True) if pending is not None
                                            else self._receipt_of(cur, seen[0], duplicate=True))
                            continue
                        raise AppendError("command_conflict", f"command_id: {command_id} was already used on "
                                          f"chain {chain} for another entry (log index {seen[0]})",
                                          field="command_id")
                    head_seq, head_hash = g_heads.get(chain) or heads.get(chain) or (0, ZERO_HASH)
                    if seq != head_seq + 1:
                        raise AppendError("conflict", f"seq: chain {chain} is at seq {head_seq}; "
                                          f"the next entry must have seq {head_seq + 1}, not {seq}", field="seq")
                    if prev != head_hash:
                        raise AppendError("conflict", f"prev: does not match the hash of {chain} seq {head_seq} "
                                          f"({head_hash.hex()[:16]}...)", field="prev")
                    registry_type = etype in REGISTRY_TYPES
                    public_key = None if registry_type else key_cache.get((key_id, chain))
                    if public_key is None:
                        try:
                            public_key = registry.key_for(signed, g_index, recorded_us)
                        except RegistryError as err:
                            raise AppendError(err.code, str(err), field=err.field) from err
                        if not registry_type:
                            key_cache[(key_id, chain)] = public_key
                    if pre_key != public_key and not signed.signature_valid(public_key):
                        raise AppendError("signature", f"sig: not a valid signature by key {key_id}", field="sig")
                    if registry_type:
                        key_cache.clear()
                        try:
                            registry.apply(signed, g_index)
                        except RegistryError as err:
                            raise AppendError("body", str(err), field=err.field) from err
                    nodes = append_leaf(tree, tree_size, leaf_hash(entry_hash, g_index))
                    tree_size += 1
                    if blob is None:
                        g_events.append((chain, seq, etype, envelope))
                        g_rows.append((g_index, chain, seq, etype, command_id, entry_hash, recorded_us, nodes))
                    else:
                        g_events.append((chain, seq, etype, blob(envelope)))
                        g_rows.append((g_index, chain, seq, etype, command_id, blob(entry_hash), recorded_us,
                                       blob(nodes)))
                    g_heads[chain] = (seq, entry_hash)
                    g_commands[ckey] = (g_index, entry_hash)
                    receipt = _receipt(g_index, chain, seq, entry_hash, recorded_at, False)
                    receipts.append(receipt)
                    g_receipts[g_index] = receipt
                    g_index += 1
            except AppendError as err:
                if blind:  # decided on caches the log may have outrun: decide it the usual way
                    raise _ReadFirst() from err
                registry.rollback(g_mark)
                key_cache.clear()
                e = group[pos][0].entry
                err.position, err.chain, err.seq = pos, e.chain, e.seq
                results.append(err)
                continue
            frontier, index = merkle.Frontier(tree_size, tree), g_index
            heads.update(g_heads)
            batch_commands.update(g_commands)
            batch_receipts.update(g_receipts)
            events += g_events
            rows += g_rows
            results.append(receipts)
        registry.size = index
        registry.forget()

        def commit_caches() -> None:
            self._frontier, self._heads, self._registry = frontier, heads, registry
            self._size, self._last_us = index, recorded_us if rows else last_us

        return events, rows, _AfterCommit(results, commit_caches)

    def _analyze(self) -> None:
        try:
            with self.recorder.datastore.get_connection() as conn:
                conn.execute(f"ANALYZE {self.tables.log}")
        except Exception:  # noqa: BLE001 - statistics are an optimisation, never a failure
            pass

    def _receipt_of(self, cur, index: int, duplicate: bool) -> Receipt:
        rec = self.queries.records(cur, index, index + 1)[0]
        return _receipt(rec.index, rec.chain, rec.seq, rec.entry_hash, rec.recorded_at, duplicate)

    # --- PostgreSQL roles ---------------------------------------------------------------
    def grant_serving_role(self, role: str = "reledger_serve") -> None:
        """Create (if needed) the PostgreSQL role the server runs as: INSERT and SELECT on the
        events and the log (and the notification sequence), SELECT only on the checkpoints
        (checkpoints come from the operator's checkpoint key, never from the server), and
        nothing that alters a ledger table (not the owner: it cannot drop or disable the
        triggers). A role it creates may log in (set its password with ALTER ROLE)."""
        if self.db.backend != "postgres":
            raise ValueError("serving roles exist on PostgreSQL only")
        import psycopg
        from psycopg import sql

        t = self.tables
        seq = f"{t.events}_notification_id_seq"
        who = sql.Identifier(role)
        with psycopg.connect(self.db.conninfo(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(who))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(self.db.schema), who))
            for table, rights in ((t.events, "SELECT, INSERT"), (t.log, "SELECT, INSERT"), (t.checkpoints, "SELECT")):
                conn.execute(sql.SQL(f"REVOKE ALL ON {table} FROM {{}}").format(who))
                conn.execute(sql.SQL(f"GRANT {rights} ON {table} TO {{}}").format(who))
            conn.execute(sql.SQL(f"GRANT USAGE ON SEQUENCE {seq} TO {{}}").format(who))


class _AfterCommit(list):
    """The group results, plus the cache update to run once the transaction committed."""

    def __init__(self, results: list, on_commit):
        super().__init__(results)
        self.on_commit = on_commit


class _Joined:
    """The prechecks of one group's chunks, answered as one (positions of the whole group).
    With ``group`` given, the chunks ran ``entry.check_envelopes`` in worker processes."""

    def __init__(self, futures: list[Future], offsets: list[int], group: list | None = None,
                 keys: dict[str, bytes] | None = None, store: "LedgerStore | None" = None):
        self.futures, self.offsets = futures, offsets
        self.group, self.keys, self.store = group, keys, store

    def result(self):
        if self.group is not None:
            return self._remote_result()
        out: list = []
        for f, off in zip(self.futures, self.offsets):
            r = f.result()
            if isinstance(r, AppendError):
                if r.position is not None:
                    r.position += off
                return r
            out += r
        return out

    def _remote_result(self):
        out: list = []
        keys, group = self.keys, self.group
        new = tuple.__new__
        for f, off in zip(self.futures, self.offsets):
            try:
                r = f.result()
            except _WorkersGone:  # e.g. killed, or a main module a child cannot import
                return self.store._checked_in_threads(group, self.store._registry)
            if type(r) is tuple:
                _, code, message, field, pos, chain, seq = r
                return AppendError(code, message, field=field, position=pos + off, chain=chain, seq=seq)
            for t, env in zip(r, group[off:off + len(r)]):
                out.append((new(_Checked, t + (env,)), keys[t[4]] if t[7] else None))
        return out


class _Done:
    """A precheck answered at once (as a _Joined would be)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self) -> None:
        pass


class _Checked(tuple):
    """An entry parsed and signature-checked in a worker process (``entry.check_envelopes``):
    the fields the write plan reads of a SignedEntry and its Entry, without parsing it again."""

    __slots__ = ()
    chain = property(operator.itemgetter(0))
    seq = property(operator.itemgetter(1))
    prev = property(operator.itemgetter(2))
    type = property(operator.itemgetter(3))
    key_id = property(operator.itemgetter(4))
    command_id = property(operator.itemgetter(5))
    hash = property(operator.itemgetter(6))
    body = property(operator.itemgetter(8))
    envelope = property(operator.itemgetter(9))

    @property
    def entry(self) -> "_Checked":
        return self

    def signature_valid(self, public_key: bytes) -> bool:
        return SignedEntry.parse(self.envelope).signature_valid(public_key)


@dataclass
class _Prepared:
    futures: list[Future]

    def cancel(self) -> None:
        for joined in self.futures:
            for f in getattr(joined, "futures", ()):
                f.cancel()


def _precheck(group: list, registry: Registry) -> list[tuple[SignedEntry, bytes | None]] | AppendError:
    """Parse a group and check signatures against keys the registry already knows; returns
    (entry, public key the signature was verified with, or None) pairs, or the group's error."""
    out = []
    for pos, item in enumerate(group):
        try:
            signed = item if isinstance(item, SignedEntry) else SignedEntry.parse(item)
        except EntryError as e:
            return AppendError("malformed", str(e), field=e.field, position=pos)
        e = signed.entry
        rec = registry.keys.get(e.key_id)
        verified_with = None
        if rec is not None:
            if not signed.signature_valid(rec.public_key):
                return AppendError("signature", f"sig: not a valid signature by key {e.key_id}", field="sig",
                                   position=pos, chain=e.chain, seq=e.seq)
            verified_with = rec.public_key
        out.append((signed, verified_with))
    return out
