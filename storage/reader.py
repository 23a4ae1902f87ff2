"""Read-only access to a stored ledger, for verifiers and queries.

Opens SQLite with ``mode=ro`` and PostgreSQL with read-only transactions, and only ever runs
SELECT. The SQL here is shared with ``reledger.storage.store`` (which writes), so there is one
definition of the tables' shape; this module imports nothing that writes.

Database URLs: ``sqlite:///relative/or/absolute/path.db`` and
``postgresql://user[:password]@host[:port]/dbname[?schema=NAME]``.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlparse

from reledger.ledger import merkle
from reledger.ledger.encoding import micros_to_time_text
from reledger.ledger.rules import REGISTRY_TYPES

DEFAULT_URL = "sqlite:///./reledger.db"
NAME = "reledger"


class DatabaseURLError(ValueError):
    pass


class NoLedger(ValueError):
    """There is no ledger where the URL points: a missing file, a file or schema without the
    ledger's tables, a missing PostgreSQL schema. Read commands report it (exit 2); nothing is
    created."""


@dataclass(frozen=True)
class DatabaseURL:
    backend: str  # "sqlite" | "postgres"
    path: str = ""  # sqlite file
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    schema: str = "public"

    @classmethod
    def parse(cls, url: str) -> "DatabaseURL":
        u = urlparse(url)
        if u.scheme == "sqlite":
            path = unquote(u.path)
            if url.startswith("sqlite:///"):
                path = url[len("sqlite:///"):].split("?")[0]
            if not path or path == ":memory:":
                raise DatabaseURLError("sqlite URL needs a file path, e.g. sqlite:///./reledger.db")
            return cls("sqlite", path=path)
        if u.scheme in ("postgresql", "postgres"):
            q = parse_qs(u.query)
            schema = q.get("schema", ["public"])[0]
            if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
                raise DatabaseURLError(f"bad schema name {schema!r}: use lower case letters, digits and _")
            return cls("postgres", host=u.hostname or "127.0.0.1", port=u.port or 5432,
                       user=unquote(u.username or "postgres"), password=unquote(u.password or ""),
                       dbname=unquote((u.path or "/").lstrip("/")) or "postgres", schema=schema)
        raise DatabaseURLError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://USER@HOST:PORT/DB")

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo  # quotes every value

        kw = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname}
        if self.password:
            kw["password"] = self.password
        return make_conninfo("", **kw)


class Tables:
    """Table names and SQL of one ledger, for one SQL dialect."""

    def __init__(self, backend: str, schema: str = "public", name: str = NAME):
        self.backend = backend
        if backend == "sqlite":
            self.events = "stored_events"
            self.log = f"{name}_log"
            self.checkpoints = f"{name}_checkpoints"
            self.p = "?"
        else:
            self.events = f"{schema}.{name}_events"
            self.log = f"{schema}.{name}_log"
            self.checkpoints = f"{schema}.{name}_checkpoints"
            self.p = "%s"

    def q(self, sql: str) -> str:
        """Write SQL with '?' placeholders; get the dialect's."""
        return sql.format(events=self.events, log=self.log, checkpoints=self.checkpoints,
                          int_idx=self.int_idx, int_size=self.int_size).replace("?", self.p)

    @property
    def int_idx(self) -> str:
        # SQLite columns take values of any type: only integer indices are log positions
        return "typeof(idx) = 'integer'" if self.backend == "sqlite" else "TRUE"

    @property
    def int_size(self) -> str:
        # (the checkpoints' size column, likewise: the rows :meth:`Queries.checkpoints` keeps)
        return "typeof(size) = 'integer'" if self.backend == "sqlite" else "TRUE"

    def damaged_rows(self) -> list[tuple[str, str]]:
        """(what, SQL) of rows whose values have the wrong type (SQLite only: PostgreSQL columns
        are typed). Each query returns (index or size, description)."""
        if self.backend != "sqlite":
            return []
        return [
            ("log", "SELECT idx, 'a log row has a value of the wrong type' FROM {log} WHERE typeof(idx) != 'integer' "
                    "OR typeof(seq) != 'integer' OR typeof(recorded_us) != 'integer' OR typeof(nodes) != 'blob' "
                    "OR typeof(entry_hash) != 'blob' OR typeof(chain) != 'text' OR typeof(type) != 'text' "
                    "OR typeof(command_id) != 'text'"),
            ("events", "SELECT l.idx, 'the stored entry is not binary' FROM {events} e JOIN {log} l "
                       "ON e.originator_id = l.chain AND e.originator_version = l.seq WHERE typeof(e.state) != 'blob'"),
            ("checkpoints", "SELECT size - 1, 'a stored checkpoint has a value of the wrong type' FROM {checkpoints} "
                            "WHERE typeof(size) != 'integer' OR typeof(root) != 'blob' OR typeof(note) != 'blob'"),
        ]


