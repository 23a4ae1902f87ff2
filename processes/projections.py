"""The projections process: the server's projection tables, kept by a child process of their own.

The projections then cost the server's interpreter nothing but a few messages, and use another
core; the child also answers, for the command API's findings hook, which findings each new entry
raised. If the child dies, the parent takes over in threads (a Follower and a ProjectionFindings
of its own) and says so in the log.

Messages (frames of :mod:`reledger.processes.frames`, one msgpack array each):

    parent -> child  ["catch_up", rid]            bring the tables up to date, then answer rid
                     ["findings", rid]            the findings of every entry in the log so far
                     ["fold", rid, [[index, recorded_at, chain, seq, entry_hash, envelope], ...]]
                                                  entries the parent committed, and a findings
                                                  request about them
                     ["stop"]                     end (closing the pipe ends it too)
    child -> parent  ["done", [rid, ...], position, {index: [finding dict, ...]}]
                                                  position: the mirror's (or -1, from the tables)
                     ["failed", [rid, ...], -1, "ErrorType: message"]
"""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

from reledger.projections.follow import Follower, ProjectionsUnavailable
from reledger.projections.hooks import ProjectionFindings
from reledger.projections.store import ProjectionStore, apply_record, record_micros
from reledger.storage.reader import LogReader, Record
from reledger.storage.store import LedgerStore

from .frames import Channel, FrameError, pipe
from .start import context, main_importable

log = logging.getLogger(__name__)

FED_MAX = 100_000  # entries the parent fed that the projections process keeps until it folds them
TABLE_SLICE = 256  # entries per transaction of the projections process's table catch-ups
# seconds a thread of the projections process may keep the interpreter lock from another
# (Python's default is 5 ms): at 16 clients, one entry a request, 2,070-2,170 entries/s
# against 1,980-2,110 with the default (paired runs, docs/OPERATIONS.md)
SWITCH_INTERVAL = 0.0005


