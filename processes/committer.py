"""Group commit for the HTTP server: concurrent appends committed together, in threads of the
server's process (:class:`GroupCommitter`) or in a writer process of their own
(:class:`WriterProcess`, what ``reledger serve`` runs).

Both take one all-or-nothing group of envelopes at a time from the event loop (``submit``,
which answers an asyncio future: the group's receipts, or its :class:`CommandError`) and both
apply the same admission limits. Why a process: the event loop (HTTP parsing, answers) and the
writer (psycopg, the checks) would otherwise share one interpreter lock, and a thread that
waits on the database gets the lock back only when the event loop lets go of it. Measured at
16 clients sending one entry a request: a commit of eight entries took 4.3 ms inside the
server against 1.6 ms alone (docs/OPERATIONS.md, "Serving one entry a request").
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import queue
import signal
import threading
from collections import deque
from dataclasses import replace
from typing import Any, Callable

from reledger.commands.api import (MAX_QUEUED_BYTES, MAX_QUEUED_ENTRIES, Answer, CommandAPI, CommandError,
                                   CommandReceipt, Overloaded, WriterFailed, transient_errors, verify_pool)
from reledger.projections.hooks import MirrorFindings
from reledger.storage.store import LedgerStore

from .frames import Channel, FrameError, pipe
from .start import context, exit_with_parent, main_importable

log = logging.getLogger(__name__)

PREPARE_CHUNK = 32  # entries: fewer are prepared in the preparer's own thread
# entries waiting behind a batch from which the writer process checks them during its commit
PIPELINE_ENTRIES = 2 * PREPARE_CHUNK
WRITER_START_TIMEOUT = 300.0  # seconds for a writer process to read its write state (rows, and the log's tail)


def _verify_workers() -> int:
    return os.cpu_count() or 2


def _drain(q: queue.SimpleQueue, first) -> tuple[list, bool]:
    """``first`` and everything waiting behind it; True when the end mark (None) was met."""
    items = [first]
    while True:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            return items, False
        if nxt is None:
            return items, True
        items.append(nxt)


class _Admission:
    """What the event loop calls: ``submit`` (admission, one future per group, then
    ``_enqueue``) and ``_answer`` (run on the loop: resolves futures, releases their counts).

    **Admission**: ``submit`` refuses a group (:class:`Overloaded`, nothing queued, nothing
    written) when the entries or bytes waiting for their answer would pass ``max_queued_entries``
    or ``max_queued_bytes``, so that a flood of appends meets a fast "retry later" instead of
    ever longer waits and unbounded memory. A group is always taken when nothing waits, however
    large. The counts live on the event loop's thread (``submit`` adds, ``_answer`` removes).
    """

    def __init__(self, max_queued_entries: int = MAX_QUEUED_ENTRIES, max_queued_bytes: int = MAX_QUEUED_BYTES):
        self.max_queued_entries, self.max_queued_bytes = max_queued_entries, max_queued_bytes
        self.queued_entries = self.queued_bytes = 0
        self._queued: dict[asyncio.Future, tuple[int, int]] = {}

    def submit(self, group: list) -> asyncio.Future:
        n, size = len(group), sum(map(len, group))
        if self.queued_entries and (self.queued_entries + n > self.max_queued_entries
                                    or self.queued_bytes + size > self.max_queued_bytes):
            raise Overloaded(f"the server is busy: {self.queued_entries} entries are waiting to be committed; "
                             "nothing was written: retry the same request")
        loop = asyncio.get_running_loop()
        f = loop.create_future()
        self._queued[f] = (n, size)
        self.queued_entries += n
        self.queued_bytes += size
        self._enqueue((group, loop, f))
        return f

    def _enqueue(self, item: tuple) -> None:
        raise NotImplementedError

    def _answer(self, answers: list) -> None:
        for f, ok, value in answers:
            n, size = self._queued.pop(f, (0, 0))
            self.queued_entries -= n
            self.queued_bytes -= size
            if f.done():  # the request went away (client disconnected): nobody to tell
                continue
            if ok:
                f.set_result(value)
            else:
                f.set_exception(value)

    def _deliver_to_loops(self, answers: list) -> None:
        """``answers`` as (loop, future, ok, value): one call into each event loop (one
        wake-up, not one per request)."""
        by_loop: dict[Any, list] = {}
        for loop, f, ok, value in answers:
            by_loop.setdefault(loop, []).append((f, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._answer, items)
            except RuntimeError:  # the loop is closed (shutdown): nobody waits any more
                pass


def prepare_groups(api: CommandAPI, groups: list[list], chunk: int = PREPARE_CHUNK) -> list[list]:
    """``api.prepare`` of every group; many entries are shared out over the verification pool
    (signatures are checked without the GIL: every core takes a part)."""
    if sum(map(len, groups)) < 2 * chunk:
        done = api.prepare([x for g in groups for x in g])
        return _regroup(groups, done)
    return start_prepare(api, groups, chunk)()


def start_prepare(api: CommandAPI, groups: list[list], chunk: int = PREPARE_CHUNK) -> Callable[[], list[list]]:
    """:func:`prepare_groups` started in the verification pool and left to run: the function
    returned waits for it and gives the prepared groups (the writer process commits one batch
    while the next is checked so)."""
    flat = [x for g in groups for x in g]
    step = max(chunk, -(-len(flat) // (2 * _verify_workers())))
    pool = verify_pool()
    parts = [pool.submit(api.prepare, flat[i:i + step]) for i in range(0, len(flat), step)]
    return lambda: _regroup(groups, [x for part in parts for x in part.result()])


def _regroup(groups: list[list], done: list) -> list[list]:
    out, k = [], 0
    for g in groups:
        out.append(done[k:k + len(g)])
        k += len(g)
    return out


class GroupCommitter(_Admission):
    """Group commit in a two-thread pipeline fed by the event loop.

    * the **preparer** takes every request waiting, parses its envelopes and checks their
      signatures (:meth:`CommandAPI.prepare`: Ed25519 releases the GIL, so this runs on another
      core while the writer waits for the database), and passes them on together;
    * the **writer** takes every prepared request waiting (up to ``max_groups`` groups and
      ``max_entries`` entries) and commits them in one transaction
      (:meth:`CommandAPI.submit_groups`: every check, each group accepted or refused whole);
    * the **answerer** asks the findings hook about the new entries of every commit waiting
      (:meth:`CommandAPI.add_findings`: one projection catch-up for all of them) while the
      writer goes on with the next commit, then delivers the answers.

    ``close`` commits and answers what was submitted before it, then stops the threads.
    """

    def __init__(self, api: CommandAPI, max_groups: int = 256, max_entries: int = 5000,
                 max_queued_entries: int = MAX_QUEUED_ENTRIES, max_queued_bytes: int = MAX_QUEUED_BYTES,
                 ):
        super().__init__(max_queued_entries, max_queued_bytes)
        self.api = api
        self.max_groups, self.max_entries = max_groups, max_entries
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._prepare, name="reledger-prepare", daemon=True),
                        threading.Thread(target=self._write, name="reledger-group-commit", daemon=True),
                        threading.Thread(target=self._answer_all, name="reledger-answer", daemon=True)]
        for t in self.threads:
            t.start()

    def _enqueue(self, item: tuple) -> None:
        self.inbox.put(item)

    def close(self) -> None:
        self.inbox.put(None)
        for t in self.threads:
            t.join(timeout=10)

    def _prepare(self) -> None:
        while True:
            first = self.inbox.get()
            if first is None:
                self.ready.put(None)
                return
            items, stop = _drain(self.inbox, first)
            try:
                prepared = self._prepared([group for group, _, _ in items])
            except Exception:  # noqa: BLE001 - only a cache: the writer checks everything anyway
                log.exception("preparing requests failed")
                prepared = [group for group, _, _ in items]
            self.ready.put([(group, loop, f) for group, (_, loop, f) in zip(prepared, items)])
            if stop:
                self.ready.put(None)
                return

    def _prepared(self, groups: list[list]) -> list[list]:
        return prepare_groups(self.api, groups)

    def _write(self) -> None:
        pending: deque = deque()
        stop = False
        while True:
            if not pending:
                if stop:
                    self.done.put(None)
                    return
                first = self.ready.get()
                if first is None:
                    self.done.put(None)
                    return
                parts, stop = _drain(self.ready, first)
                for part in parts:
                    pending.extend(part)
            else:
                try:
                    while not stop:
                        nxt = self.ready.get_nowait()
                        if nxt is None:
                            stop = True
                        else:
                            pending.extend(nxt)
                except queue.Empty:
                    pass
            batch = [pending.popleft()]
            n = len(batch[0][0])
            while pending and len(batch) < self.max_groups and n + len(pending[0][0]) <= self.max_entries:
                batch.append(pending.popleft())
                n += len(batch[-1][0])
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        try:
            results = self.api.submit_groups([g for g, _, _ in batch], defer_findings=True)
        except Exception as e:  # noqa: BLE001 - the transaction failed: every waiter learns it
            results = e
        self.done.put((batch, results))

    def _answer_all(self) -> None:
        while True:
            first = self.done.get()
            if first is None:
                return
            commits, stop = _drain(self.done, first)
            answers = []
            for batch, results in commits:
                if isinstance(results, Exception):
                    answers += [(loop, f, False, results) for _, loop, f in batch]
                    continue
                try:
                    self.api.add_findings(results)
                except Exception:  # noqa: BLE001 - (the hook's own errors are caught there)
                    log.exception("findings could not be added")
                answers += [(loop, f, not isinstance(r, Exception), r) for (_, loop, f), r in zip(batch, results)]
            self._deliver_to_loops(answers)
            if stop:
                return


# --- the writer process ------------------------------------------------------------------------
#
# Messages (frames of reledger.processes.frames, one msgpack value each) on a duplex pipe:
#   parent -> child  [[rid, [envelope, ...]], ...]     groups to commit, in order
#                    None                               stop: commit and answer what came, then exit
#   child -> parent  "ready"                            the write state is built: send groups
#                    [[rid, 0, [[index, chain, seq, entry_hash, recorded_at, duplicate, findings], ...]], ...]
#                                                       findings: a list of finding dicts, or None where the
#                                                       child could not say (the parent asks its projections)
#                    [[rid, 1, {CommandError.to_dict()}]]       the group was refused
#                    [[rid, 2, [type name, message, transient]]] the transaction failed

_RECEIPTS, _REFUSED, _FAILED = 0, 1, 2


def _encode_answer(rid: int, ok: bool, value: Any, transient: tuple, findings_known: bool = False) -> list:
    if ok:
        return [rid, _RECEIPTS, [[r.index, r.chain, r.seq, r.entry_hash, r.recorded_at, r.duplicate,
                                  list(r.findings) if findings_known or r.duplicate else None] for r in value]]
    if isinstance(value, CommandError):
        return [rid, _REFUSED, value.to_dict()]
    return [rid, _FAILED, [type(value).__name__, str(value), isinstance(value, transient)]]


def _decode_answer(kind: int, payload: Any) -> tuple[bool, Any]:
    """(ok, receipts | error); a receipt whose findings the writer could not say has
    ``findings`` None (a CommandReceipt's is otherwise a tuple)."""
    if kind == _RECEIPTS:
        return True, [CommandReceipt(*r[:6], None if r[6] is None else tuple(r[6])) for r in payload]
    if kind == _REFUSED:
        d = dict(payload)
        d.pop("status", None)
        return False, CommandError.make(d.pop("code"), d.pop("message"), **d)
    name, message, transient = payload
    if transient:
        return False, WriterFailed(name, f"the database is unavailable or busy ({name}): retry the same request",
                                   True)
    return False, WriterFailed(name, f"internal error: {name}", False)


def serve_writer(url: str, conn, parent: int, findings: bool = False) -> None:
    """The writer process: its own store and command API, fed groups by the parent, answering
    a frame per commit. With ``findings``, the API's findings hook is a
    :class:`reledger.projections.hooks.MirrorFindings` (the rule state in this process: each answer
    carries the findings of what it committed, without a round trip to the projections; the
    parent asks its projections about the rest). Ends on the stop frame (after committing and
    answering what came before it) or when the parent goes away."""
    conn = Channel(conn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C is the parent's: it stops us
    logging.basicConfig(level=logging.WARNING)
    exit_with_parent(parent)
    # signatures are checked here before the store sees them (prepare_groups, over threads);
    # a daemon process may not start the store's checking processes anyway
    store = LedgerStore(url, create=False, processes=False)
    mirror = None
    try:
        if findings:
            mirror = MirrorFindings(url)
        api = CommandAPI(store, findings_hook=mirror)
        try:
            api.catch_up()
        except Exception:  # noqa: BLE001 - the first append tries again (and answers 503 if it must)
            log.exception("the write state could not be built at startup")
        gc.collect()  # the write state lives as long as the process: out of the cyclic GC's full passes
        gc.freeze()
        if mirror is not None:
            mirror.start()  # in the background: until it is built, the parent asks its projections
        conn.send("ready")
        commit_loop(api, conn)
        api.close()  # its rows written up to what it committed (else the next start parses that tail)
    finally:
        conn.close()
        if mirror is not None:
            mirror.close()
        store.close()


def commit_loop(api: CommandAPI, conn: Channel, max_groups: int = 256, max_entries: int = 5000) -> None:
    """Take every group waiting (up to ``max_groups`` groups, ``max_entries`` entries), check
    its signatures (:func:`prepare_groups`), commit them in one transaction
    (:meth:`CommandAPI.submit_groups`) and send their answers; again, until the stop frame.

    The Python work is in one thread on purpose. A preparer thread beside the writer (as
    :class:`GroupCommitter` has) made small commits slower here, not faster: each time the
    writer's database round trip returns it waits for the interpreter lock the preparer holds,
    and the other way round (at 16 clients, one entry a request: 1,700-1,750 entries/s with
    the two threads against 1,850-1,930 with this one). Large batches are different: their
    signatures are checked in the verification pool anyway, so when at least
    ``PIPELINE_ENTRIES`` entries wait behind a batch, their checks start in the pool before the
    batch is committed (:func:`start_prepare`), and run on the other core meanwhile."""
    transient = transient_errors()
    pending: deque = deque()
    stop = False
    ahead = None  # (batch, join): the next batch, its checks under way in the pool

    def receive(block: bool) -> None:
        """Every frame that has come (with ``block``, waiting for one)."""
        nonlocal stop
        while not stop and (block or conn.poll(0)):
            block = False
            try:
                groups = conn.recv()
            except (EOFError, OSError, FrameError):
                groups = None
            if groups is None:
                stop = True
                break
            pending.extend(groups)

    def take() -> list:
        batch = [pending.popleft()]
        n = len(batch[0][1])
        while pending and len(batch) < max_groups and n + len(pending[0][1]) <= max_entries:
            batch.append(pending.popleft())
            n += len(batch[-1][1])
        return batch

    while not (stop and not pending and ahead is None):
        if not pending and ahead is None and not stop:
            receive(block=True)  # idle: wait for work
            if not pending:
                continue
        receive(block=False)
        try:
            if ahead is not None:
                batch, join = ahead
                ahead = None
                groups = join()
            else:
                batch = take()
                groups = prepare_groups(api, [group for _, group in batch])
        except Exception:  # noqa: BLE001 - only a cache: submit_groups checks everything anyway
            log.exception("preparing groups failed")
            groups = [group for _, group in batch]
        receive(block=False)  # what came while this batch was checked
        if sum(len(group) for _, group in itertools.islice(pending, max_groups)) >= PIPELINE_ENTRIES:
            nxt = take()
            try:
                ahead = (nxt, start_prepare(api, [group for _, group in nxt]))
            except Exception:  # noqa: BLE001 - (a pool that cannot start work: prepared in turn)
                log.exception("preparing groups failed")
                ahead = (nxt, lambda nxt=nxt: [group for _, group in nxt])
        try:
            results = api.submit_groups(groups, defer_findings=True)
            known = api.findings_hook is not None and api.add_findings(results)
            answers = [_encode_answer(rid, not isinstance(r, Exception), r, transient, known)
                       for (rid, _), r in zip(batch, results)]
        except Exception as e:  # noqa: BLE001 - the transaction failed: every group learns it
            if not isinstance(e, transient):
                log.exception("a group commit failed")
            answers = [_encode_answer(rid, False, e, transient) for rid, _ in batch]
        conn.send(answers)


class WriterProcess(_Admission):
    """The group commit in a writer process of its own (see the module docstring). When
    ``api`` has a findings hook (the projections), the process answers the findings of what it
    commits from a mirror of the rule state it keeps (:class:`reledger.projections.hooks.MirrorFindings`,
    with ``findings_mirror=True``); those it cannot say (while its mirror is being built), and
    all of them by default, are asked here, of ``api``'s hook, before the answers go back to the
    event loop. The default keeps the rule state out of this process: a mirror holds the whole
    rule state in memory, which grows with the log (the projections keep it as rows).

    ``start`` spawns the process and waits until it has built its write state. If the process
    dies, the groups it was given fail with 503 ``unavailable`` (their entries may or may not
    be written: the same request sent again is answered from its command ids) and the next
    group starts a new process. ``close`` commits and answers what was submitted before it.
    """

    def __init__(self, url: str, api: CommandAPI, *, max_queued_entries: int = MAX_QUEUED_ENTRIES,
                 max_queued_bytes: int = MAX_QUEUED_BYTES, start_timeout: float = WRITER_START_TIMEOUT,
                 findings_mirror: bool = False):
        super().__init__(max_queued_entries, max_queued_bytes)
        self.url, self.api = url, api
        # the process answers findings itself (when there is a hook to answer for)
        self.findings_mirror = findings_mirror and api.findings_hook is not None
        self.start_timeout = start_timeout
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple] = {}  # request id -> (group, loop, future), of the live process
        self._ids = itertools.count(1)
        self._proc = self._conn = None
        self._receiver: threading.Thread | None = None
        self.starts = 0  # processes started (1 unless one died)
        self._sender = threading.Thread(target=self._send_all, name="reledger-writer-send", daemon=True)

    @staticmethod
    def available() -> bool:
        """Whether a spawned process can import this program (not a script read from stdin)."""
        return main_importable()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer process (if it cannot start now, say so in the log: the first
        append tries again, and its requests get 503 if that fails too)."""
        with self._lock:
            try:
                self._spawn()
            except Exception:  # noqa: BLE001 - the database may come up later
                log.exception("the writer process could not be started: the first append tries again")
        self._sender.start()

    def _spawn(self) -> None:
        """A new writer process, ready (holding ``_lock``)."""
        ctx = context()
        parent, child = pipe(ctx)
        proc = ctx.Process(target=serve_writer, args=(self.url, child, os.getpid(), self.findings_mirror),
                           name="reledger-writer", daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(self.start_timeout):
                raise TimeoutError(f"the writer process did not start within {self.start_timeout:g} s")
            if parent.recv() != "ready":
                raise RuntimeError("the writer process sent something else than ready")
        except BaseException:
            proc.kill()
            proc.join(timeout=5)
            parent.close()
            raise
        self._proc, self._conn = proc, parent
        self._pending = {}  # a process's own: a dead one's receiver fails only what it was given
        self.starts += 1
        self._receiver = threading.Thread(target=self._receive, args=(proc, parent, self._pending),
                                          name="reledger-writer-receive", daemon=True)
        self._receiver.start()

    def close(self) -> None:
        if self._sender.is_alive():
            self.inbox.put(None)
            self._sender.join(timeout=30)
        with self._lock:
            proc, conn, receiver = self._proc, self._conn, self._receiver
        if proc is not None:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        if receiver is not None:
            receiver.join(timeout=10)
        if conn is not None:
            conn.close()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    # --- the parent's side --------------------------------------------------------------
    def _enqueue(self, item: tuple) -> None:
        self.inbox.put(item)

    def _send_all(self) -> None:
        """Every group waiting goes to the process in one frame (a new process first if the
        last one died); on the end mark, the stop frame."""
        while True:
            first = self.inbox.get()
            if first is None:
                self._send_stop()
                return
            items, stop = _drain(self.inbox, first)
            failed: Exception | None = None
            with self._lock:
                try:
                    if self._proc is None or not self._proc.is_alive() or self._conn is None:
                        self._spawn()
                    rids = [next(self._ids) for _ in items]
                    for rid, item in zip(rids, items):
                        self._pending[rid] = item
                    try:
                        self._conn.send([[rid, group] for rid, (group, _, _) in zip(rids, items)])
                    except OSError:  # the process is gone: its receiver fails what it held
                        pass
                except Exception as e:  # noqa: BLE001 - no process could be started
                    log.exception("the writer process could not be started")
                    failed = WriterFailed(type(e).__name__, f"the writer is unavailable ({type(e).__name__}): "
                                          "nothing was written, retry the same request", True)
            if failed is not None:
                self._deliver_to_loops([(loop, f, False, failed) for _, loop, f in items])
            if stop:
                self._send_stop()
                return

    def _send_stop(self) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None:
            try:
                conn.send(None)
            except OSError:
                pass

    def _receive(self, proc, conn, pending: dict) -> None:
        """The answers of one process (findings the process could not say asked here), to the
        event loops. When the process ends, whatever it still held fails (503)."""
        want_findings = self.api.findings_hook is not None
        while True:
            try:
                rows = conn.recv()
            except (EOFError, OSError, FrameError):
                break
            with self._lock:
                items = [pending.pop(rid, None) for rid, _, _ in rows]
            answer = Answer()
            out = []
            for item, (_, kind, payload) in zip(items, rows):
                if item is None:
                    continue
                group, loop, f = item
                ok, value = _decode_answer(kind, payload)
                if ok:
                    for pos, r in enumerate(value):
                        if r.findings is None:
                            value[pos] = r = replace(r, findings=())
                            if want_findings and not r.duplicate:
                                answer.findings_asks.append((value, pos, group[pos]))  # (the envelope)
                out.append((loop, f, ok, value))
            try:
                self.api.add_findings(answer)
            except Exception:  # noqa: BLE001 - (the hook's own errors are caught there)
                log.exception("findings could not be added")
            self._deliver_to_loops(out)
        proc.join(timeout=5)
        with self._lock:
            if self._proc is proc:
                self._proc = None
            lost = list(pending.values())
            pending.clear()
        if lost:
            log.error("the writer process ended (exit code %s) with %d groups unanswered", proc.exitcode, len(lost))
            failed = WriterFailed("WriterProcessEnded", "the writer process ended before answering: the entries may "
                                  "or may not be written; send the same request again (its command ids make that "
                                  "safe)", True)
            self._deliver_to_loops([(loop, f, False, failed) for _, loop, f in lost])
