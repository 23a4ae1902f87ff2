"""Following the log: run a catch-up whenever something may have been appended."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ledger.store import LedgerStore

log = logging.getLogger(__name__)


class Follower:
    """Calls ``catch_up`` whenever the log may have grown, whoever appends (another server, the
    CLI): woken by eventsourcing's subscription (LISTEN/NOTIFY on the events table) on
    PostgreSQL, by polling on SQLite (whose recorder cannot subscribe). One listener thread, one
    worker thread; ``stop`` ends both.

    ``min_interval`` spaces catch-ups at least that many seconds apart (one catch-up then covers
    every commit of the interval: under a stream of small commits the tables fall at most that
    far behind, at a fraction of the cost; a reader that needs them current catches up itself).
    """

    def __init__(self, store: LedgerStore, catch_up: Callable[[], Any], poll: float = 0.5,
                 min_interval: float = 0.0):
        self.store, self.catch_up, self.poll = store, catch_up, poll
        self.min_interval = min_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscription = None

    def start(self) -> None:
        if self.store.db.backend == "postgres":
            self._subscription = self.store.recorder.subscribe(gt=self.store.recorder.max_notification_id())
            self._threads.append(threading.Thread(target=self._listen, name="reledger-listen", daemon=True))
        self._threads.append(threading.Thread(target=self._run, name="reledger-follow", daemon=True))
        for t in self._threads:
            t.start()

    def _listen(self) -> None:
        try:
            for _ in self._subscription:
                self._wake.set()
                if self._stop.is_set():
                    return
        except Exception:  # noqa: BLE001 - the subscription ended (stop, or the database went away)
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the catch-up: a wake-up during it means another round
            try:
                self.catch_up()
            except Exception:  # noqa: BLE001 - retried on the next wake-up; queries catch up themselves
                log.exception("projections could not catch up")
            if self.min_interval > 0 and self._stop.wait(self.min_interval):
                return
            self._wake.wait(self.poll if self._subscription is None else 5.0)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._subscription is not None:
            self._subscription.stop()
        for t in self._threads:
            t.join(timeout=5)

    def run_until(self, stop: threading.Event) -> None:
        """Follow in the calling thread's stead until ``stop`` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
