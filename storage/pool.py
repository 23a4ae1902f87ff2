"""The signature-checking pool: entries are parsed and their signatures checked before the
writer takes its lock, in threads, or for large batches in worker processes.

The check is a hint computed without the lock: a signature is checked with the key its key id
names in the registry known then, and the append plan (storage/plan.py) decides under the lock
whether that key was valid for the entry (and checks any signature not checked here). Either
path answers each group as a list of :class:`reledger.storage.plan.Checked` entries, or the
group's :class:`reledger.storage.plan.AppendError`.

Threads: Ed25519 in ``cryptography`` releases the GIL, so every core verifies. Worker
processes (:class:`Checkers`, started from ``reledger.processes.start.context()``) take a
batch of at least PROCESS_THRESHOLD envelopes, so that the serial writer and the verifiers do
not share one GIL; :func:`shares` spreads a group over them so that all finish about together.
"""

from __future__ import annotations

import collections
import itertools
import operator
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

try:
    import fcntl
except ImportError:  # (not on Windows: threads check there)
    fcntl = None

from reledger.ledger.entry import EntryError, SignedEntry, check_envelopes
from reledger.ledger.registry import REGISTRY_TYPES, Registry
from reledger.processes import frames
from reledger.processes.start import context, exit_with_parent, main_importable

from .plan import AppendError, Checked

PROCESS_THRESHOLD = 256  # envelopes in one prepare() before the checking moves to worker processes


class WorkersGone(RuntimeError):
    """The checking processes are gone (killed, or could not start)."""


