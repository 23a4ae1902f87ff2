"""The in-memory forms of the projector's due queues and chain hashes (the reference fold);
projections/state.py has their row-backed forms."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


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
