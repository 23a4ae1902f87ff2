"""The ledger on SQLite: eventsourcing's recorder with the ledger's tables, and the append
transaction on a connection of the ledger's own.

eventsourcing is used through its recorder's public interface: ``construct_create_table_statements``
(the hook that adds the log and checkpoint tables and the triggers to the library's DDL), the
datastore's ``get_connection`` and ``transaction`` and the cursors they give. The append
transaction runs on a connection the ledger opens itself, to the file of its own database URL.
"""

from __future__ import annotations

import gc
import sqlite3
from typing import Any, Sequence

from eventsourcing.sqlite import SQLiteApplicationRecorder

from .reader import DatabaseURL, Tables
from .schema import sqlite_ddl

LOCK_TIMEOUT_S = 30  # how long a writer waits for another process's write transaction


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    """eventsourcing's SQLite recorder, plus the ledger's tables and its append transaction."""

    tables = Tables("sqlite")
    # Binary columns of the rows that write() gets. Python's sqlite3 binds int, float, str and
    # bytearray directly, but passes every other type (bytes too) through its adapter registry
    # first (a tuple built, a dict look-up, two attribute look-ups, per value): a bytearray copy
    # of a few hundred bytes costs less than that.
    ROW_BLOB = bytearray
    WRITE_BLIND = False  # (in-process: reading the log's head first costs no round trip)

    INSERT_EVENTS = "INSERT INTO stored_events (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)"
    INSERT_LOG = tables.q("INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    INSERT_CHECKPOINT = tables.q("INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, ?)")

    _path: str | None = None
    _own_writer: sqlite3.Connection | None = None

    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + sqlite_ddl(self.tables)

    def bind(self, db: DatabaseURL) -> None:
        """The ledger's database, whose file the append transaction's connection opens."""
        self._path = db.path

    def write(self, plan) -> Any:
        """Run ``plan(cursor) -> (event_rows, log_rows, result)`` in one IMMEDIATE transaction,
        insert what it returns, commit, and return ``result``. An event row is the tuple
        (originator_id, originator_version, topic, state) of eventsourcing's StoredEvent."""
        with self.datastore.get_connection(commit=True):  # the pool's writer lock (this process)
            raw = self.writer_connection()
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
                        cur.executemany(self.INSERT_EVENTS, event_rows)
                        cur.executemany(self.INSERT_LOG, log_rows)
                    cur.execute("COMMIT")
                    return result
                except BaseException:
                    if raw.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            finally:
                if collecting:
                    gc.enable()

    def writer_connection(self) -> sqlite3.Connection:
        """The connection the append transaction runs its statements on, while the pool's
        writer connection is held (so that eventsourcing's writer lock still orders this
        process's writers). eventsourcing opens its connections with a statement cache of one
        statement, so each of a transaction's six or so statements was compiled again every
        time (the log's INSERT, with its indexes and triggers, not cheaply); this connection
        keeps them all."""
        own = self._own_writer
        if own is None:
            if self._path is None:
                raise RuntimeError("the recorder is not bound to its database (bind)")
            own = self._own_writer = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, cached_statements=32,
                timeout=LOCK_TIMEOUT_S)
        return own

    def close_writer(self) -> None:
        own, self._own_writer = self._own_writer, None
        if own is not None:
            own.close()

    def write_checkpoint(self, size: int, root: bytes, note: bytes, created_us: int) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(self.INSERT_CHECKPOINT, (size, root, note, created_us))

    @property
    def read_cursor(self) -> "SQLiteReadCursor":
        return SQLiteReadCursor(self.datastore)


class SQLiteReadCursor:
    """A cursor-like object that takes a pooled reader connection per query."""

    def __init__(self, datastore):
        self.datastore, self._rows = datastore, []

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.datastore.get_connection(commit=False) as conn:
            cur = conn.cursor()
            cur.execute(sql, params)
            self._rows = cur.fetchall()

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


def application_env(db: DatabaseURL) -> dict[str, str]:
    """eventsourcing's settings for the ledger's SQLite database."""
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db.path,
            "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
            "APPLICATION_RECORDER_TOPIC": "reledger.storage.sqlite:SQLiteLedgerRecorder"}
