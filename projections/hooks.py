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

import gc
import logging
import threading
import time
from typing import Any

from reledger.ledger.entry import SignedEntry
from reledger.storage.reader import LogReader

from .model import Finding
from .model import Projector
from .store import ProjectionStore, apply_record, record_micros

log = logging.getLogger(__name__)


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
        record time, chain, seq, entry hash, signed entry or envelope), in log order; one catch-up
        at most."""
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


class MirrorFindings:
    """The findings hook of the process that commits the entries (the server's writer
    process): the rule state of the whole log in this process's memory, into which each
    commit's new entries are folded as they are given (parsed and checked already), so that
    the append's answer carries its findings without asking the projections.

    The state is the projection tables' own fold (:class:`reledger.projections.model.Projector`, a pure
    function of the log), folded from the start of the log in this process's memory (it grows
    with the log: ``reledger serve`` does not use a mirror, see processes/committer.py), so each
    entry raises exactly the findings the tables record for it. Entries
    another writer appended in between are read from the log and folded first.

    :meth:`start` builds the state in a background thread (a long log takes a while). Until it
    is built, for an entry it had folded already, and after a failure (the state is dropped and
    built again, at most every ``retry`` seconds), :meth:`findings_of` answers ``None``: the
    caller asks the projections instead (:meth:`reledger.commands.api.CommandAPI.add_findings` leaves
    the question for them).
    """

    def __init__(self, url: str, *, retry: float = 30.0):
        self.url, self.retry = url, retry
        self._lock = threading.Lock()
        self._mirror = None  # the Projector, owned by findings_of
        self._built = None  # a Projector the builder finished, for findings_of to take
        self._builder: threading.Thread | None = None
        self._failed_at: float | None = None
        self._reader = None  # for entries between commits (another writer's), opened when needed
        self._closed = False

    def start(self) -> None:
        """Build the state in a background thread."""
        with self._lock:
            self._start_build()

    def _start_build(self) -> None:
        if self._closed or (self._builder is not None and self._builder.is_alive()):
            return
        self._builder = threading.Thread(target=self._build, name="reledger-findings-mirror", daemon=True)
        self._builder.start()

    def _build(self) -> None:
        try:
            with LogReader(self.url) as reader:
                proj = Projector()  # the whole rule state in memory: this mirror's price
                for rec in reader.iter_records(proj.position):  # to the log's end when it starts
                    apply_record(proj, rec)
            # the state lives as long as the process: out of the cyclic GC's full passes
            gc.collect()
            gc.freeze()
        except Exception:  # noqa: BLE001 - the answers go without; built again later
            log.exception("the findings mirror could not be built: the projections answer instead")
            with self._lock:
                self._failed_at = time.monotonic()
            return
        with self._lock:
            self._built = proj

    def ready(self) -> bool:
        """Whether the state is built (findings_of answers)."""
        with self._lock:
            return self._mirror is not None or self._built is not None

    def findings_of(self, entries: list[tuple]) -> dict[int, list[dict[str, Any]]] | None:
        """The findings of entries just committed, given as (log index, record time, chain,
        seq, entry hash, signed entry or its envelope) in log order: log index -> the findings
        that concern the entry's own party (as ProjectionFindings); ``None`` when this mirror
        cannot say (not built yet, or it had folded one of them already)."""
        with self._lock:
            if self._mirror is None:
                self._mirror, self._built = self._built, None
            proj = self._mirror
            if proj is None:
                if self._failed_at is None or time.monotonic() - self._failed_at >= self.retry:
                    self._start_build()
                return None
            found: dict[int, list[dict[str, Any]]] = {}
            complete = True
            try:
                for index, recorded_at, chain, _seq, _hash, signed in entries:
                    if index < proj.position:  # folded while the state was built: its findings are gone
                        complete = False
                        continue
                    if index > proj.position:  # another writer's entries first (their findings are not asked)
                        if self._reader is None:
                            self._reader = LogReader(self.url)
                        for rec in self._reader.iter_records(proj.position, index):
                            apply_record(proj, rec)
                    if isinstance(signed, (bytes, bytearray)):
                        signed = SignedEntry.parse(bytes(signed))
                    mine = [f.to_dict() for f in proj.apply(index, record_micros(recorded_at), signed).findings
                            if f.index == index and f.party == chain]
                    if mine:
                        found[index] = mine
            except Exception:  # noqa: BLE001 - a half-folded entry: never reuse that state
                log.exception("the findings mirror failed at log index %s: built again from the log",
                              proj.position)
                self._mirror = None
                self._failed_at = time.monotonic()
                self._close_reader()
                return None
            return found if complete else None

    def _close_reader(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001
                pass
            self._reader = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            builder = self._builder
            self._close_reader()
        if builder is not None:
            builder.join(timeout=5)
