"""The nonces of signed read requests, kept in the ledger's database (docs/HTTP.md).

A signed request names a nonce; the server accepts it only if no request with the same key and
nonce was accepted within the replay horizon (twice the timestamp window). Keeping the nonces in
the database, not in one process's memory, makes that hold across restarts and for every server
of one ledger: the check is an insert-if-absent on the primary key, so of two servers that
receive the same captured request at once exactly one inserts the row and accepts it.

The table ``reledger_nonces(key_id, nonce, seen_us)`` is not part of the ledger: it is not
signed, not in the Merkle log, not append-only (rows older than the horizon are deleted), and
``verify`` does not read it. On PostgreSQL the serving role needs SELECT, INSERT and DELETE on
it (:func:`grant_nonces`).
"""

from __future__ import annotations

import sqlite3
import threading
import time

from .reader import NAME, DatabaseURL

TABLE = f"{NAME}_nonces"
PRUNE_EVERY = 30.0  # seconds between two deletions of expired rows (by one server)


def table_name(db: DatabaseURL) -> str:
    return TABLE if db.backend == "sqlite" else f'"{db.schema}".{TABLE}'


def ddl(db: DatabaseURL) -> str:
    """The table: one row per accepted (key, nonce), with when it was accepted (µs since the epoch)."""
    return (f"CREATE TABLE IF NOT EXISTS {table_name(db)} (key_id TEXT NOT NULL, nonce TEXT NOT NULL, "
            "seen_us BIGINT NOT NULL, PRIMARY KEY (key_id, nonce))")


def grant_nonces(url: str, role: str) -> None:
    """Create the table (if needed) and let PostgreSQL ``role`` (the serving role) SELECT,
    INSERT and DELETE in it: deleting is how expired nonces are pruned."""
    db = DatabaseURL.parse(url)
    if db.backend != "postgres":
        raise ValueError("serving roles exist on PostgreSQL only")
    import psycopg

    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute(ddl(db))
        conn.execute(f'GRANT SELECT, INSERT, DELETE ON {table_name(db)} TO "{role}"')


class NonceStore:
    """Insert-if-absent of (key id, nonce) in the database; thread-safe (one connection, one lock).

    ``horizon``: seconds a nonce is remembered. The table is created when missing (``serve`` and
    ``init`` create it; a serving role without CREATE finds it there). Database errors propagate
    (the server answers them 503, like any database that is unavailable)."""

    def __init__(self, url: str, horizon: float, *, clock=time.time):
        self.db = DatabaseURL.parse(url)
        self.horizon, self.clock = horizon, clock
        self.table = table_name(self.db)
        self._lock = threading.Lock()
        self._conn = None
        self._next_prune = 0.0
        with self._lock:
            self._connect()

    # --- the connection -------------------------------------------------------------------
    def _connect(self):
        if self._conn is not None:
            return self._conn
        if self.db.backend == "sqlite":
            conn = sqlite3.connect(self.db.path, timeout=30, isolation_level=None, check_same_thread=False)
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (TABLE,)).fetchone()
            if not exists:
                conn.execute(ddl(self.db))
        else:
            import psycopg

            conn = psycopg.connect(self.db.conninfo(), autocommit=True, connect_timeout=10)
            try:
                exists = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0]
                if exists is None:
                    conn.execute(ddl(self.db))
                conn.execute("SET lock_timeout = '10s'")
            except Exception:
                conn.close()
                raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- the check ------------------------------------------------------------------------
    def check_and_add(self, key_id: str, nonce: str) -> bool:
        """True if (key_id, nonce) was not seen within the horizon (it is recorded now); False
        if it was: a replay."""
        now = self.clock()
        now_us = int(now * 1_000_000)
        p = "?" if self.db.backend == "sqlite" else "%s"
        with self._lock:
            conn = self._connect()
            try:
                if now >= self._next_prune:
                    conn.execute(f"DELETE FROM {self.table} WHERE seen_us < {p}",
                                 (now_us - int(self.horizon * 1_000_000),))
                    self._next_prune = now + min(PRUNE_EVERY, self.horizon / 4)
                if self.db.backend == "sqlite":
                    cur = conn.execute(f"INSERT OR IGNORE INTO {self.table} (key_id, nonce, seen_us) VALUES (?, ?, ?)",
                                       (key_id, nonce, now_us))
                else:
                    cur = conn.execute(f"INSERT INTO {self.table} (key_id, nonce, seen_us) VALUES (%s, %s, %s) "
                                       "ON CONFLICT DO NOTHING", (key_id, nonce, now_us))
                inserted = cur.rowcount == 1
            except Exception:
                self._drop()  # the next request connects again
                raise
        return inserted

    def count(self) -> int:
        with self._lock:
            return self._connect().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