class ProjectionProcess:
    """The projection tables of the ledger at ``url``, kept by a child process, and a findings
    hook (``hook(signed_entry, receipt) -> [finding dicts]``, as
    :class:`reledger.projections.hooks.ProjectionFindings`) answered from what it projects.

    The child follows the log as :class:`Follower` does (at most every ``min_interval`` seconds)
    and catches up at once when asked; after every catch-up it sends back the findings of the
    entries it projected. :meth:`catch_up` asks and waits (the tables then hold every entry
    appended before the call); the hook asks when the entry is past what came back, and waits.
    It is the only writer of the tables while it runs: in this process, read them, never catch
    them up. If the child dies, this process takes over in threads (a Follower and a
    ProjectionFindings of its own) and says so in the log.
    """

    def __init__(self, url: str, *, poll: float = 0.5, min_interval: float = 0.0, keep: int = 100_000,
                 timeout: float = 300.0):
        self.url, self.poll, self.min_interval = url, poll, min_interval
        self.keep, self.timeout = keep, timeout
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._by_index: dict[int, list[dict[str, Any]]] = {}
        self._upto = -1  # the child's position after its last catch-up that came back
        self._answers: dict[int, str | None] = {}  # request id -> None (done) or the error
        self._ids = itertools.count(1)
        self._proc = None
        self._conn = None
        self._receiver: threading.Thread | None = None
        self._dead = False
        self._local = None  # (Follower, ProjectionFindings, ProjectionStore, LedgerStore) after a death
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if not main_importable():  # a spawned child could not start: threads of this process
            self._dead = True
            self._fallback()
            return
        ctx = context()
        self._conn, child = pipe(ctx)
        with LogReader(self.url) as reader:  # the entries this process asks about come after it
            since = reader.queries.size(reader.cursor())[0]
        self._proc = ctx.Process(target=serve_projections,
                                 args=(self.url, child, self.poll, self.min_interval, since),
                                 name="reledger-projections", daemon=True)
        self._proc.start()
        child.close()
        self._receiver = threading.Thread(target=self._receive, name="reledger-projections-answers", daemon=True)
        self._receiver.start()

    def stop(self) -> None:
        self._stopping = True
        if self._proc is not None:
            try:
                self._send(("stop",))
            except (OSError, ValueError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        if self._receiver is not None:
            self._receiver.join(timeout=5)
        if self._local is not None:
            follower, _, ps, store = self._local
            follower.stop()
            ps.close()
            store.close()

    # --- messages -------------------------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _receive(self) -> None:
        while True:
            try:
                kind, ids, position, payload = self._conn.recv()
            except (EOFError, OSError, FrameError, ValueError):
                break
            with self._cond:
                if kind == "done":
                    for index, fs in payload.items():
                        self._by_index.setdefault(index, []).extend(fs)
                    if len(self._by_index) > self.keep:
                        for k in sorted(self._by_index)[: len(self._by_index) - self.keep]:
                            del self._by_index[k]
                self._upto = max(self._upto, position)
                for i in ids:
                    self._answers[i] = None if kind == "done" else payload
                self._cond.notify_all()
        with self._cond:
            self._dead = True
            self._cond.notify_all()
        if not self._stopping:
            log.error("the projections process ended (exit code %s): projecting in this process instead",
                      None if self._proc is None else self._proc.exitcode)

    def _ask(self, kind: str = "catch_up") -> int:
        """Send a request (holding ``_cond``): "catch_up" (the tables, and the findings of what
        they project) or "findings" (the findings of every entry in the log); its id."""
        rid = next(self._ids)
        self._answers.pop(rid, None)
        try:
            self._send((kind, rid))
        except (OSError, ValueError):  # the child is gone: the receiver says so
            pass
        return rid

    def _wait(self, done: Callable[[], bool]) -> bool:
        """Wait (holding ``_cond``) until ``done()`` or the child's death; False on time-out."""
        deadline = time.monotonic() + self.timeout
        while not done() and not self._dead:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, 1.0))
            if self._proc is not None and not self._proc.is_alive() and not done():
                self._cond.wait(0.5)  # its last answers may still be in the pipe
                if not done():
                    self._dead = True
        return True

    def _fallback(self):
        """After the child's death: the projections in threads of this process."""
        if self._local is None:
            store = LedgerStore(self.url, create=False)
            ps = ProjectionStore(self.url)
            hook = ProjectionFindings(ps)
            follower = Follower(store, hook.catch_up, self.poll, self.min_interval)
            follower.start()
            self._local = (follower, hook, ps, store)
        return self._local[1]

    # --- the interface ------------------------------------------------------------------
    def catch_up(self) -> None:
        """Bring the tables up to date (every entry appended before this call), by the child."""
        with self._cond:
            if self._proc is not None and not self._dead:
                rid = self._ask()
                if not self._wait(lambda: rid in self._answers):
                    raise ProjectionsUnavailable(f"the projections did not catch up within {self.timeout:g} s")
                if not self._dead or rid in self._answers:
                    error = self._answers.pop(rid, None)
                    if error is not None:
                        raise ProjectionsUnavailable(f"the projections could not catch up: {error}")
                    return
        self._fallback().catch_up()

    def findings_of(self, entries: list[tuple]) -> dict[int, list[dict[str, Any]]]:
        """The findings of entries just committed, given as (log index, record time, chain, seq,
        entry hash, signed entry or its envelope) in log order: log index -> the findings that
        concern the entry's own party (see ProjectionFindings). One message to the child, with
        the entries (its findings mirror folds them without reading them back; it reads the log
        for anything between, appended by another writer), and one answer for all of them."""
        if not entries:
            return {}
        entries = [e if isinstance(e[5], bytes) else (*e[:5], e[5].envelope) for e in entries]
        last = entries[-1][0]
        with self._cond:
            if self._proc is not None and not self._dead:
                if last >= self._upto:
                    rid = next(self._ids)
                    self._answers.pop(rid, None)
                    try:
                        self._send(("fold", rid, entries))
                    except (OSError, ValueError):  # the child is gone: the receiver says so
                        pass
                    covered = self._wait(lambda: last < self._upto or rid in self._answers)
                    self._answers.pop(rid, None)
                    if not covered:
                        log.warning("no findings for log indexes %s-%s: the projections did not answer within %g s",
                                    entries[0][0], last, self.timeout)
                if last < self._upto or not self._dead:
                    return {e[0]: [f for f in self._by_index.pop(e[0], []) if f["party"] == e[2]] for e in entries}
        return self._fallback().findings_of(entries)

    def __call__(self, signed, receipt) -> list[dict[str, Any]]:
        with self._cond:
            if self._proc is not None and not self._dead:
                if receipt.index >= self._upto:
                    rid = self._ask("findings")
                    covered = self._wait(lambda: receipt.index < self._upto or rid in self._answers)
                    self._answers.pop(rid, None)
                    if not covered:
                        log.warning("no findings for log index %s: the projections did not answer within %g s",
                                    receipt.index, self.timeout)
                if receipt.index < self._upto or not self._dead:
                    found = self._by_index.pop(receipt.index, [])
                    # only what concerns the submitter (see ProjectionFindings)
                    return [f for f in found if f["party"] == receipt.chain]
        return self._fallback()(signed, receipt)


