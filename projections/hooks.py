"""The findings an append raised, for the command API's answer (``findings_hook``).

After a group commit the command API asks, entry by entry, which findings each new entry
raised; the first question brings the projections up to date (one catch-up for the whole
commit) and the answers come from what that catch-up produced.
"""

from __future__ import annotations

import threading
from typing import Any

from .model import Finding
from .store import ProjectionStore


class ProjectionFindings:
    """``findings_hook(signed_entry, receipt) -> [finding dicts]`` backed by a ProjectionStore."""

    def __init__(self, projections: ProjectionStore, keep: int = 100_000):
        self.projections = projections
        self.keep = keep
        self._by_index: dict[int, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _collect(self, findings: list[Finding]) -> None:
        for f in findings:
            self._by_index.setdefault(f.index, []).append(f.to_dict())

    def catch_up(self) -> int:
        """Bring the projections up to date, keeping the findings for the appends' answers (use
        this, not ProjectionStore.catch_up, wherever a hook is installed)."""
        with self._lock:
            return self._catch_up()

    def _catch_up(self) -> int:
        n = self.projections.catch_up(on_findings=self._collect)
        if len(self._by_index) > self.keep:
            for k in sorted(self._by_index)[: len(self._by_index) - self.keep]:
                del self._by_index[k]
        return n

    def __call__(self, signed, receipt) -> list[dict[str, Any]]:
        with self._lock:
            if receipt.index >= self.projections.position():
                self._catch_up()
            # only what concerns the submitter: a time-driven finding raised on the arrival of
            # this entry about another party (a shipment overdue elsewhere) is not theirs to see
            return [f for f in self._by_index.pop(receipt.index, []) if f["party"] == receipt.chain]