class Checkers:
    """Worker processes that run ``entry.check_envelopes`` for a store.

    Each worker has two one-way pipes of 1 MiB (tasks in, answers out) and no helper thread on
    either side: a task (a few hundred envelopes) is written whole without waiting for the
    worker, and an answer waits in its pipe until the writer needs it. Tasks go to the worker
    with the least work in flight; answers come back in each worker's order and are matched
    by ticket. (concurrent.futures' process pool moves every task and answer through two
    threads of the calling process, which then compete with the writer for its GIL.)"""

    PIPE_BYTES = 1 << 20
    MAX_CHUNK = 256  # envelopes in one task (~120 kB): a few tasks in flight fit a pipe
    MIN_CHUNK = 32  # a smaller share of a group goes to another worker (a task has its costs)

    def __init__(self, n: int, ctx) -> None:
        self.workers = []
        for _ in range(n):
            task_r, task_w = ctx.Pipe(duplex=False)
            answer_r, answer_w = ctx.Pipe(duplex=False)
            if not (_grow_pipe(task_w) and _grow_pipe(answer_r)):
                # with small pipes, a worker blocked on a full answer pipe and a writer blocked
                # on a full task pipe could wait for each other: use threads instead
                for conn in (task_r, task_w, answer_r, answer_w):
                    conn.close()
                self.close()
                raise WorkersGone("pipes of 1 MiB are not available here")
            checked = ctx.RawValue("q", 0)  # envelopes this worker has checked, counted by it
            proc = ctx.Process(target=_checker_main, args=(task_r, answer_w, os.getpid(), checked), daemon=True,
                               name="reledger-check")
            proc.start()
            task_r.close()
            answer_w.close()
            self.workers.append(_CheckerWorker(proc, frames.Channel(task_w), frames.Channel(answer_r), checked))
        self.next_ticket = 0
        self.lock = threading.Lock()

    def submit(self, envelopes: list[bytes], keys: dict[str, bytes]) -> "_CheckTicket":
        data = frames.pack([envelopes, keys])
        with self.lock:
            # Take every answer that is ready first (so that no answer pipe fills up, and so
            # that in_flight counts only the envelopes a worker has not checked yet), then give
            # the task to the worker with the fewest of those. Counted before draining, a
            # worker whose answers merely wait unread looked busy: at the end of a pipeline one
            # worker could be given both halves of the last batch while the other sat idle.
            for w in self.workers:
                self._drain(w)
            worker = min(self.workers, key=_CheckerWorker.unchecked)
            return self._send(worker, data, len(envelopes))

    def submit_group(self, envelopes: list[bytes], keys: dict[str, bytes]) -> tuple[list["_CheckTicket"], list[int]]:
        """Hand a group's envelopes to the workers in chunks of at most MAX_CHUNK: (tickets,
        offsets of their chunks in the group), in group order. The shares are chosen so that
        every worker ends with about as many envelopes to check as the others (:func:`shares`):
        the group's answer waits for its last chunk, so equal halves given to unequally busy
        workers leave one idle while the other finishes, at the end of a pipeline most of all."""
        sent: list[tuple[int, _CheckTicket]] = []
        with self.lock:
            for w in self.workers:
                self._drain(w)
            portions = shares([w.unchecked() for w in self.workers], len(envelopes), self.MIN_CHUNK)
            chunks: list[list[tuple[_CheckerWorker, int, int]]] = []  # per worker: (worker, offset, n)
            start = 0
            for worker, share in zip(self.workers, portions):
                if not share:
                    continue
                parts = -(-share // self.MAX_CHUNK)
                mine = []
                for j in range(parts):
                    n = share * (j + 1) // parts - share * j // parts
                    mine.append((worker, start, n))
                    start += n
                chunks.append(mine)
            # Sent in turns, taking the answers that are ready before each task: a group larger
            # than a pipe holds never leaves a worker blocked on a full answer pipe while this
            # process is blocked on the worker's full task pipe.
            for turn in itertools.zip_longest(*chunks):
                for chunk in turn:
                    if chunk is None:
                        continue
                    worker, offset, n = chunk
                    for w in self.workers:
                        self._drain(w)
                    data = frames.pack([envelopes[offset:offset + n], keys])
                    sent.append((offset, self._send(worker, data, n)))
        sent.sort(key=operator.itemgetter(0))
        return [t for _, t in sent], [o for o, _ in sent]

    def _send(self, worker: "_CheckerWorker", data: bytes, n: int) -> "_CheckTicket":
        self.next_ticket += 1
        ticket = _CheckTicket(self, worker, self.next_ticket)
        try:
            worker.tasks.send_frame(data)
        except (OSError, ValueError) as e:
            raise WorkersGone(f"a checking process is gone: {e}") from e
        worker.in_flight += n
        worker.sent += n
        worker.pending.append((ticket.number, n))
        return ticket

    def answer(self, ticket: "_CheckTicket"):
        worker = ticket.worker
        with self.lock:
            while ticket.number not in worker.answers:
                self._receive(worker)
            value = worker.answers.pop(ticket.number)
        # frames carry arrays as lists: a refusal is check_envelopes' tuple ("error", ...), an
        # answer its list of per-entry tuples, as the thread path gives them
        if value and isinstance(value[0], str):
            return tuple(value)
        return [tuple(x) for x in value]

    def _receive(self, worker: "_CheckerWorker") -> None:
        try:
            data = worker.answers_in.recv()
        except (EOFError, OSError, frames.FrameError) as e:
            raise WorkersGone(f"a checking process is gone: {e}") from e
        number, n = worker.pending.popleft()
        worker.in_flight -= n
        if number in worker.forgotten:
            worker.forgotten.discard(number)
        else:
            worker.answers[number] = data

    def _drain(self, worker: "_CheckerWorker") -> None:
        try:
            while worker.pending and worker.answers_in.poll(0):
                self._receive(worker)
        except OSError as e:
            raise WorkersGone(f"a checking process is gone: {e}") from e

    def forget(self, ticket: "_CheckTicket") -> None:
        """A ticket nobody will ask for (a cancelled batch): drop its answer when it comes."""
        with self.lock:
            ticket.worker.answers.pop(ticket.number, None)
            ticket.worker.forgotten.add(ticket.number)

    def close(self) -> None:
        for w in self.workers:
            for conn in (w.tasks, w.answers_in):
                try:
                    conn.close()
                except OSError:
                    pass
            w.proc.join(timeout=0.5)
            if w.proc.is_alive():
                w.proc.terminate()


@dataclass
class _CheckerWorker:
    proc: Any
    tasks: Any
    answers_in: Any
    checked: Any = None  # shared counter: envelopes the worker has checked (or skipped) so far
    in_flight: int = 0  # envelopes sent and not answered yet
    sent: int = 0  # envelopes sent

    def unchecked(self) -> int:
        """Envelopes sent that the worker has not checked yet: its work ahead, also within the
        task it is busy with (an answer counts a task whole until it is read)."""
        return self.in_flight if self.checked is None else self.sent - self.checked.value

    def __post_init__(self) -> None:
        self.pending: collections.deque[tuple[int, int]] = collections.deque()  # (ticket, envelopes)
        self.answers: dict[int, bytes] = {}
        self.forgotten: set[int] = set()


class _CheckTicket:
    """A task given to a worker; ``result()`` as a Future's."""

    __slots__ = ("pool", "worker", "number")

    def __init__(self, pool: Checkers, worker: _CheckerWorker, number: int) -> None:
        self.pool, self.worker, self.number = pool, worker, number

    def result(self):
        return self.pool.answer(self)

    def cancel(self) -> None:
        self.pool.forget(self)


def shares(loads: list[int], n: int, least: int) -> list[int]:
    """How many of ``n`` new envelopes each worker gets, given how many each has not checked
    yet (``loads``): the least loaded are brought up to one common level, as far as the n go
    (water filling), so that all finish about together. A share under ``least`` (when there
    are other shares) goes to the largest share instead."""
    k = len(loads)
    shares = [0] * k
    if n <= 0 or k == 0:
        return shares
    order = sorted(range(k), key=loads.__getitem__)
    total, m = n, 0
    for i, w in enumerate(order):
        total += loads[w]
        m = i + 1
        if m == k or total <= loads[order[m]] * m:  # the level total/m stays below the next load
            break
    level, extra = divmod(total, m)  # the m least loaded end at level (the first `extra` at +1)
    for i, w in enumerate(order[:m]):
        shares[w] = level - loads[w] + (1 if i < extra else 0)
    while True:
        small = [w for w in range(k) if 0 < shares[w] < least]
        if not small or sum(1 for x in shares if x) == 1:
            return shares
        w = min(small, key=shares.__getitem__)
        big = max((x for x in range(k) if x != w), key=shares.__getitem__)
        shares[big] += shares[w]
        shares[w] = 0


def _grow_pipe(conn) -> bool:
    """Give a pipe 1 MiB of buffer (Linux); False where the system does not allow it."""
    if fcntl is None:
        return False
    try:
        return fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), Checkers.PIPE_BYTES) \
            >= Checkers.PIPE_BYTES
    except OSError:
        return False


