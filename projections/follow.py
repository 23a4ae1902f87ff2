"""Following the log: run a catch-up whenever something may have been appended.

:class:`Follower` does it in threads of the calling process. (The server keeps its projections
in a child process of their own: :class:`reledger.processes.projections.ProjectionProcess`,
which runs a Follower there.)
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from reledger.storage.store import LedgerStore

from .store import ProjectionStore

log = logging.getLogger(__name__)


class Follower:
    """Calls ``catch_up`` whenever the log may have grown, whoever appends (another server, the
    CLI): woken by LISTEN/NOTIFY (the channel eventsourcing's recorder notifies) on
    PostgreSQL, by polling on SQLite (whose recorder cannot subscribe). One listener thread, one
    worker thread; ``stop`` ends both.

    ``min_interval`` spaces catch-ups at least that many seconds apart (one catch-up then covers
    every commit of the interval: under a stream of small commits the tables fall at most that
    far behind, at a fraction of the cost); :meth:`request` asks for a catch-up at once.
    """

    def __init__(self, store: LedgerStore, catch_up: Callable[[], Any], poll: float = 0.5,
                 min_interval: float = 0.0):
        self.store, self.catch_up, self.poll = store, catch_up, poll
        self.min_interval = min_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listening = False

    def start(self) -> None:
        if self.store.db.backend == "postgres":
            self._listening = True
            self._threads.append(threading.Thread(target=self._listen, name="reledger-listen", daemon=True))
        self._threads.append(threading.Thread(target=self._run, name="reledger-follow", daemon=True))
        for t in self._threads:
            t.start()

    def request(self) -> None:
        """Catch up as soon as the current catch-up (if any) is done."""
        self._requested.set()
        self._wake.set()

    def _listen(self) -> None:
        """LISTEN on the channel every append transaction NOTIFYs (the events table's, as
        eventsourcing names it), on a connection of its own: a notification only wakes the
        catch-up, which reads the log itself. (eventsourcing's own subscription would also read
        every new event row for each notification.) A lost connection is opened again."""
        import psycopg
        from psycopg.sql import SQL, Identifier

        channel = self.store.recorder.notify_channel
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.store.db.conninfo(), autocommit=True) as conn:
                    conn.execute(SQL("LISTEN {0}").format(Identifier(channel)))
                    self._wake.set()  # whatever was committed before LISTEN took effect
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake.set()
            except Exception:  # noqa: BLE001 - the database went away: wake, wait, listen again
                self._wake.set()
                self._stop.wait(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            # cleared before the catch-up: a wake-up or a request during it means another round
            self._wake.clear()
            self._requested.clear()
            try:
                self.catch_up()
            except Exception:  # noqa: BLE001 - retried on the next wake-up; queries catch up themselves
                log.exception("projections could not catch up")
            if self.min_interval > 0:
                self._requested.wait(self.min_interval)  # a request (or stop) cuts it short
            self._wake.wait(5.0 if self._listening else self.poll)

    def stop(self) -> None:
        self._stop.set()
        self._requested.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)

    def run_until(self, stop: threading.Event) -> None:
        """Follow in the calling thread's stead until ``stop`` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()


class ProjectionsUnavailable(RuntimeError):
    """The projections could not be brought up to date (the database refused, or no answer)."""


def follow(projections: ProjectionStore, stop: threading.Event, poll: float = 0.2, on_findings=None) -> None:
    """Keep ``projections`` up with the log until ``stop`` is set (LISTEN/NOTIFY on PostgreSQL,
    polling on SQLite), in the calling thread."""
    store = LedgerStore(projections.url, create=False)
    try:
        projections.catch_up(on_findings=on_findings)
        Follower(store, lambda: projections.catch_up(on_findings=on_findings), poll=poll).run_until(stop)
    finally:
        store.close()
