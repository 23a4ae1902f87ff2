"""The projector's rule state: plain objects in memory (the reference), or rows in the database.

:class:`~reledger.projections.model.Projector` keeps its rule state in attributes made by its
``__init__``: empty dicts (keyed state: balances, lots, shipments, timelines, open findings
...), one set, two due queues (:class:`HeapQueue`), the chain hashes (:class:`ChainHashes`),
and a few scalars and small values (the position, the root chain, the rule parameters, the
penalties). ``Projector()`` keeps them as they are: the in-memory fold from scratch, which the
tests hold as the reference. ``Projector(RowState(conn, pg))`` replaces them, attribute by
attribute and generically (a rule that adds an empty dict needs nothing here), with row-backed
equivalents:

* every empty dict and the set become a :class:`RowMap`: the rows of one namespace of
  ``reledger_p_state (ns, k, v)`` (canonical msgpack keys and values, projections/snapshot.py's
  plain-data form: nothing read back runs), read on demand through a bounded cache;
* a :class:`HeapQueue` becomes a :class:`RowQueue`: rows of ``reledger_p_due`` indexed by due
  time (the time-driven rules ask "what is due by t", a range scan);
* :class:`ChainHashes` becomes rows ``(chain, n) -> hash`` and a count per chain;
* a :class:`Timelines` or :class:`Lists` (values that grow with the log: a business-time
  timeline, a party's quota uses) becomes one row per event in ``reledger_p_events``
  (projections/rowevents.py);
* everything else (scalars, the rule parameters, the penalty list: small, bounded by the
  regulator's own entries) is one value each in the ``_meta`` namespace, written at every flush.

The cache: every value read is kept (least recently used first out), and every value handed to
the rules or set by them is *touched*: at :meth:`RowState.flush` (in the transaction that writes
the derived rows and the tracking position) each touched value is encoded again and written if
its bytes differ from what was read (the rules mutate values in place: a balance ``[g, reo]``, a
shipment's ``received``). Then the cache is trimmed to ``cache_entries`` values. Memory is the
working set (the cache, one page's touched values), never the whole state; a process that
starts reads nothing until a rule asks.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Any, Iterator

import msgpack

from . import rowevents, snapshot
from .queues import ChainHashes, HeapQueue, Lists, Timelines  # the in-memory forms (the reference fold), replaced here

P = "reledger_p_"
STATE = P + "state"
DUE = P + "due"
STATE_IN = P + "state_in"  # PostgreSQL: a temporary table (of the session) a flush's upserts are copied into
META = "_meta"
CACHE_ENTRIES = 200_000  # values kept in the cache across flushes (each map's share in proportion)
SCRATCH_CACHE_KB = 65_536  # a scratch state's SQLite page cache
SMALL_MAP = 512  # a map whose cache holds no more than this is never trimmed
KEY_FILTER_BITS = 1 << 27  # the filter of the keys written by a state made from empty (16 MB)

_MISS = object()    # not in the cache
_ABSENT = object()  # known not to exist (cached as such)
_UNKNOWN = object()  # set without reading: the row may or may not exist
_IMMUTABLE = frozenset({int, str, bytes, bool, type(None)})


# --- encoding ----------------------------------------------------------------------------------
_LOCAL = threading.local()  # a packer per thread (reused)


def encode(v: Any) -> bytes:
    """Canonical msgpack of a key or value in projections/snapshot.py's plain-data form (one
    msgpack call on :func:`~reledger.projections.snapshot.packable`'s form: no plain copy)."""
    packer = getattr(_LOCAL, "packer", None)
    if packer is None:
        packer = _LOCAL.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(_packable(v))
    except (OverflowError, UnicodeEncodeError) as e:  # msgpack's checks of the scalars
        raise snapshot.SnapshotError(f"the rule state cannot be encoded: {e}") from e


_packable = snapshot.packable
decode = snapshot.read_value  # plain data only: nothing read back runs (SnapshotError otherwise)