def _checker_main(tasks, answers, parent: int, checked=None) -> None:
    """A worker process: check each task's envelopes, answer in order, until the pipe closes."""
    exit_with_parent(parent)
    tasks, answers = frames.Channel(tasks), frames.Channel(answers)
    while True:
        try:
            envelopes, keys = tasks.recv()
        except (EOFError, OSError):
            return
        answers.send(check_counting(envelopes, keys, checked))


PROGRESS_STEP = 32  # envelopes a worker checks between two updates of its shared counter


def check_counting(envelopes: list[bytes], keys: dict[str, bytes], checked=None) -> list[tuple] | tuple:
    """``check_envelopes(envelopes, keys, REGISTRY_TYPES)``, adding to the shared counter
    ``checked`` every PROGRESS_STEP envelopes (the envelopes after a refused one count as
    checked: the task is over), so that the store sees how far a worker is within a task."""
    if checked is None:
        return check_envelopes(envelopes, keys, REGISTRY_TYPES)
    out: list[tuple] = []
    for i in range(0, len(envelopes), PROGRESS_STEP):
        part = check_envelopes(envelopes[i:i + PROGRESS_STEP], keys, REGISTRY_TYPES)
        if type(part) is tuple:  # refused: the position within the whole task
            checked.value += len(envelopes) - i
            return part[:4] + (part[4] + i,) + part[5:]
        out += part
        checked.value += len(part)
    return out


def precheck(group: list, registry: Registry) -> list[Checked] | AppendError:
    """Parse a group and check signatures against keys the registry already knows (in the
    calling thread); the group's checked entries, or its error."""
    out = []
    of = Checked.of
    for pos, item in enumerate(group):
        try:
            signed = item if isinstance(item, SignedEntry) else SignedEntry.parse(item)
        except EntryError as e:
            return AppendError("malformed", str(e), field=e.field, position=pos)
        e = signed.entry
        rec = registry.keys.get(e.key_id)
        verified_with = None
        if rec is not None:
            if not signed.signature_valid(rec.public_key):
                return AppendError("signature", f"sig: not a valid signature by key {e.key_id}", field="sig",
                                   position=pos, chain=e.chain, seq=e.seq)
            verified_with = rec.public_key
        out.append(of(signed, verified_with))
    return out