@dataclass(frozen=True)
class Record:
    """One log position: what the party signed (envelope) and what the ledger added."""

    index: int
    chain: str
    seq: int
    type: str
    entry_hash: bytes
    recorded_us: int
    nodes: bytes  # the stored Merkle nodes completed by this leaf (leaf hash first)
    envelope: bytes | None  # None when the events table has lost the row
    command_id: str | None = None  # as stored in the log row (idempotency look-ups use it)

    @property
    def recorded_at(self) -> str:
        return micros_to_time_text(self.recorded_us)


# the key registry's entry types as SQL literals, in one spelling: the log's partial index of them
# (storage/schema.py) and the queries that read them (the planners match the text)
REGISTRY_TYPES_SQL = ", ".join(f"'{x}'" for x in sorted(REGISTRY_TYPES))
RECORD_COLUMNS = "l.idx, l.chain, l.seq, l.type, l.entry_hash, l.recorded_us, l.nodes, e.state, l.command_id"
RECORD_JOIN = "FROM {log} l LEFT JOIN {events} e ON e.originator_id = l.chain AND e.originator_version = l.seq"


def _int(v: Any, default: int = -1) -> int:
    """An integer column as stored; ``default`` for a value of another type (SQLite columns
    accept anything: a damaged row must be reported by the verifier, not crash it)."""
    return v if type(v) is int else default


def _blob(v: Any) -> bytes | None:
    return bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else None


def _text(v: Any) -> str:
    return v if isinstance(v, str) else "?"


def row_to_record(row: Any) -> Record:
    return Record(_int(row[0]), _text(row[1]), _int(row[2]), _text(row[3]), _blob(row[4]) or b"",
                  _int(row[5]), _blob(row[6]) or b"", _blob(row[7]), row[8] if isinstance(row[8], str) else None)


