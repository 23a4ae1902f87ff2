"""The in-memory forms of the projector's due queues, chain hashes, timelines and lists (the
reference fold); projections/state.py and projections/rowevents.py have their row-backed forms."""

from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class HeapQueue:
    """Items (due time, a, b) taken out in order of due time (a heap)."""

    items: list = field(default_factory=list)

    def push(self, item: tuple) -> None:
        heapq.heappush(self.items, item)

    def due(self, t: int) -> bool:
        """Whether an item is due at or before ``t``."""
        return bool(self.items) and self.items[0][0] <= t

    def pop(self) -> tuple:
        return heapq.heappop(self.items)


@dataclass
class ChainHashes:
    """The entry hashes of each chain, in seq order."""

    hashes: dict = field(default_factory=dict)

    def append(self, chain: str, entry_hash: bytes) -> None:
        h = self.hashes.get(chain)
        if h is None:
            self.hashes[chain] = [entry_hash]
        else:
            h.append(entry_hash)

    def range(self, chain: str, first: int, last: int) -> list[bytes] | None:
        """The hashes of seqs ``first``..``last`` of ``chain`` (None: not all recorded)."""
        h = self.hashes.get(chain, [])
        return h[first - 1:last] if 1 <= first and last <= len(h) else None


def _occ(e: list) -> int:
    return e[0]


@dataclass
class Timelines:
    """Per key, events ``[occ, ...]`` in order of business time ``occ`` (those of one business
    time in the order they came). The rules ask for the events from a business time on (a late
    entry's place and after: at or near the end when entries come in business-time order), for
    all of them (a cure, rare), and for those up to a business time (a stock at a time).
    projections/rowevents.py has the row-backed form (rows ordered by (key, occ, n))."""

    events: dict = field(default_factory=dict)

    def insert(self, key: Any, event: list) -> None:
        """Add ``event`` (its business time first) after the events of its business time."""
        ev = self.events.get(key)
        if ev is None:
            self.events[key] = [event]
        else:
            ev.insert(bisect.bisect_right(ev, event[0], key=_occ), event)

    def since(self, key: Any, t: int) -> Iterator[list]:
        """The events of business time ``t`` and after, in order."""
        ev = self.events.get(key, ())
        return itertools.islice(ev, bisect.bisect_left(ev, t, key=_occ), None)

    def all(self, key: Any) -> Iterator[list]:
        return iter(self.events.get(key, ()))

    def until(self, key: Any, t: int, inclusive: bool = True) -> Iterator[list]:
        """The events before business time ``t`` (and at ``t``: ``inclusive``), in order."""
        ev = self.events.get(key, ())
        cut = bisect.bisect_right if inclusive else bisect.bisect_left
        return itertools.islice(ev, cut(ev, t, key=_occ))


@dataclass
class Lists:
    """Per key, items in the order they were added; an item seen in :meth:`each` is replaced or
    deleted by its handle (the row-backed form: projections/rowevents.py)."""

    items: dict = field(default_factory=dict)

    def append(self, key: Any, item: list) -> None:
        it = self.items.get(key)
        if it is None:
            self.items[key] = [item]
        else:
            it.append(item)

    def each(self, key: Any) -> Iterator[tuple[Any, list]]:
        """(handle, item) in the order added (a handle stays valid until an item is deleted)."""
        return enumerate(self.items.get(key, ()))

    def values(self, key: Any) -> Iterator[Any]:
        return iter(self.items.get(key, ()))

    def replace(self, key: Any, handle: Any, item: list) -> None:
        self.items[key][handle] = item

    def delete(self, key: Any, handle: Any) -> None:
        del self.items[key][handle]