class _Joined:
    """The checks of one group's chunks, answered as one (positions of the whole group). With
    ``group`` given, the chunks ran ``entry.check_envelopes`` in worker processes."""

    def __init__(self, futures: list, offsets: list[int], group: list | None = None,
                 keys: dict[str, bytes] | None = None, checks: "SignatureChecks | None" = None,
                 registry: Registry | None = None):
        self.futures, self.offsets = futures, offsets
        self.group, self.keys, self.checks, self.registry = group, keys, checks, registry

    def result(self) -> list[Checked] | AppendError:
        if self.group is not None:
            return self._remote_result()
        out: list = []
        for f, off in zip(self.futures, self.offsets):
            r = f.result()
            if isinstance(r, AppendError):
                if r.position is not None:
                    r.position += off
                return r
            out += r
        return out

    def _remote_result(self) -> list[Checked] | AppendError:
        out: list = []
        keys, group = self.keys, self.group
        new = tuple.__new__
        for f, off in zip(self.futures, self.offsets):
            try:
                r = f.result()
            except WorkersGone:  # e.g. killed, or a main module a child cannot import
                return self.checks.checked_in_threads(group, self.registry)
            if type(r) is tuple:
                _, code, message, field, pos, chain, seq = r
                return AppendError(code, message, field=field, position=pos + off, chain=chain, seq=seq)
            # (chain, seq, prev, type, key_id, command_id, hash, verified, body) + envelope
            for t, env in zip(r, group[off:off + len(r)]):
                out.append(new(Checked, (t[0], t[1], t[2], t[3], t[4], t[5], t[6], keys[t[4]] if t[7] else None,
                                         t[8], env)))
        return out

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()


class _Done:
    """A check answered at once (as a _Joined would be)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self) -> None:
        pass


@dataclass
class Prepared:
    """The checks of one append's groups, under way (``LedgerStore.prepare``)."""

    futures: list

    def results(self) -> list[list[Checked] | AppendError]:
        return [f.result() for f in self.futures]

    def cancel(self) -> None:
        for joined in self.futures:
            joined.cancel()


class SignatureChecks:
    """A store's checking pool: ``workers`` threads, and (``processes``, default: when there is
    more than one worker) as many worker processes, started at the first batch of at least
    PROCESS_THRESHOLD envelopes."""

    def __init__(self, workers: int, processes: bool | None = None):
        self.workers = workers
        self.threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reledger-verify")
        self.use_processes = workers > 1 if processes is None else processes
        self.procs: Checkers | None = None
        self._key_table: tuple[int, dict[str, bytes]] = (-1, {})

    def prepare(self, groups: Sequence[Sequence[bytes | SignedEntry]], registry: Registry) -> Prepared:
        """Start checking ``groups`` against the keys ``registry`` knows (no lock held)."""
        groups = [list(g) for g in groups]
        procs = None
        if self.use_processes and sum(map(len, groups)) >= PROCESS_THRESHOLD and main_importable():
            try:
                procs = self.process_pool()
                keys = self.keys_of(registry)
            except WorkersGone:
                self.use_processes = False
        futures: list = []
        for g in groups:
            if procs is not None and all(type(x) is bytes for x in g):
                try:
                    tickets, offsets = procs.submit_group(g, keys)
                except WorkersGone:
                    futures.append(_Done(self.checked_in_threads(g, registry)))
                    continue
                futures.append(_Joined(tickets, offsets, g, keys, self, registry))
                continue
            if len(g) <= 64 and all(type(x) is SignedEntry and "_verified_with" in x.__dict__ for x in g):
                # parsed and verified already (the command API's preparer did it): nothing for
                # the pool to do but a round trip; the writer still checks the deciding key
                futures.append(_Done(precheck(g, registry)))
                continue
            # split a large group over the pool: Ed25519 releases the GIL, so every core verifies;
            # chunks of at most 128 keep the threads evenly loaded
            size = max(32, min(128, -(-len(g) // self.workers)))
            offsets = list(range(0, len(g), size)) or [0]
            futures.append(_Joined([self.threads.submit(precheck, g[o:o + size], registry) for o in offsets],
                                   offsets))
        return Prepared(futures)

    def process_pool(self) -> "Checkers":
        if self.procs is None:
            self.procs = Checkers(self.workers, context())
        return self.procs

    def keys_of(self, registry: Registry) -> dict[str, bytes]:
        """Key id -> public key of every key the registry knows (a key id always names the same
        public key, so the table only grows; revocations and validity are the plan's business)."""
        keys = dict(registry.keys)  # one C-level copy: a writer may be adding keys meanwhile
        if self._key_table[0] != len(keys):
            self._key_table = (len(keys), {k: r.public_key for k, r in keys.items()})
        return self._key_table[1]

    def checked_in_threads(self, group: list, registry: Registry) -> list[Checked] | AppendError:
        """The thread path for a group whose worker processes failed (a broken pool): the
        processes are closed and not used again."""
        if self.procs is not None:
            self.procs.close()
        self.procs = None
        self.use_processes = False
        return precheck(group, registry)

    def close(self) -> None:
        self.threads.shutdown(wait=False)
        if self.procs is not None:
            self.procs.close()
            self.procs = None