class Queries:
    """Read queries, run on a DB-API cursor supplied by the caller."""

    def __init__(self, tables: Tables):
        self.t = tables

    def size(self, cur) -> tuple[int, int]:
        """(number of entries, record time of the last one in microseconds)."""
        cur.execute(self.t.q("SELECT idx, recorded_us FROM {log} WHERE {int_idx} ORDER BY idx DESC LIMIT 1"))
        row = cur.fetchone()
        return (0, 0) if row is None else (int(_col(row, 0)) + 1, _int(_col(row, 1), 0))

    def records(self, cur, start: int, stop: int) -> list[Record]:
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx"),
                    (start, stop))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def record_of(self, cur, chain: str, seq: int) -> Record | None:
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.chain = ? AND l.seq = ?"), (chain, seq))
        row = cur.fetchone()
        return None if row is None else row_to_record(_tuple(row))

    def records_of_chain(self, cur, chain: str, start_seq: int, stop_seq: int) -> list[Record]:
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.chain = ? AND l.seq >= ? AND l.seq < ? "
                             "ORDER BY l.seq"), (chain, start_seq, stop_seq))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def records_of_chain_after(self, cur, chain: str, after_seq: int, stop: int, limit: int) -> list[Record]:
        """At most ``limit`` of the chain's records after ``after_seq`` among the first ``stop``
        of the log, by seq (keyset pagination on the (chain, seq) key: a page costs the same
        wherever it starts)."""
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.chain = ? AND l.seq > ? AND l.idx < ? "
                             "ORDER BY l.seq LIMIT ?"), (chain, after_seq, stop, limit))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def chain_count(self, cur, chain: str, start_seq: int) -> int:
        """How many log rows the chain has from ``start_seq`` on (counted in the database)."""
        cur.execute(self.t.q("SELECT COUNT(*) FROM {log} WHERE chain = ? AND seq >= ?"), (chain, start_seq))
        return int(_col(cur.fetchone(), 0))

    def records_of_chain_before(self, cur, chain: str, before_seq: int, stop: int, limit: int) -> list[Record]:
        """At most ``limit`` of the chain's records before ``before_seq`` among the first ``stop``
        of the log, by seq DESCENDING (keyset pagination backwards from a chain's head on the
        (chain, seq) key)."""
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.chain = ? AND l.seq < ? AND l.idx < ? "
                             "ORDER BY l.seq DESC LIMIT ?"), (chain, before_seq, stop, limit))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def chain_head(self, cur, chain: str) -> tuple[int, bytes] | None:
        cur.execute(self.t.q("SELECT seq, entry_hash FROM {log} WHERE chain = ? ORDER BY seq DESC LIMIT 1"), (chain,))
        row = cur.fetchone()
        return None if row is None else (int(_col(row, 0)), bytes(_col(row, 1)))

    def chain_heads(self, cur, size: int) -> dict[str, tuple[int, bytes]]:
        """chain -> (seq, entry hash) of its last entry among the first ``size`` of the log
        (what a checkpoint of that size commits to: ledger/heads.py)."""
        cur.execute(self.t.q("SELECT l.chain, l.seq, l.entry_hash FROM {log} l JOIN (SELECT chain, MAX(seq) AS seq "
                             "FROM {log} WHERE idx < ? GROUP BY chain) h ON h.chain = l.chain AND h.seq = l.seq"),
                    (size,))
        return {r[0]: (int(r[1]), bytes(r[2])) for r in map(_tuple, cur.fetchall())}

    def chains(self, cur) -> list[tuple[str, int]]:
        cur.execute(self.t.q("SELECT chain, MAX(seq) FROM {log} GROUP BY chain ORDER BY chain"))
        return [(r[0], int(r[1])) for r in map(_tuple, cur.fetchall())]

    def nodes(self, cur, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Hashes of perfect subtrees (level, index): stored in the row of their last leaf."""
        want: dict[int, list[tuple[int, int]]] = {}
        for level, index in set(coords):
            want.setdefault(((index + 1) << level) - 1, []).append((level, index))
        out: dict[tuple[int, int], bytes] = {}
        rows = list(want)
        for i in range(0, len(rows), 500):
            chunk = rows[i:i + 500]
            cur.execute(self.t.q("SELECT idx, nodes FROM {log} WHERE idx IN (" + ",".join("?" * len(chunk)) + ")"),
                        chunk)
            for r in map(_tuple, cur.fetchall()):
                nodes = bytes(r[1])
                for level, index in want[int(r[0])]:
                    h = nodes[32 * level:32 * (level + 1)]
                    if len(h) == 32:
                        out[(level, index)] = h
        missing = [c for c in coords if c not in out]
        if missing:
            raise LookupError(f"Merkle nodes missing from the log: {missing[:3]}")
        return out

    def index_at_time(self, cur, recorded_us: int) -> int:
        """How many entries had been recorded at or before ``recorded_us``.

        Record times never decrease along the log (the store records max(clock, last time)),
        so this bisects the log index: O(log n) point reads on the primary key, and no index
        on the record time for every append to maintain. (On a log whose times were tampered
        with, the answer is some cut; ``verify`` reports the times.)"""
        size, last_us = self.size(cur)
        if size == 0 or last_us <= recorded_us:
            return size
        lo, hi = 0, size - 1  # the first index recorded after recorded_us is in [lo, hi]
        sql = self.t.q("SELECT recorded_us FROM {log} WHERE idx = ?")
        while lo < hi:
            mid = (lo + hi) // 2
            cur.execute(sql, (mid,))
            row = cur.fetchone()
            if row is not None and _int(_col(row, 0), 0) <= recorded_us:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def events_count(self, cur) -> int:
        cur.execute(self.t.q("SELECT COUNT(*) FROM {events}"))
        return int(_col(cur.fetchone(), 0))

    def unlogged_events(self, cur, limit: int = 5) -> list[tuple[str, int]]:
        cur.execute(self.t.q("SELECT e.originator_id, e.originator_version FROM {events} e LEFT JOIN {log} l "
                             "ON e.originator_id = l.chain AND e.originator_version = l.seq "
                             "WHERE l.idx IS NULL LIMIT ?"), (limit,))
        return [(r[0], int(r[1])) for r in map(_tuple, cur.fetchall())]

    def checkpoints(self, cur) -> list[tuple[int, bytes, bytes]]:
        cur.execute(self.t.q("SELECT size, root, note FROM {checkpoints} ORDER BY size"))
        return [(r[0], _blob(r[1]) or b"", _blob(r[2]) or b"") for r in map(_tuple, cur.fetchall())
                if type(r[0]) is int]

    def latest_checkpoint(self, cur) -> tuple[int, bytes, bytes] | None:
        cur.execute(self.t.q("SELECT size, root, note FROM {checkpoints} ORDER BY size DESC LIMIT 1"))
        row = cur.fetchone()
        if row is None:
            return None
        r = _tuple(row)
        return _int(r[0], 0), _blob(r[1]) or b"", _blob(r[2]) or b""

    def checkpoint_within(self, cur, size: int) -> tuple[int, bytes, bytes] | None:
        """(size, root, note) of the stored checkpoint row with the greatest size column in
        1..``size`` (one index look-up: the rows as stored, nothing judged; a caller that hands
        the checkpoint out checks its note)."""
        cur.execute(self.t.q("SELECT size, root, note FROM {checkpoints} WHERE {int_size} AND size > 0 AND size <= ? "
                             "ORDER BY size DESC LIMIT 1"), (size,))
        row = cur.fetchone()
        if row is None:
            return None
        r = _tuple(row)
        return _int(r[0], 0), _blob(r[1]) or b"", _blob(r[2]) or b""

    def checkpoints_after(self, cur, after: int, limit: int, upto: int | None = None) -> list[tuple[int, bytes, bytes]]:
        """At most ``limit`` stored checkpoint rows (size, root, note) with ``after < size`` (and
        ``size <= upto``), by the size column (keyset pagination on the table's key: the rows as
        :meth:`checkpoints` gives them, a page at a time)."""
        bound = "" if upto is None else " AND size <= ?"
        cur.execute(self.t.q("SELECT size, root, note FROM {checkpoints} WHERE {int_size} AND size > ?" + bound
                             + " ORDER BY size LIMIT ?"), (after, limit) if upto is None else (after, upto, limit))
        return [(r[0], _blob(r[1]) or b"", _blob(r[2]) or b"") for r in map(_tuple, cur.fetchall())
                if type(r[0]) is int]

    def checkpoint_pages(self, cursor: Callable[[], Any], after: int = 0, upto: int | None = None,
                         page: int = 1000) -> Iterator[tuple[int, bytes, bytes]]:
        """The stored checkpoint rows (size, root, note) with ``after < size <= upto``, as
        :meth:`checkpoints` lists them, read ``page`` rows at a time (``cursor()`` gives the
        cursor of each page's query)."""
        while True:
            rows = self.checkpoints_after(cursor(), after, page, upto)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def checkpoint_sizes(self, cur, lo: int, hi: int) -> list[int]:
        """The size columns of the stored checkpoint rows with ``lo < size <= hi``, ascending."""
        cur.execute(self.t.q("SELECT size FROM {checkpoints} WHERE {int_size} AND size > ? AND size <= ? "
                             "ORDER BY size"), (lo, hi))
        return [r[0] for r in map(_tuple, cur.fetchall()) if type(r[0]) is int]

    def checkpoint_at(self, cur, size: int) -> tuple[int, bytes, bytes] | None:
        """The stored checkpoint row whose size column is ``size``."""
        cur.execute(self.t.q("SELECT size, root, note FROM {checkpoints} WHERE size = ?"), (size,))
        row = cur.fetchone()
        if row is None:
            return None
        r = _tuple(row)
        return _int(r[0], 0), _blob(r[1]) or b"", _blob(r[2]) or b""

    def commands(self, cur, command_ids: list[str]) -> dict[tuple[str, str], tuple[int, bytes]]:
        """(chain, command id) -> (log index, entry hash) of each of these command ids recorded."""
        out: dict[tuple[str, str], tuple[int, bytes]] = {}
        if self.t.backend == "postgres" and command_ids:
            self.send_commands(cur, command_ids)
            return self.fetch_commands(cur)
        for i in range(0, len(command_ids), 500):
            chunk = command_ids[i:i + 500]
            cur.execute(self.t.q("SELECT chain, command_id, idx, entry_hash FROM {log} WHERE command_id IN ("
                                 + ",".join("?" * len(chunk)) + ")"), chunk)
            for r in map(_tuple, cur.fetchall()):
                out[(r[0], r[1])] = (int(r[2]), bytes(r[3]))
        return out

    def send_commands(self, cur, command_ids: list[str]) -> None:
        """PostgreSQL: the query of :meth:`commands` (one array parameter, in binary form), to
        be answered by :meth:`fetch_commands` (in pipeline mode, with the queries sent after it)."""
        cur.execute(self.t.q("SELECT chain, command_id, idx, entry_hash FROM {log} "
                             "WHERE command_id = ANY(%b::text[])"), (list(command_ids),))

    def fetch_commands(self, cur) -> dict[tuple[str, str], tuple[int, bytes]]:
        return {(r[0], r[1]): (int(r[2]), bytes(r[3])) for r in map(_tuple, cur.fetchall())}

    def registry_records(self, cur, start: int, stop: int) -> list[Record]:
        """The key registry's entries with ``start <= idx < stop``, through the log's partial index
        of them (the predicate spelled as the index's: storage/schema.py). For the writer's own
        caches; the verifiers read them with :meth:`records_of_types`, by a scan of the log that
        trusts no index of the database they check."""
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.idx >= ? AND l.idx < ? "
                             f"AND l.type IN ({REGISTRY_TYPES_SQL}) ORDER BY l.idx"), (start, stop))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def records_of_types(self, cur, types: list[str], start: int, stop: int) -> list[Record]:
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.idx >= ? AND l.idx < ? AND l.type IN ("
                             + ",".join("?" * len(types)) + ") ORDER BY l.idx"), (start, stop, *types))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]

    def records_of_types_after(self, cur, types: list[str], after: int, stop: int, limit: int) -> list[Record]:
        """At most ``limit`` records of these types with ``after < idx < stop``, by idx (keyset
        pagination on the log index)."""
        cur.execute(self.t.q(f"SELECT {RECORD_COLUMNS} {RECORD_JOIN} WHERE l.idx > ? AND l.idx < ? AND l.type IN ("
                             + ",".join("?" * len(types)) + ") ORDER BY l.idx LIMIT ?"), (after, stop, *types, limit))
        return [row_to_record(_tuple(r)) for r in cur.fetchall()]


