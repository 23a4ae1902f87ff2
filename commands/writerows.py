"""The command API's write state as rows: what grows with the log is read on demand.

The parts of :class:`reledger.commands.state.WriteState` that grow with the log (lots, shipments,
production batches) are rows of ``reledger_w_state (ns, k, v)`` (one namespace each; keys and
values in canonical msgpack, projections/snapshot.py's plain-data form, as the projections' rule
state: nothing read back runs), read through a bounded cache (projections/state.py's
:class:`~reledger.projections.state.RowMap`). The small parts (key registry, chain heads,
parties, rule parameters, quota batches: they grow with parties and keys, not with entries)
stay in memory, and are written as one value each in the ``_meta`` namespace, beside the
position: how many log entries the rows reflect, and the hash of the last of them.

The rows are a *derived* table with its own position, not rows written in the append's
transaction: every way of appending (the store directly, an import, another writer process)
leaves the log as the only truth, and a writer that starts reads the small parts and the
position, then applies only the log's tail since that position. The rows are written
(:meth:`WriteRows.flush`) after entries are committed, in a transaction of their own that moves
the position, every ``FLUSH_EVERY`` entries (a crash loses at most that tail, parsed again at
start). They can therefore never be ahead of the log, and a position whose hash is not the
log's (another ledger restored in its place) or of another format is discarded: the rows are
deleted and built again from the log.

Two writers of one ledger (two servers, a server and the ``append`` command) write the same
values (the state is a function of the log's prefix); each flush takes the position row's lock
and writes only if the position is not ahead of what it has applied (else it reads the rows
again: :class:`RowsMoved`). A value read whose creating entry is beyond the state's position
(written by a writer that is ahead) is not seen: every value carries the log index that made it.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Iterable

from reledger.ledger.registry import KeyRecord, Registry
from reledger.projections.state import RowMap, decode, encode
from reledger.storage.reader import DatabaseURL

log = logging.getLogger(__name__)

TABLE = "reledger_w_state"
META = "_meta"
FORMAT = "reledger-write-state/1"
FLUSH_EVERY = 2_000  # entries applied between two writes of the rows (the tail parsed again at most)
CACHE_ENTRIES = 100_000  # values of the growing maps kept in memory across flushes
SQLITE_CACHE_KB = 16_384
GROWING = ("lots", "shipments", "batches")  # the namespaces of the maps that grow with the log
SMALL = ("registry", "heads", "parties", "params", "quota_batches")  # the _meta values of the small parts


class RowsMoved(Exception):
    """The rows were written meanwhile past this state's position (another writer), or could
    not be written: the state must be read again from the rows (nothing of it was written)."""


def ddl(pg: bool) -> list[str]:
    blob = "BYTEA" if pg else "BLOB"
    return [f"CREATE TABLE IF NOT EXISTS {TABLE} (ns TEXT NOT NULL, k {blob} NOT NULL, v {blob} NOT NULL, "
            f"PRIMARY KEY (ns, k)){'' if pg else ' WITHOUT ROWID'}"]


def _connect(db: DatabaseURL):
    if db.backend == "postgres":
        import psycopg

        conn = psycopg.connect(db.conninfo(), autocommit=True)
        conn.execute(f'SET search_path TO "{db.schema}"')
        # derived from the log and written with their position: a crash loses a tail that is
        # read again from the log, never makes them disagree with it
        conn.execute("SET synchronous_commit TO OFF")
        return conn
    conn = sqlite3.connect(db.path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")
    return conn


def _table_exists(conn, pg: bool) -> bool:
    if pg:
        return conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = %s",
                            (TABLE,)).fetchone() is not None
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is not None


def create(url: str) -> None:
    """Make the table (if missing): ``reledger init`` does, as the owner (a serving role may
    have no right to)."""
    db = DatabaseURL.parse(url)
    conn = _connect(db)
    try:
        if not _table_exists(conn, db.backend == "postgres"):
            for stmt in ddl(db.backend == "postgres"):
                conn.execute(stmt)
    finally:
        conn.close()


def grant_serving_role(url: str, role: str) -> None:
    """PostgreSQL: make the table (if missing) and let the serving role read and write it (its
    writer process keeps it; DELETE: the rows of another ledger restored in place are dropped)."""
    db = DatabaseURL.parse(url)
    if db.backend != "postgres":
        raise ValueError("serving roles exist on PostgreSQL only")
    from psycopg import sql

    create(url)
    conn = _connect(db)
    try:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.Identifier(TABLE), sql.Identifier(role)))
    finally:
        conn.close()


# --- the small parts as plain data ----------------------------------------------------------
_KEY_FIELDS = ("party", "key_id", "public_key", "purpose", "authorized_at", "valid_from_us", "valid_until_us",
               "revoked_at", "name", "mldsa_public_key")


def _roles(r: Iterable[str]) -> tuple:
    return tuple(sorted(r))


def small_plain(state: Any) -> dict[str, Any]:
    """The small parts of a WriteState as plain values (sets as sorted tuples: stable bytes)."""

    reg: Registry = state.registry
    return {
        "registry": (
            {kid: tuple(getattr(rec, f) for f in _KEY_FIELDS) for kid, rec in reg.keys.items()},
            {p: _roles(r) for p, r in reg.roles.items()},
            dict(reg.registered), reg.root,
            {p: tuple((d[0], d[1], _roles(d[2]), d[3]) for d in ds) for p, ds in reg.designations.items()}),
        "heads": {c: (s, h) for c, (s, h) in state.heads.items()},
        "parties": {p: (i.name, i.registered_at, tuple((d.since_us, _roles(d.roles), d.valid_until_us, d.index)
                                                       for d in i.designations))
                    for p, i in state.parties.items()},
        "params": dict(state.params),
        "quota_batches": {k: (b.basis, b.reserve, dict(b.amounts), b.index) for k, b in state.quota_batches.items()},
    }


def small_load(state: Any, plain: dict[str, Any]) -> None:
    from .state import Designation, PartyInfo, QuotaBatch

    keys, roles, registered, root, designations = plain["registry"]
    reg = Registry()
    reg.keys = {kid: KeyRecord(**dict(zip(_KEY_FIELDS, t))) for kid, t in keys.items()}
    reg.roles = {p: frozenset(r) for p, r in roles.items()}
    reg.registered = dict(registered)
    reg.root = root
    reg.designations = {p: tuple((d[0], d[1], frozenset(d[2]), d[3]) for d in ds) for p, ds in designations.items()}
    reg.size = state.size
    state.registry = reg
    state.heads = {c: (s, h) for c, (s, h) in plain["heads"].items()}
    state.parties = {p: PartyInfo(p, name, tuple(Designation(d[0], frozenset(d[1]), d[2], d[3]) for d in ds), at)
                     for p, (name, at, ds) in plain["parties"].items()}
    state.params = dict(plain["params"])
    state.quota_batches = {k: QuotaBatch(k[0], k[1], k[2], basis, reserve, dict(amounts), index)
                           for k, (basis, reserve, amounts, index) in plain["quota_batches"].items()}


# --- the rows ---------------------------------------------------------------------------------
class WriteRows:
    """The table's connection, the growing maps' caches, and the position (see the module
    docstring). Not thread-safe: the command API's lock is held around it."""

    def __init__(self, url: str, conn, pg: bool, cache_entries: int | None = None,
                 flush_every: int | None = None):
        self.url, self.conn, self.pg = url, conn, pg
        self.cache_entries = CACHE_ENTRIES if cache_entries is None else cache_entries
        self.flush_every = FLUSH_EVERY if flush_every is None else flush_every
        self.position = 0  # entries the rows reflect (as last read or written here)
        self.meta: dict[str, bytes] = {}  # the _meta values as last read or written
        self.maps: dict[str, RowMap] = {}
        self.parsed = 0  # log entries parsed to build the state since it was opened (tests, logs)
        self._fetch_sql = self.q(f"SELECT v FROM {TABLE} WHERE ns = ? AND k = ?")
        self._cur = None
        # (the projections' filter of keys written by a state made from empty: a writer's rows
        # may be written by another writer too, so none here: a miss always asks the table)
        self.written = None

    # --- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Any, *, cache_entries: int | None = None, flush_every: int | None = None
             ) -> "WriteRows | None":
        """The rows of ``store``'s ledger (the table made if missing), checked against its log;
        None when the table is missing and cannot be made (a serving role on a ledger made
        before it existed: the caller keeps its state in memory)."""
        db = DatabaseURL.parse(store.url)
        pg = db.backend == "postgres"
        conn = _connect(db)
        try:
            if not _table_exists(conn, pg):
                try:
                    for stmt in ddl(pg):
                        conn.execute(stmt)
                except Exception as e:  # noqa: BLE001 - e.g. no right to create a table
                    log.warning("the write state's table %s is missing and could not be made (%s): the writer "
                                "keeps its state in memory and builds it from the whole log (run `reledger serve` "
                                "once as the ledger's owner to make it)", TABLE, e)
                    conn.close()
                    return None
            if pg and not conn.execute(  # (each one: a list of several answers whether any is held)
                    "SELECT has_table_privilege(%s, 'SELECT') AND has_table_privilege(%s, 'INSERT') "
                    "AND has_table_privilege(%s, 'UPDATE') AND has_table_privilege(%s, 'DELETE')",
                    (TABLE,) * 4).fetchone()[0]:
                log.warning("this role may not read and write the write state's table %s (run the owner's "
                            "grant, docs/OPERATIONS.md): the writer keeps its state in memory and builds it from "
                            "the whole log", TABLE)
                conn.close()
                return None
            rows = cls(store.url, conn, pg, cache_entries, flush_every)
            rows._read_meta(store)
            return rows
        except BaseException:
            conn.close()
            raise

    def _read_meta(self, store: Any) -> None:
        meta = {decode(k): bytes(v) for k, v in self._exec(self.q(f"SELECT k, v FROM {TABLE} WHERE ns = ?"), (META,))}
        ok = bool(meta) and meta.get("format") == encode(FORMAT) and "position" in meta and \
            all(name in meta for name in SMALL + ("hash",))
        if ok:
            position, last = decode(meta["position"]), decode(meta["hash"])
            size = store.size()
            if not (type(position) is int and 0 <= position <= size):
                ok = False
            elif position > 0:
                rec = store.record(position - 1)
                ok = rec is not None and rec.entry_hash == last
        if not ok and meta:
            log.warning("the write state's rows are not of this ledger's log (or of another format): built again "
                        "from the log")
        if not ok:
            self.reset()
            meta = {}
        self.meta = meta
        self.position = decode(meta["position"]) if meta else 0
        self._complete = not meta or self._count() == 0

    def _count(self) -> int:
        rows = self._exec(self.q(f"SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} WHERE ns <> ? LIMIT 1) x"), (META,))
        return int(rows[0][0])

    def reset(self) -> None:
        """Delete every row (they are built again from the log)."""
        if self.pg:
            with self.conn.transaction():
                self.conn.execute(f"DELETE FROM {TABLE}")
        else:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(f"DELETE FROM {TABLE}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def load(self, state: Any) -> None:
        """Fill a fresh WriteState: its small parts and position from ``_meta``, its growing
        maps as row-backed ones (empty caches)."""
        from .state import RowDict

        self.maps = {ns: RowMap(self, ns, self._complete) for ns in GROWING}
        state.size = self.position
        if self.meta:
            state.last_hash = decode(self.meta["hash"])
            small_load(state, {name: decode(self.meta[name]) for name in SMALL})
        state.lots = RowDict(self.maps["lots"], state, "lots")
        state.shipments = RowDict(self.maps["shipments"], state, "shipments")
        state.batches = RowDict(self.maps["batches"], state, "batches")

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass

    # --- reading (RowMap's side) ----------------------------------------------------------
    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _exec(self, sql: str, params: tuple) -> list:
        cur = self._cur or self.conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall()

    def fetch(self, ns: str, k: bytes) -> bytes | None:
        rows = self._exec(self._fetch_sql, (ns, k))
        return rows[0][0] if rows else None

    def scan(self, ns: str) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self._exec(self.q(f"SELECT k, v FROM {TABLE} WHERE ns = ?"), (ns,))]

    def flush_maps(self) -> None:  # (RowMap.items, which the write state never calls)
        raise NotImplementedError("the write state's maps are not listed")

    def prefetch(self, wanted: Iterable[tuple[str, Any]]) -> None:
        """Read the rows of many keys ((namespace, key) pairs) in one query, into the caches (a
        submission's or a page's keys: one round trip, not one a key)."""
        if not self.pg:  # (SQLite: a point read costs no round trip; each is read when asked)
            return
        todo: dict[str, list] = {}
        for ns, k in wanted:
            todo.setdefault(ns, []).append(k)
        pairs: dict[tuple[str, bytes], tuple[str, Any]] = {}
        for ns, keys in todo.items():
            for k in self.maps[ns].wanted(set(keys)):
                try:
                    pairs[(ns, encode(k))] = (ns, k)
                except (ValueError, TypeError):  # (a key of an odd body: read one by one, if ever)
                    continue
        if not pairs:
            return
        found: dict[tuple[str, bytes], bytes] = {}
        items = list(pairs)
        for i in range(0, len(items), 1000):
            part = items[i:i + 1000]
            if self.pg:
                rows = self._exec(f"SELECT t.ns, t.k, t.v FROM {TABLE} t JOIN unnest(%s::text[], %s::bytea[]) "
                                  "AS w(ns, k) ON t.ns = w.ns AND t.k = w.k", ([p[0] for p in part], [p[1] for p in part]))
            else:
                rows = self._exec(f"SELECT ns, k, v FROM {TABLE} WHERE " + " OR ".join(["(ns = ? AND k = ?)"] * len(part)),
                                  tuple(x for p in part for x in p))
            for ns, k, v in rows:
                found[(ns, bytes(k))] = bytes(v)
        by_ns: dict[str, dict] = {}
        for key, (ns, k) in pairs.items():
            by_ns.setdefault(ns, {})[k] = found.get(key)
        for ns, rows_ in by_ns.items():
            self.maps[ns].preload(rows_)

    def cached(self) -> int:
        return sum(len(m) for m in self.maps.values())

    # --- writing --------------------------------------------------------------------------
    def flush(self, state: Any) -> None:
        """Write what changed since the last flush, the small parts that changed and the
        position (``state.size``, and the hash of its last entry), in one transaction; then
        trim the caches. Raises :class:`RowsMoved` (nothing written) when the stored position
        is ahead of the state (another writer) or the write failed: the caller reads the state
        again from the rows."""
        upserts: list = []
        deletes: list = []
        for m in self.maps.values():
            m.write(upserts, deletes)  # (the caches now take these as written: on failure, read again)
        small = small_plain(state)
        meta = {"format": encode(FORMAT), "position": encode(state.size), "hash": encode(state.last_hash)}
        meta.update({name: encode(v) for name, v in small.items()})
        for name, b in meta.items():
            if self.meta.get(name) != b:
                upserts.append((META, encode(name), b))
        if not upserts and not deletes:  # (nothing changed: only the cache to trim)
            self.trim()
            return
        try:
            self._write(upserts, deletes, state.size)
        except RowsMoved:
            raise
        except Exception as e:  # noqa: BLE001 - the entries are committed whatever happens here
            log.warning("the write state's rows could not be written (%s): read again", e)
            raise RowsMoved(str(e)) from e
        self.meta = meta
        self.position = state.size
        self._complete = False
        self.trim()

    def _write(self, upserts: list, deletes: list, size: int) -> None:
        lock = self.q(f"SELECT v FROM {TABLE} WHERE ns = ? AND k = ?") + (" FOR UPDATE" if self.pg else "")
        if self.pg:
            with self.conn.transaction():
                cur = self.conn.cursor()
                cur.execute(lock, (META, encode("position")))
                self._check_position(cur.fetchall(), size)
                if deletes:
                    cur.execute(f"DELETE FROM {TABLE} s USING unnest(%s::text[], %s::bytea[]) AS d(ns, k) "
                                "WHERE s.ns = d.ns AND s.k = d.k", ([d[0] for d in deletes], [d[1] for d in deletes]))
                if upserts:
                    cur.execute(f"INSERT INTO {TABLE} (ns, k, v) SELECT * FROM unnest(%s::text[], %s::bytea[], "
                                "%s::bytea[]) ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v",
                                ([u[0] for u in upserts], [u[1] for u in upserts], [u[2] for u in upserts]))
            return
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(lock, (META, encode("position")))
            self._check_position(cur.fetchall(), size)
            if deletes:
                cur.executemany(f"DELETE FROM {TABLE} WHERE ns = ? AND k = ?", deletes)
            if upserts:
                cur.executemany(f"INSERT INTO {TABLE} (ns, k, v) VALUES (?, ?, ?) "
                                "ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v", upserts)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _check_position(self, rows: list, size: int) -> None:
        stored = decode(bytes(rows[0][0])) if rows else 0
        if stored != self.position and stored > size:
            raise RowsMoved(f"the rows are at position {stored}, past this state's {size}")
        if stored < self.position:  # (deleted meanwhile: the rows this state took as written are gone)
            raise RowsMoved(f"the rows went back from position {self.position} to {stored}")

    def trim(self) -> None:
        total = self.cached()
        if total <= self.cache_entries:
            return
        share = self.cache_entries / 2 / total
        for m in self.maps.values():
            m.trim(int(len(m) * share))