def ddl(pg: bool) -> list[str]:
    blob = "BYTEA" if pg else "BLOB"
    c = ' COLLATE "C"' if pg else ""
    return [
        f"CREATE TABLE IF NOT EXISTS {STATE} (ns TEXT NOT NULL, k {blob} NOT NULL, v {blob} NOT NULL, "
        f"PRIMARY KEY (ns, k)){'' if pg else ' WITHOUT ROWID'}",
        # due items in the order a heap of (due, a, b) tuples gives them (text compared by code
        # point: COLLATE "C" on PostgreSQL, SQLite's binary collation); id keeps equal items apart
        f"CREATE TABLE IF NOT EXISTS {DUE} (queue TEXT NOT NULL, due BIGINT NOT NULL, a TEXT{c} NOT NULL, "
        f"b TEXT{c} NOT NULL, id BIGINT NOT NULL, item {blob} NOT NULL, PRIMARY KEY (queue, due, a, b, id))",
    ] + rowevents.ddl(pg)


# --- the row-backed forms ----------------------------------------------------------------------
class RowMap:
    """A dict-like view of one namespace of the state table (see the module's docstring)."""

    def __init__(self, state: "RowState", ns: str, complete: bool):
        self._s = state
        self._ns = ns
        self._c: dict = {}      # key -> value | _ABSENT, least recently used first
        self._orig: dict = {}   # key -> the bytes read | None (no row) | _UNKNOWN
        self._touched: set = set()
        self.complete = complete  # every row of the namespace is in the cache (a fresh state)
        self._salt = hash(ns)

    def _absent(self, k: Any) -> bool:
        """``k`` has no row, known without a query: every row is cached, or (a state made from
        empty by this process) the filter of the keys written says it was never written."""
        if self.complete:
            return True
        written = self._s.written
        return written is not None and not written.may_hold(hash(k) ^ self._salt)

    def _load(self, k: Any) -> Any:
        c = self._c
        if self.complete:
            # nothing was evicted yet: no order to keep (the first trim drops the values first
            # read, then the least recently used as below), a miss is an absent key
            v = c.get(k, _MISS)
            if v is _MISS:
                v = c[k] = _ABSENT
                self._orig[k] = None
            return v
        v = c.pop(k, _MISS)
        if v is _MISS:
            if self._absent(k):
                v, orig = _ABSENT, None
            else:
                row = self._s.fetch(self._ns, encode(k))
                if row is None:
                    v, orig = _ABSENT, None
                else:
                    orig = bytes(row)
                    v = decode(orig)
            self._orig[k] = orig
        c[k] = v
        return v

    def get(self, k: Any, default: Any = None) -> Any:
        v = self._load(k)
        if v is _ABSENT:
            return default
        if type(v) not in _IMMUTABLE:
            self._touched.add(k)
        return v

    def __getitem__(self, k: Any) -> Any:
        v = self._load(k)
        if v is _ABSENT:
            raise KeyError(k)
        if type(v) not in _IMMUTABLE:
            self._touched.add(k)
        return v

    def __contains__(self, k: Any) -> bool:
        return self._load(k) is not _ABSENT

    def peek(self, k: Any, default: Any = None) -> Any:
        """The value without marking it touched (for a caller that never mutates values in
        place: the command API's write state keeps immutable tuples)."""
        v = self._load(k)
        return default if v is _ABSENT else v

    def preload(self, rows: dict) -> None:
        """Put values read in one query into the cache: ``rows`` maps each key not cached yet
        to the bytes of its row, or None (no row)."""
        c, orig = self._c, self._orig
        for k, b in rows.items():
            if k in c:
                continue
            c[k] = _ABSENT if b is None else decode(b)
            orig[k] = b

    def cached(self) -> list[tuple[Any, bool, Any]]:
        """(key, exists, value) of every value in the cache (absent ones included)."""
        return [(k, v is not _ABSENT, None if v is _ABSENT else v) for k, v in self._c.items()]

    def write(self, upserts: list, deletes: list) -> None:
        """The rows to write for what changed since the last call (for another owner of rows
        than RowState: the command API's write state)."""
        self._flush(upserts, deletes)

    def trim(self, keep: int) -> None:
        self._trim(keep)

    def wanted(self, keys: Any) -> list:
        """Those of ``keys`` that a look-up would have to read (neither cached nor known absent
        by a complete map)."""
        if self.complete:
            return []
        c = self._c
        return [k for k in keys if k not in c]

    def __setitem__(self, k: Any, v: Any) -> None:
        c = self._c
        if c.pop(k, _MISS) is _MISS:
            self._orig[k] = None if self._absent(k) else _UNKNOWN
        c[k] = v
        self._touched.add(k)

    def add(self, k: Any) -> None:  # the set's form: a key with the value 1
        self[k] = 1

    def setdefault(self, k: Any, default: Any = None) -> Any:
        v = self._load(k)
        if v is _ABSENT:
            self._c[k] = v = default
        self._touched.add(k)
        return v

    def pop(self, k: Any, *default: Any) -> Any:
        v = self._load(k)
        if v is _ABSENT:
            if default:
                return default[0]
            raise KeyError(k)
        self._c[k] = _ABSENT
        self._touched.add(k)
        return v

    def __delitem__(self, k: Any) -> None:
        self.pop(k)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every key and value (a scan of the namespace: for the few maps whose size does not grow
        with the log, as the quota totals; flushed first)."""
        self._s.flush_maps()
        seen = set()
        for kb, vb in self._s.scan(self._ns):
            k = decode(kb)
            seen.add(k)
            v = self._c.get(k, _MISS)
            yield k, (decode(vb) if v is _MISS else v)
        for k, v in list(self._c.items()):
            if k not in seen and v is not _ABSENT:
                yield k, v

    def _flush(self, upserts: list, deletes: list) -> None:
        ns = self._ns
        orig, c = self._orig, self._c
        # the keys written go into the filter once the map is no longer complete (see _trim)
        written = None if self.complete else self._s.written
        salt = self._salt
        for k in self._touched:
            v = c[k]
            o = orig.get(k, _UNKNOWN)
            if v is _ABSENT:
                if o is not None:
                    deletes.append((ns, encode(k)))
                    orig[k] = None
                continue
            b = encode(v)
            if b != o:
                upserts.append((ns, encode(k), b))
                orig[k] = b
                if written is not None and o is None:  # a new row
                    written.add(hash(k) ^ salt)
        self._touched.clear()

    def _trim(self, keep: int) -> None:
        c = self._c
        n = len(c) - keep
        if n <= 0:
            return
        orig = self._orig
        written = self._s.written
        if self.complete and written is not None:
            # every row of the namespace is in the cache, written (the flush is done): from now
            # on the filter answers for the keys that are not
            salt = self._salt
            for k, v in c.items():
                if v is not _ABSENT:
                    written.add(hash(k) ^ salt)
        self.complete = False
        for k in list(itertools.islice(c, n)):  # least recently used first
            del c[k]
            orig.pop(k, None)

    def __len__(self) -> int:  # the cache's size (what memory holds), not the namespace's
        return len(self._c)


class RowQueue:
    """A :class:`HeapQueue` as rows of ``reledger_p_due`` ordered by (due, a, b): items pushed
    since the last flush in a heap, the stored ones read from the front, a page at a time."""

    PAGE = 256

    def __init__(self, state: "RowState", name: str):
        self._s = state
        self._name = name
        self._pending: list = []   # heap of (item, sort key) pushed since the last flush
        self._head: list | None = None  # stored items (sort key, id, item), from the front
        self._hi = 0
        self._exhausted = False
        self._popped: list = []    # stored (queue, due, a, b, id) taken out since the last flush

    @staticmethod
    def _key(item: tuple) -> tuple:
        return (item[0], item[1] if type(item[1]) is str else str(item[1]),
                item[2] if type(item[2]) is str else str(item[2]))

    def _front(self):
        if self._head is None:
            self._head, self._hi, self._exhausted = [], 0, False
        if self._hi >= len(self._head) and not self._exhausted:
            after = self._head[-1] if self._head else None
            rows = self._s.due_page(self._name, None if after is None else (*after[0], after[1]), self.PAGE)
            self._head = [((int(r[0]), r[1], r[2]), int(r[3]), decode(r[4])) for r in rows]
            self._hi = 0
            self._exhausted = len(rows) < self.PAGE
        return self._head[self._hi] if self._hi < len(self._head) else None

    def push(self, item: tuple) -> None:
        heapq.heappush(self._pending, (self._key(item), self._s.next_id(), item))

    def _top(self):
        p = self._pending[0] if self._pending else None
        d = self._front()
        if p is None:
            return d, False
        if d is None or p[0] < d[0] or (p[0] == d[0] and p[1] < d[1]):
            return p, True
        return d, False

    def due(self, t: int) -> bool:
        top, _ = self._top()
        return top is not None and top[0][0] <= t

    def pop(self) -> tuple:
        top, pending = self._top()
        if top is None:
            raise IndexError("pop from an empty queue")
        if pending:
            heapq.heappop(self._pending)
        else:
            self._hi += 1
            self._popped.append((self._name, *top[0], top[1]))
        return top[2]

    def _flush(self) -> tuple[list, list]:
        ins = [(self._name, *k, i, encode(item)) for k, i, item in self._pending]
        dels = self._popped
        self._pending, self._popped, self._head = [], [], None
        return ins, dels


class RowChainHashes:
    """:class:`ChainHashes` as rows: (chain, n) -> hash, and the count of each chain."""

    def __init__(self, state: "RowState", name: str, complete: bool):
        self._len = RowMap(state, name + ".len", complete)
        self._h = RowMap(state, name, complete)
        state.maps += [self._len, self._h]

    def append(self, chain: str, entry_hash: bytes) -> None:
        n = (self._len.get(chain) or 0) + 1
        self._len[chain] = n
        self._h[(chain, n)] = entry_hash

    def range(self, chain: str, first: int, last: int) -> list[bytes] | None:
        n = self._len.get(chain) or 0
        if not (1 <= first and last <= n):
            return None
        return [self._h[(chain, i)] for i in range(first, last + 1)]


class KeyFilter:
    """A Bloom filter of the keys a state made from empty has written (fixed size, so memory
    does not grow with the log: it only answers more often "maybe" as keys accumulate). "No" is
    certain: the key was never written, it has no row, no query is needed (a new lot's
    balance, timeline, references and open finding are looked up before they exist). "Maybe"
    asks the database as before. Keys are Python hashes (of the key, salted by the namespace),
    so the filter lives in memory only and is never stored."""

    def __init__(self, bits: int):
        self._mask = bits - 1  # bits: a power of two
        self._b = bytearray(bits >> 3)

    # three probes: the hash's low bits, and two slices of it multiplied by a 64-bit odd constant

    def add(self, h: int) -> None:
        b, m = self._b, self._mask
        g = (h * 0x9E3779B97F4A7C15) >> 13
        i = h & m
        b[i >> 3] |= 1 << (i & 7)
        i = g & m
        b[i >> 3] |= 1 << (i & 7)
        i = (g >> 30) & m
        b[i >> 3] |= 1 << (i & 7)

    def may_hold(self, h: int) -> bool:
        b, m = self._b, self._mask
        i = h & m
        if not b[i >> 3] & (1 << (i & 7)):
            return False
        g = (h * 0x9E3779B97F4A7C15) >> 13
        i = g & m
        if not b[i >> 3] & (1 << (i & 7)):
            return False
        i = (g >> 30) & m
        return bool(b[i >> 3] & (1 << (i & 7)))


class RowState:
    """The rule state as rows, for :class:`~reledger.projections.model.Projector` (``attach``).

    ``conn`` is the projection store's connection (sqlite3, or psycopg in autocommit mode):
    reads go through it (inside the store's transaction when one is open), :meth:`flush` writes
    through the cursor of the transaction that writes the derived rows and the position."""

    def __init__(self, conn: Any, pg: bool, cache_entries: int | None = None):
        self.conn, self.pg = conn, pg
        self.cache_entries = CACHE_ENTRIES if cache_entries is None else cache_entries
        self.maps: list[RowMap] = []
        self.queues: list[RowQueue] = []
        self.events: list = []  # the timelines and lists (projections/rowevents.py)
        self.meta: dict[str, Any] = {}  # attribute -> its value as last written
        self.written: KeyFilter | None = None  # the keys written, when this process made the state from empty
        self.proj: Any = None
        self._ids = 0
        self._cur = None
        self._rcur = None
        self._fetch_sql = self.q(f"SELECT v FROM {STATE} WHERE ns = ? AND k = ?")

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _exec(self, sql: str, params: tuple) -> list:
        cur = self._cur
        if cur is None:
            cur = self._rcur
            if cur is None:
                cur = self._rcur = self.conn.cursor()  # one cursor for the reads (making one costs)
        cur.execute(sql, params)
        return cur.fetchall()

    def query(self, sql: str, params: tuple) -> list:
        """The rows of a read (projections/rowevents.py's), through the open transaction if any."""
        return self._exec(sql, params)

    def fetch(self, ns: str, k: bytes) -> bytes | None:
        rows = self._exec(self._fetch_sql, (ns, k))
        return rows[0][0] if rows else None

    def scan(self, ns: str) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self._exec(self.q(f"SELECT k, v FROM {STATE} WHERE ns = ?"), (ns,))]

    def due_page(self, queue: str, after: tuple | None, n: int) -> list:
        if after is None:
            return self._exec(self.q(f"SELECT due, a, b, id, item FROM {DUE} WHERE queue = ? ORDER BY due, a, b, id "
                                     f"LIMIT {int(n)}"), (queue,))
        return self._exec(self.q(f"SELECT due, a, b, id, item FROM {DUE} WHERE queue = ? AND (due, a, b, id) > "
                                 f"(?, ?, ?, ?) ORDER BY due, a, b, id LIMIT {int(n)}"), (queue, *after))

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def attach(self, proj: Any) -> None:
        """Replace ``proj``'s fresh attributes by row-backed ones, and its scalars and small
        values by those stored (a state never flushed: the fresh ones, position 0)."""
        self.proj = proj
        stored = {decode(k): decode(v) for k, v in self.scan(META)}
        fresh = not stored
        if fresh:  # every row of the state will have been written through this object
            self.written = KeyFilter(KEY_FILTER_BITS)
        for name, value in list(vars(proj).items()):
            t = type(value)
            if (t is dict and not value) or t is set:
                m = RowMap(self, name, fresh)
                self.maps.append(m)
                setattr(proj, name, m)
            elif t is HeapQueue:
                rq = RowQueue(self, name)
                self.queues.append(rq)
                setattr(proj, name, rq)
            elif t is ChainHashes:
                setattr(proj, name, RowChainHashes(self, name, fresh))
            elif t is Timelines or t is Lists:
                rows = (rowevents.RowTimelines if t is Timelines else rowevents.RowLists)(self, name, fresh)
                self.events.append(rows)
                setattr(proj, name, rows)
            else:
                if name in stored:
                    setattr(proj, name, stored[name])
                self.meta[name] = encode(getattr(proj, name))
        self._ids = int(stored.get("_due_ids", 0))
        self.stored_rules = stored.get("_rules")  # the rules that made the stored state (None: none)
        proj.row_state = self
        if self.pg:  # made here, outside the transactions (one that rolls back would take it along)
            cur = self._rcur if self._rcur is not None else self.conn.cursor()
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STATE_IN} (ns TEXT, k BYTEA, v BYTEA) ON COMMIT DELETE ROWS")

    def flush_maps(self) -> None:
        """Write what the rules changed (through the open transaction's cursor)."""
        upserts: list = []
        deletes: list = []
        for m in self.maps:
            m._flush(upserts, deletes)
        for name, old in self.meta.items():
            b = encode(getattr(self.proj, name))
            if b != old:
                upserts.append((META, encode(name), b))
                self.meta[name] = b
        upserts.append((META, encode("_due_ids"), encode(self._ids)))
        upserts.append((META, encode("_rules"), encode(snapshot.RULES)))
        cur = self._cur if self._cur is not None else self.conn.cursor()
        if self.pg:
            # one statement each (arrays), not one round trip a row
            if deletes:
                cur.execute(f"DELETE FROM {STATE} s USING unnest(%s::text[], %s::bytea[]) AS d(ns, k) "
                            "WHERE s.ns = d.ns AND s.k = d.k", ([d[0] for d in deletes], [d[1] for d in deletes]))
            if upserts:
                # binary COPY into a temporary table, then one upsert from it: the arrays of an
                # unnest were dumped in Python, several microseconds a row
                with cur.copy(f"COPY {STATE_IN} (ns, k, v) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(("text", "bytea", "bytea"))
                    write = copy.write_row
                    for u in upserts:
                        write(u)
                # (taken out of the temporary table: a transaction may flush more than once)
                cur.execute(f"WITH d AS (DELETE FROM {STATE_IN} RETURNING ns, k, v) INSERT INTO {STATE} (ns, k, v) "
                            "SELECT ns, k, v FROM d ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v")
        else:
            if deletes:
                cur.executemany(f"DELETE FROM {STATE} WHERE ns = ? AND k = ?", deletes)
            if upserts:
                cur.executemany(f"INSERT INTO {STATE} (ns, k, v) VALUES (?, ?, ?) "
                                "ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v", upserts)
        for rq in self.queues:
            ins, dels = rq._flush()
            if dels:
                cur.executemany(self.q(f"DELETE FROM {DUE} WHERE queue = ? AND due = ? AND a = ? AND b = ? "
                                       "AND id = ?"), dels)
            if ins and self.pg:
                with cur.copy(f"COPY {DUE} (queue, due, a, b, id, item) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(("text", "int8", "text", "text", "int8", "bytea"))
                    write = copy.write_row
                    for r in ins:
                        write(r)
            elif ins:
                cur.executemany(f"INSERT INTO {DUE} (queue, due, a, b, id, item) VALUES (?, ?, ?, ?, ?, ?)", ins)
        for ev in self.events:
            ev.flush(cur)

    def flush(self, cur: Any) -> None:
        """Write the changes in the transaction of ``cur`` (the caller commits)."""
        self._cur = cur
        try:
            self.flush_maps()
        finally:
            self._cur = None

    def trim(self) -> None:
        """After a commit: the cache back to its bound (each map keeps its share)."""
        for ev in self.events:
            ev.trim()
        total = sum(len(m._c) for m in self.maps)
        if total <= self.cache_entries:
            return
        share = self.cache_entries / 2 / total
        for m in self.maps:
            # a small map is kept whole (it stays complete: a miss there needs no query)
            m._trim(max(int(len(m._c) * share), SMALL_MAP))

    def begin(self, cur: Any) -> None:
        """Reads inside a transaction go through its cursor (PostgreSQL: its snapshot)."""
        self._cur = cur

    def end(self) -> None:
        self._cur = None

    def cached(self) -> int:
        return sum(len(m._c) for m in self.maps)


#: the columns of the state's tables, and their PostgreSQL types (a rebuild copies them in)
STATE_COLUMNS = {STATE: ("ns", "k", "v"), DUE: ("queue", "due", "a", "b", "id", "item"),
                 rowevents.EVENTS: ("ns", "k", "occ", "n", "v")}
STATE_PG_TYPES = {STATE: ("text", "bytea", "bytea"), DUE: ("text", "int8", "text", "text", "int8", "bytea"),
                  rowevents.EVENTS: ("text", "bytea", "int8", "int8", "bytea")}


def drop_ddl() -> list[str]:
    return [f"DROP TABLE IF EXISTS {STATE}", f"DROP TABLE IF EXISTS {DUE}"] + rowevents.drop_ddl()


class ScratchState:
    """A rule state in a scratch SQLite file of its own (deleted by :meth:`close`), for a fold
    that must not hold the whole state in memory and must not write to the ledger
    (``verify --projections``, ``replay``): ``Projector(scratch.state)``, then :meth:`flush`
    every page or so."""

    def __init__(self, cache_entries: int | None = None):
        import os
        import sqlite3
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="reledger-state-")
        self.conn = sqlite3.connect(os.path.join(self._dir.name, "state.db"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute(f"PRAGMA cache_size=-{SCRATCH_CACHE_KB}")  # random keys: the B-tree's pages in memory
        for stmt in ddl(False):
            self.conn.execute(stmt)
        self.state = RowState(self.conn, False, cache_entries)

    def flush(self) -> None:
        cur = self.conn.cursor()
        cur.execute("BEGIN")
        self.state.flush(cur)
        cur.execute("COMMIT")
        self.state.trim()

    def close(self) -> None:
        self.conn.close()
        self._dir.cleanup()