def _tuple(row: Any) -> tuple:
    if isinstance(row, dict):
        return tuple(row.values())
    return tuple(row)


def _col(row: Any, i: int) -> Any:
    return _tuple(row)[i]


class LogReader:
    """A read-only connection to a ledger database."""

    def __init__(self, url: str, name: str = NAME):
        self.url = DatabaseURL.parse(url)
        self.tables = Tables(self.url.backend, self.url.schema, name)
        self.queries = Queries(self.tables)
        if self.url.backend == "sqlite":
            path = Path(self.url.path)
            if not path.is_file():
                raise NoLedger(f"no ledger at {path}: the file does not exist (run `reledger init` or "
                               "`reledger demo` first, or pass --db)")
            self._conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False)
        else:
            import psycopg

            self._conn = psycopg.connect(self.url.conninfo(), autocommit=True,
                                         options="-c default_transaction_read_only=on")

    def cursor(self):
        return self._conn.cursor()

    def streaming_cursor(self, name: str):
        """A cursor whose rows come a page at a time: a named (server-side) cursor on PostgreSQL,
        SQLite's own cursor (which steps through its rows) otherwise."""
        if self.url.backend == "sqlite":
            return self._conn.cursor()
        cur = self._conn.cursor(name=name)
        cur.itersize = 2000
        return cur

    def begin_snapshot(self) -> None:
        """Make the following reads one consistent snapshot (until :meth:`end_snapshot`)."""
        if self.url.backend == "sqlite":
            self._conn.execute("BEGIN")  # a WAL read transaction: one snapshot
        else:
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def end_snapshot(self) -> None:
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def iter_records(self, start: int = 0, stop: int | None = None, page: int = 2000) -> Iterator[Record]:
        cur = self.cursor()
        if stop is None:
            stop = self.queries.size(cur)[0]
        i = start
        while i < stop:
            batch = self.queries.records(cur, i, min(stop, i + page))
            yield from batch
            i = min(stop, i + page)


