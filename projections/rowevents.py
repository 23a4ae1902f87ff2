"""The row-backed forms of :class:`~reledger.projections.queues.Timelines` and
:class:`~reledger.projections.queues.Lists`: one row per event, never one value per key.

A business-time timeline (the national quota timeline of a year gains an event for every use
in that year) and a party's list of quota uses grow with the log. As one value each in
``reledger_p_state`` every flush that touched one re-encoded and rewrote all of it, and the
cache held it whole. Here each event is a row of ::

    reledger_p_events (ns, k, occ, n, v)   PRIMARY KEY (ns, k, occ, n)

``ns`` the Projector's attribute, ``k`` the key (canonical msgpack, as the state's keys), ``occ``
the event's business time (0 for a :class:`Lists`: its items keep the order they came in),
``n`` an increasing number (:meth:`RowState.next_id`: events of one business time keep the
order they came in), ``v`` the event (canonical msgpack, plain data: nothing read back runs).
The rules' questions are range scans of the primary key, a page at a time: from a business
time on, all, up to a business time.

Changes stay in memory until :meth:`RowState.flush` writes them in the page's transaction
(inserts, the new values of the items replaced, the deletions); reads merge the rows with them.
The greatest business time stored under each key is remembered (bounded: forgotten past
``LAST_KEYS`` keys, asked again with one query): an event at or after it, the usual case, asks
the database nothing. Memory is the pending changes of one page and that bound, whatever the
size of the log.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
from typing import Any, Iterator

import msgpack

from . import snapshot

EVENTS = "reledger_p_events"
PAGE = 512       # rows read per query
LAST_KEYS = 100_000  # keys whose greatest stored business time is remembered

_NONE = object()  # no row stored under the key; a deleted row
_SAME = object()  # a stored row not changed since the last flush


_LOCAL = threading.local()


def encode(v: Any) -> bytes:
    """Canonical msgpack of a key or an event in projections/snapshot.py's plain-data form (the
    encoding of projections/state.py's rows; this module is imported by it, not the reverse)."""
    packer = getattr(_LOCAL, "packer", None)
    if packer is None:
        packer = _LOCAL.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    try:
        snapshot.pack_value(v, packer)
        return packer.bytes()
    finally:
        packer.reset()


decode = snapshot.read_value  # plain data only: nothing read back runs


def ddl(pg: bool) -> list[str]:
    blob = "BYTEA" if pg else "BLOB"
    return [f"CREATE TABLE IF NOT EXISTS {EVENTS} (ns TEXT NOT NULL, k {blob} NOT NULL, occ BIGINT NOT NULL, "
            f"n BIGINT NOT NULL, v {blob} NOT NULL, PRIMARY KEY (ns, k, occ, n)){'' if pg else ' WITHOUT ROWID'}"]


def drop_ddl() -> list[str]:
    return [f"DROP TABLE IF EXISTS {EVENTS}"]


def _on(p: list) -> tuple:
    return (p[0], p[1])


