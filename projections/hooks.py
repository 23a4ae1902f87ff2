"""The findings an append raised, for the command API's answer (``findings_hook``).

After a group commit the command API asks, entry by entry and in log order, which findings
each new entry raised; the first question brings the projections up to date (one catch-up for
the whole commit, or for several commits when the questions come later, as the server's
findings stage asks them) and the answers come from what that catch-up produced.

Every catch-up of the projections in a process that answers appends must go through
:meth:`ProjectionFindings.catch_up` (the server's follower and its queries do): a catch-up
that bypassed the collector would project the new entries without keeping their findings, and
the appends' answers would list none.
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
        self._upto = -1  # the projections' position after this collector's last catch-up
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
        proj = self.projections.projector
        self._upto = proj.position if proj is not None else self.projections.position()
        if len(self._by_index) > self.keep:
            for k in sorted(self._by_index)[: len(self._by_index) - self.keep]:
                del self._by_index[k]
        return n

    def findings_of(self, entries: list[tuple]) -> dict[int, list[dict[str, Any]]]:
        """The batch form of the hook (as ProjectionProcess.findings_of): entries as (log index,
        record time, chain, seq, entry hash, envelope), in log order; one catch-up at most."""
        if not entries:
            return {}
        with self._lock:
            last = entries[-1][0]
            if last >= self._upto and last >= self.projections.position():
                self._catch_up()
            return {e[0]: [f for f in self._by_index.pop(e[0], []) if f["party"] == e[2]] for e in entries}

    def __call__(self, signed, receipt) -> list[dict[str, Any]]:
        with self._lock:
            # projected by one of this collector's catch-ups: its findings (if any) are kept;
            # else (a first question, or an entry past the last catch-up) catch up now
            if receipt.index >= self._upto and receipt.index >= self.projections.position():
                self._catch_up()
            # only what concerns the submitter: a time-driven finding raised on the arrival of
            # this entry about another party (a shipment overdue elsewhere) is not theirs to see
            return [f for f in self._by_index.pop(receipt.index, []) if f["party"] == receipt.chain]