def ledger_tables_missing(reader: LogReader, extra: tuple[str, ...] = ()) -> list[str]:
    """The ledger's tables (and ``extra`` table names) that the database lacks, looked up
    through ``reader``'s read-only connection."""
    t = reader.tables
    want = [t.events.split(".")[-1], t.log.split(".")[-1], t.checkpoints.split(".")[-1], *extra]
    cur = reader.cursor()
    if t.backend == "sqlite":
        try:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        except sqlite3.DatabaseError as e:  # not an SQLite database at all
            raise NoLedger(f"{reader.url.path} is not a reledger ledger database ({e})") from e
    else:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (reader.url.schema,))
    found = {_col(r, 0) for r in cur.fetchall()}
    return [w for w in want if w not in found]


def open_ledger_readonly(url: str, name: str = NAME) -> "LedgerReader":
    """THE way a command that only reads opens a ledger: a read-only connection (SQLite
    ``mode=ro``, PostgreSQL ``default_transaction_read_only``), no DDL, nothing written.

    Raises :class:`NoLedger` with a message for a person when there is no ledger there: a
    missing file, a file without the ledger's tables (a foreign SQLite file), a missing
    PostgreSQL schema (a typo in ``?schema=``) or a schema without the tables; and
    :class:`DatabaseURLError` for a URL it cannot read."""
    u = DatabaseURL.parse(url)
    if u.backend == "postgres":
        import psycopg

        try:
            reader = LedgerReader(url, name)
        except psycopg.OperationalError as e:
            raise NoLedger(f"cannot connect to PostgreSQL at {u.host}:{u.port} database {u.dbname!r} as "
                           f"{u.user!r}: {' '.join(str(e).split()) or type(e).__name__}") from e
        try:
            cur = reader.cursor()
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (u.schema,))
            if cur.fetchone() is None:
                raise NoLedger(f"no ledger in PostgreSQL database {u.dbname!r}: schema {u.schema!r} does not exist "
                               "(check ?schema= in --db, or run `reledger init`)")
            missing = ledger_tables_missing(reader)
        except BaseException:
            reader.close()
            raise
        if missing:
            reader.close()
            raise NoLedger(f"schema {u.schema!r} of PostgreSQL database {u.dbname!r} holds no ledger "
                           f"(missing tables: {', '.join(missing)}); run `reledger init`, or check --db")
        return reader
    reader = LedgerReader(url, name)
    try:
        missing = ledger_tables_missing(reader)
    except BaseException:
        reader.close()
        raise
    if missing:
        reader.close()
        raise NoLedger(f"{u.path} is not a reledger ledger (missing tables: {', '.join(missing)}): refusing to read it; "
                       "check --db")
    return reader