def fed_record(index: int, recorded_at: str, chain: str, seq: int, entry_hash: bytes, envelope: bytes):
    """A log record from what the parent fed: what ``apply_record`` reads of it (index, record time,
    chain, seq, entry hash, envelope); type and Merkle nodes are not needed to fold."""
    return Record(index, chain, seq, "", entry_hash, record_micros(recorded_at), b"", envelope)


class FedEntries:
    """The entries the parent process fed the projections process (it committed them), by log
    index, until the findings mirror folds them. Thread-safe. At most ``limit`` are kept: past
    that the oldest are forgotten (the log has them)."""

    def __init__(self, limit: int = FED_MAX):
        self.limit = limit
        self._items: dict[int, tuple] = {}  # index -> (index, record time, chain, seq, entry hash, envelope)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: list[tuple]) -> None:
        with self._lock:
            for item in items:
                self._items[item[0]] = item
            if len(self._items) > self.limit:
                for k in sorted(self._items)[:len(self._items) - self.limit]:
                    del self._items[k]

    def forget_before(self, position: int) -> None:
        """Drop what lies before ``position`` (folded already, by the mirror or the tables)."""
        with self._lock:
            for k in [k for k in self._items if k < position]:
                del self._items[k]

    def records(self, position: int, read: Callable[..., Iterator]) -> Iterator:
        """The log's records from ``position``: those fed, and whatever lies before or between
        them read from the log with ``read(start[, stop])`` (another writer's entries). With
        entries fed, the log is not asked for its end: the parent asks about what it fed."""
        self.forget_before(position)
        with self._lock:
            mine = sorted(self._items)
        if not mine:
            yield from read(position)
            return
        if mine[0] > position:  # another writer's entries first
            yield from read(position, mine[0])
            position = mine[0]
        for k in mine:
            if k != position:  # a hole in what was fed: the log decides from here
                yield from read(position)
                return
            with self._lock:
                item = self._items.pop(k, None)
            if item is None:  # forgotten meanwhile (over the limit): the log has it
                yield from read(position)
                return
            yield fed_record(*item)
            position += 1