class RowEvents:
    """Events per key ordered by (occ, n), as rows (see the module's docstring)."""

    def __init__(self, state: Any, ns: str, complete: bool):
        self._s = state
        self._ns = ns
        self._pending: dict = {}  # key -> [[occ, n, value]] not yet written, in (occ, n) order
        self._changed: dict = {}  # (key, occ, n) of a stored row -> its new value | _NONE (deleted)
        self._last: dict = {}     # key -> greatest stored occ | _NONE
        self._complete = complete  # every key's greatest stored occ is in _last (a fresh state)
        q = state.q
        self._page = PAGE
        self._page_sql = q(f"SELECT occ, n, v FROM {EVENTS} WHERE ns = ? AND k = ? AND occ >= ? AND occ <= ? "
                           f"AND (occ > ? OR (occ = ? AND n > ?)) ORDER BY occ, n LIMIT {PAGE}")
        self._last_sql = q(f"SELECT MAX(occ) FROM {EVENTS} WHERE ns = ? AND k = ?")

    # --- reading -----------------------------------------------------------------------------
    def _stored_last(self, key: Any) -> Any:
        last = self._last.get(key, None)
        if last is None:
            if self._complete:
                return _NONE
            rows = self._s.query(self._last_sql, (self._ns, encode(key)))
            last = _NONE if not rows or rows[0][0] is None else int(rows[0][0])
            self._last[key] = last
            if len(self._last) > LAST_KEYS:
                self._forget()
        return last

    def _stored(self, key: Any, lo: int, hi: int) -> Iterator[tuple]:
        """The stored rows of ``key`` with lo <= occ <= hi: (occ, n, value), a page a query."""
        last = self._stored_last(key)
        if last is _NONE or last < lo:
            return
        kb = encode(key)
        after = (lo, -1)
        changed = self._changed
        while True:
            rows = self._s.query(self._page_sql, (self._ns, kb, lo, hi, after[0], after[0], after[1]))
            for occ, n, v in rows:
                occ, n = int(occ), int(n)
                new = changed.get((key, occ, n), _SAME) if changed else _SAME
                if new is _SAME:
                    yield occ, n, decode(v)
                elif new is not _NONE:
                    yield occ, n, new  # replaced since the last flush
            if len(rows) < self._page:
                return
            after = (int(rows[-1][0]), int(rows[-1][1]))

    def _range(self, key: Any, lo: int, hi: int) -> Iterator[tuple]:
        """(occ, n, value) of ``key`` with lo <= occ <= hi, stored and pending, in (occ, n) order."""
        pend = self._pending.get(key)
        if pend:
            a = bisect.bisect_left(pend, (lo, -1), key=_on)
            b = bisect.bisect_right(pend, (hi, float("inf")), key=_on)
            mine = [tuple(p) for p in pend[a:b]]
        else:
            mine = []
        if not mine:
            return self._stored(key, lo, hi)
        return heapq.merge(self._stored(key, lo, hi), mine, key=lambda e: (e[0], e[1]))

    # --- writing -----------------------------------------------------------------------------
    def _add(self, key: Any, occ: int, value: Any) -> None:
        n = self._s.next_id()
        pend = self._pending.get(key)
        if not pend:  # none (or all deleted since the last flush)
            self._pending[key] = [[occ, n, value]]
        elif pend[-1][0] <= occ:
            pend.append([occ, n, value])
        else:
            pend.insert(bisect.bisect_right(pend, (occ, n), key=_on), [occ, n, value])

    def _set(self, key: Any, handle: tuple, value: Any) -> None:
        occ, n = handle
        for p in self._pending.get(key, ()):
            if p[0] == occ and p[1] == n:
                if value is _NONE:
                    self._pending[key].remove(p)
                else:
                    p[2] = value
                return
        self._changed[(key, occ, n)] = value

    def flush(self, cur: Any) -> None:
        """Write the changes through ``cur`` (the page's transaction)."""
        ns, q = self._ns, self._s.q
        ins = []
        for key, pend in self._pending.items():
            if not pend:
                continue
            kb = encode(key)
            ins += [(ns, kb, occ, n, encode(v)) for occ, n, v in pend]
            last = self._last.get(key)
            if last is not None or self._complete:
                top = max(p[0] for p in pend)
                self._last[key] = top if last is None or last is _NONE or last < top else last
        upd, dels = [], []
        for (key, occ, n), v in self._changed.items():
            if v is _NONE:
                dels.append((ns, encode(key), occ, n))
            else:
                upd.append((encode(v), ns, encode(key), occ, n))
        if dels:
            cur.executemany(q(f"DELETE FROM {EVENTS} WHERE ns = ? AND k = ? AND occ = ? AND n = ?"), dels)
        if upd:
            cur.executemany(q(f"UPDATE {EVENTS} SET v = ? WHERE ns = ? AND k = ? AND occ = ? AND n = ?"), upd)
        if ins:
            if self._s.pg:  # one statement (arrays), not one round trip a row
                cur.execute(f"INSERT INTO {EVENTS} (ns, k, occ, n, v) SELECT * FROM unnest(%s::text[], %s::bytea[], "
                            "%s::int8[], %s::int8[], %s::bytea[])", tuple(list(c) for c in zip(*ins)))
            else:
                cur.executemany(f"INSERT INTO {EVENTS} (ns, k, occ, n, v) VALUES (?, ?, ?, ?, ?)", ins)
        self._pending.clear()
        self._changed.clear()

    def _forget(self) -> None:
        """The older half of the greatest business times remembered (asked again when needed)."""
        last = self._last
        for k in list(itertools.islice(last, len(last) - LAST_KEYS // 2)):
            del last[k]
        self._complete = False

    def trim(self) -> None:
        if len(self._last) > LAST_KEYS:
            self._forget()


_LO, _HI = -(1 << 63), (1 << 63) - 1


class RowTimelines(RowEvents):
    """:class:`~reledger.projections.queues.Timelines` as rows."""

    def insert(self, key: Any, event: list) -> None:
        self._add(key, event[0], event)

    def since(self, key: Any, t: int) -> Iterator[list]:
        return (e[2] for e in self._range(key, t, _HI))

    def all(self, key: Any) -> Iterator[list]:
        return (e[2] for e in self._range(key, _LO, _HI))

    def until(self, key: Any, t: int, inclusive: bool = True) -> Iterator[list]:
        return (e[2] for e in self._range(key, _LO, t if inclusive else t - 1))


class RowLists(RowEvents):
    """:class:`~reledger.projections.queues.Lists` as rows (business time 0: the order added)."""

    def append(self, key: Any, item: list) -> None:
        self._add(key, 0, item)

    def each(self, key: Any) -> Iterator[tuple[Any, list]]:
        return (((occ, n), v) for occ, n, v in self._range(key, 0, 0))

    def values(self, key: Any) -> Iterator[Any]:
        return (v for _, _, v in self._range(key, 0, 0))

    def replace(self, key: Any, handle: Any, item: list) -> None:
        self._set(key, handle, item)

    def delete(self, key: Any, handle: Any) -> None:
        self._set(key, handle, _NONE)