class MerkleProofs:
    """The Merkle root and proofs of a stored log, for any class that gives ``size()`` and
    ``get_nodes(coords)`` (the stored perfect nodes by (level, index)): the store and the
    read-only reader answer them alike."""

    def size(self) -> int:  # pragma: no cover - provided by the class
        raise NotImplementedError

    def get_nodes(self, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:  # pragma: no cover
        raise NotImplementedError

    def node_getter(self, coords):
        nodes = self.get_nodes(list(coords))
        return lambda level, index: nodes[(level, index)]

    def root(self, size: int | None = None) -> bytes:
        size = self.size() if size is None else size
        if size == 0:
            return merkle.EMPTY_ROOT
        return merkle.range_root(0, size, self.node_getter(merkle.range_nodes(0, size)))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        if not 0 <= index < size <= self.size():
            raise ValueError(f"no entry {index} in a tree of size {size} (log size {self.size()})")
        coords = [c for group in merkle.inclusion_proof_nodes(index, size) for c in group]
        return merkle.inclusion_proof(index, size, self.node_getter(coords))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if not 0 <= size1 <= size2 <= self.size():
            raise ValueError(f"bad sizes {size1}, {size2} (log size {self.size()})")
        coords = [c for group in merkle.consistency_proof_nodes(size1, size2) for c in group]
        return merkle.consistency_proof(size1, size2, self.node_getter(coords))


class LedgerReader(MerkleProofs, LogReader):
    """The read side of a stored ledger (what :class:`reledger.storage.store.LedgerStore`
    answers about the log, proofs and checkpoints) over a read-only connection. Open it with
    :func:`open_ledger_readonly`."""

    def _cur(self):
        return self.cursor()

    def size(self) -> int:
        return self.queries.size(self.cursor())[0]

    def records(self, start: int = 0, stop: int | None = None, page: int = 2000) -> Iterator[Record]:
        return self.iter_records(start, stop, page)

    def record(self, index: int) -> Record | None:
        rs = self.queries.records(self.cursor(), index, index + 1)
        return rs[0] if rs else None

    def entry(self, chain: str, seq: int) -> Record | None:
        return self.queries.record_of(self.cursor(), chain, seq)

    def chain_records(self, chain: str, start_seq: int = 1, stop_seq: int = 2**62) -> list[Record]:
        return self.queries.records_of_chain(self.cursor(), chain, start_seq, stop_seq)

    def chain_head(self, chain: str) -> tuple[int, bytes]:
        from reledger.ledger.entry import ZERO_HASH

        return self.queries.chain_head(self.cursor(), chain) or (0, ZERO_HASH)

    def registry(self, size: int | None = None):
        """The key registry after the first ``size`` entries (default: all)."""
        from reledger.ledger.entry import SignedEntry
        from reledger.ledger.registry import REGISTRY_TYPES, Registry

        size = self.size() if size is None else size
        reg = Registry()
        for rec in self.queries.records_of_types(self.cursor(), sorted(REGISTRY_TYPES), 0, size):
            reg.apply(SignedEntry.parse(rec.envelope), rec.index)
        reg.size = size
        return reg

    def get_nodes(self, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return self.queries.nodes(self.cursor(), coords)

    def latest_checkpoint(self) -> tuple[int, bytes, bytes] | None:
        return self.queries.latest_checkpoint(self.cursor())

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return self.queries.checkpoints(self.cursor())

    def checkpoint_rows(self, after: int = 0, upto: int | None = None, page: int = 1000
                        ) -> Iterator[tuple[int, bytes, bytes]]:
        """The stored checkpoint rows (size, root, note) with ``after < size <= upto``, a page at
        a time (:meth:`Queries.checkpoint_pages`)."""
        return self.queries.checkpoint_pages(self.cursor, after, upto, page)