def serve_projections(url: str, conn, poll: float, min_interval: float, since: int = 0) -> None:
    """The child: follow the log into the projection tables (at most every ``min_interval``
    seconds, at once for a "catch_up" request); answer "findings" requests by a catch-up of
    the tables, which collects the findings of the entries it projects; send back every answer.
    Ends on "stop" or when the parent goes away.

    No copy of the rule state is kept in memory (earlier versions kept a "mirror" of it, which
    grew with the log): the state is the tables' rows (projections/state.py), read through the
    store's bounded cache. The ``mirror`` slot below stays empty, so every "findings" request
    is answered by the follower's catch-up."""
    conn = Channel(conn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C is the parent's: it stops us
    logging.basicConfig(level=logging.WARNING)
    # the findings thread answers the server within a millisecond or so; by default it could
    # wait up to 5 ms for the interpreter lock while the follower's catch-up folds a page
    sys.setswitchinterval(SWITCH_INTERVAL)
    ps = ProjectionStore(url)
    store = LedgerStore(url, create=False)
    reader = LogReader(url)
    stop = threading.Event()
    send_lock = threading.Lock()
    tables_asks: list[tuple[str, int]] = []  # for the follower thread (the tables)
    findings_asks: list[int] = []  # for the findings thread (the mirror)
    lock = threading.Condition()
    state: dict[str, Any] = {"mirror": None, "tables_at": 0.0}
    fed = FedEntries()  # the entries the parent committed, until the mirror folds them

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    def collected(findings, found: dict) -> None:
        for f in findings:
            if f.index >= since:  # the parent asks about entries from ``since`` on
                found.setdefault(f.index, []).append(f.to_dict())

    def tables_round() -> None:
        """The follower's round: the tables, and the findings of what the catch-up projects
        (there is no mirror: see serve_projections)."""
        with lock:
            asks = tables_asks[:]
            del tables_asks[:]
        ids = [rid for _, rid in asks]
        if state["mirror"] is None:
            found: dict[int, list[dict[str, Any]]] = {}
            try:
                ps.catch_up(on_findings=lambda fs: collected(fs, found))
            except Exception as e:  # noqa: BLE001 - the waiters learn it; the follower retries
                send(("failed", ids, -1, f"{type(e).__name__}: {e}"))
                raise
            state["tables_at"] = time.monotonic()
            proj = ps.projector
            # no mirror: the rule state lives in the tables' rows (projections/state.py), and a
            # copy in memory would grow with the log; each catch-up collects the findings
            with lock:
                fed.forget_before(ps.position())  # folded by the tables already
            send(("done", ids, -1 if proj is None else proj.position, found))
            return
        late = [rid for kind, rid in asks if kind == "findings"]  # routed here before the mirror was made
        if late:
            with lock:
                findings_asks.extend(late)
                lock.notify_all()
        ids = [rid for kind, rid in asks if kind == "catch_up"]
        if ids or time.monotonic() - state["tables_at"] >= min_interval:
            try:
                # in slices, each its own short transaction: on SQLite the ledger's appends
                # wait for the database's one write lock while a slice holds it
                while ps.catch_up(limit=TABLE_SLICE) >= TABLE_SLICE:
                    pass
            except Exception as e:  # noqa: BLE001
                send(("failed", ids, -1, f"{type(e).__name__}: {e}"))
                raise
            state["tables_at"] = time.monotonic()
            send(("done", ids, -1, {}))  # findings come from the mirror

    def findings_loop() -> None:
        """Answer "findings" from the mirror: fold the log's new entries, send their findings."""
        while not stop.is_set():
            with lock:
                while not findings_asks and not stop.is_set():
                    lock.wait(1.0)
                ids = findings_asks[:]
                del findings_asks[:]
                mirror = state["mirror"]
                if mirror is None:  # the follower answers until there is a mirror
                    tables_asks.extend(("findings", rid) for rid in ids)
                    follower.request()
                    continue
            found: dict[int, list[dict[str, Any]]] = {}
            try:
                for rec in fed.records(mirror.position, reader.iter_records):
                    collected(apply_record(mirror, rec).findings, found)
            except Exception as e:  # noqa: BLE001 - a half-applied entry: never reuse that state
                log.exception("the findings mirror failed: the tables' catch-ups collect them again")
                with lock:
                    state["mirror"] = None
                send(("failed", ids, -1, f"{type(e).__name__}: {e}"))
                continue
            send(("done", ids, mirror.position, found))

    # the follower wakes on every commit (and on requests); tables_round spaces the catch-ups
    follower = Follower(store, tables_round, poll)

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError, FrameError):
                break
            if msg[0] == "fold":  # entries the parent committed, and a findings request about them
                fed.add(msg[2])
                with lock:
                    findings_asks.append(msg[1])
                    lock.notify_all()
            elif msg[0] == "findings":
                with lock:
                    findings_asks.append(msg[1])
                    lock.notify_all()
            elif msg[0] == "catch_up":
                with lock:
                    tables_asks.append(("catch_up", msg[1]))
                follower.request()
            else:
                break
        stop.set()
        with lock:
            lock.notify_all()

    threading.Thread(target=read, name="reledger-projections-requests", daemon=True).start()
    threading.Thread(target=findings_loop, name="reledger-projections-findings", daemon=True).start()
    try:
        follower.run_until(stop)
    finally:
        ps.close()
        store.close()
        reader.close()
        conn.close()
