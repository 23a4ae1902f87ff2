"""``reledger verify`` over a database: the readable verifier of ``ledger/verify.py`` fed from
the log's tables, and a fast path that checks a clean log range by range on every core.

What is valid is decided by ``reledger.ledger.rules`` alone: the detailed path feeds every row
to :class:`~reledger.ledger.verify.LogVerifier`; the fast path calls the same rule functions on
whole aligned ranges in worker processes (started as every reledger child process is, from
``reledger.processes.start.context()``) and joins them. The fast path only ever says "all
good": on any doubt it returns None and the detailed path runs and names every problem.
"""

from __future__ import annotations

import collections
import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from reledger.ledger import heads as chain_heads, merkle, rules
from reledger.ledger.checkpoint import Checkpoint
from reledger.ledger.encoding import micros_to_time_text
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.ledger.registry import REGISTRY_TYPES, Registry, RegistryError
from reledger.ledger.verify import Checked, LogVerifier, Problem, Report, check_entries, key_table, note_size
from reledger.processes.start import context
from reledger.storage.reader import LogReader

__all__ = ["verify_database", "FAST_BITS", "Problem", "Report"]


def _plain(row: Any) -> tuple:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def _check_range(url: str, start: int, stop: int, keys: dict[str, bytes]) -> list[Checked]:
    with LogReader(url) as r:
        return check_entries(r.iter_records(start, stop), keys)


def _max_index(r: LogReader) -> int:
    cur = r.cursor()
    cur.execute(r.tables.q("SELECT MAX(idx) FROM {log} WHERE {int_idx}"))
    row = cur.fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def _integrity(url: str, with_registry: bool = False, unlogged: bool = True) -> dict[str, Any]:
    """The whole-table scans (one snapshot): row counts, events without a log row, duplicate
    command ids, values of the wrong type. A clean ledger has none of these problems. With
    ``with_registry``, the registry entries and stored checkpoints of the same snapshot too.

    ``unlogged=False`` skips the anti-join for events without a log row. The fast path may:
    it finds the event of every log row, and checks each chain's seqs to be consecutive along
    the log (so those events are distinct), so when the events table holds exactly as many
    rows as the log, no event is left without a log row.

    Duplicate command ids (FORMAT.md 2.6, ``rules.command_new``) are found here for the fast
    path, as one query over the log rows (whose command ids the ranges check to be the
    entries'), instead of one set of every command id of the log."""
    with LogReader(url) as r:
        r.begin_snapshot()
        cur = r.cursor()
        out: dict[str, Any] = {"size": r.queries.size(cur)[0], "max_index": _max_index(r)}
        if with_registry:
            span = max(out["size"], out["max_index"] + 1)
            out["registry_records"] = r.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, span)
            out["checkpoints"] = r.queries.checkpoints(cur)
        cur.execute(r.tables.q("SELECT COUNT(*), MIN(idx) FROM {log}"))
        log_count, out["log_min"] = cur.fetchone()
        out["log_count"] = int(log_count)
        out["events"] = r.queries.events_count(cur)
        out["unlogged"] = r.queries.unlogged_events(cur) if unlogged else []
        cur.execute(r.tables.q("SELECT chain, command_id FROM {log} GROUP BY chain, command_id "
                               "HAVING COUNT(*) > 1 LIMIT 1"))
        out["duplicate_commands"] = cur.fetchall()
        damaged = []
        for _what, sql in r.tables.damaged_rows():
            cur.execute(r.tables.q(sql))
            damaged += [(row[0], row[1]) for row in cur.fetchall()]
        out["damaged"] = damaged
        r.end_snapshot()
    span = max(out["size"], out["max_index"] + 1)
    out["span"] = span
    out["clean"] = (not damaged and not out["unlogged"] and not out["duplicate_commands"]
                    and out["log_min"] in (None, 0) and out["log_count"] == span == out["size"]
                    and out["events"] == out["size"])
    return out


def verify_database(url: str, *, workers: int | None = None, chunk: int = 4000,
                    trusted_genesis: str | None = None, trusted_checkpoint_keys: list[str] = (),
                    checkpoint_notes: list[bytes] = (), progress: Callable[[int, int], None] | None = None,
                    ) -> Report:
    """Verify the ledger at ``url`` using ``workers`` processes.

    ``checkpoint_notes`` are extra signed checkpoints kept outside the database (by a witness
    or an earlier audit): they must be consistent with the log too.

    A clean ledger takes the fast path (every check, range by range on every core), while the
    whole-table integrity scans run beside it in the same process pool; anything unclean, or
    any doubt of the fast path, runs the detailed path, which names every problem."""
    workers = workers or os.cpu_count() or 1
    rules.checkpoint_verifiers(Registry(), 0, trusted_checkpoint_keys)  # a malformed trusted key: NoteError
    external = _external_checkpoints(checkpoint_notes)
    with LogReader(url) as r:
        r.begin_snapshot()  # size, registry and checkpoints from one consistent view
        cur = r.cursor()
        size = r.queries.size(cur)[0]
        max_index = _max_index(r)
        span = max(size, max_index + 1)
        registry_records = r.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, span)
        # how many checkpoint rows, and the greatest size column: the fast path reads the rows
        # themselves range by range (a page at a time), never all at once
        census = _checkpoint_census(r)
        r.end_snapshot()
    if size == span:
        side_result: list = []  # the scans, run in the fast path's process pool beside the ranges
        fast = _fast_verify(url, span, registry_records, census, external, workers,
                            trusted_genesis, list(trusted_checkpoint_keys), progress,
                            side=(_integrity, (url, False, False)), side_result=side_result)
        if fast is not None:
            scans = side_result[0] if side_result else _integrity(url)
            # the scans saw a snapshot at least as recent: a clean one covers every entry verified
            if scans["clean"] and scans["size"] >= span:
                return fast
    return _verify_detailed(url, workers, chunk, trusted_genesis, trusted_checkpoint_keys, external, progress)


def _checkpoint_census(r: LogReader) -> tuple[int, int | None]:
    """(number of stored checkpoint rows, their greatest size column or None): the rows
    :meth:`Queries.checkpoints` lists, counted in the database."""
    cur = r.cursor()
    cur.execute(r.tables.q("SELECT COUNT(*), MAX(size) FROM {checkpoints} WHERE {int_size}"))
    count, top = _plain(cur.fetchone())
    return int(count), (None if top is None else int(top))


def _external_checkpoints(checkpoint_notes: list[bytes]) -> list[tuple[int, bytes, bytes]]:
    """Notes kept outside the database, as checkpoint rows (size, root, note) of their own."""
    out = []
    for note in checkpoint_notes:
        size = note_size(note)
        if size is None:
            raise ValueError("an external checkpoint is malformed: not a checkpoint note")
        out.append((size, Checkpoint.parse(note[:note.rfind(b"\n\n") + 1]).root, note))
    return out


@dataclass(frozen=True)
class _Row:
    """A log row with the envelope found for it elsewhere than under its own (chain, seq)."""

    index: int
    recorded_us: int
    chain: Any
    seq: Any
    type: Any
    entry_hash: Any
    nodes: Any
    envelope: bytes
    command_id: Any


def _unlogged_envelopes(url: str, limit: int = 10_000) -> dict[bytes, tuple[str, int, bytes]]:
    """entry hash -> (chain, seq, envelope) of events that no log row names (at most ``limit``):
    where the entry of a log row whose chain or seq was altered is."""
    import hashlib

    with LogReader(url) as r:
        cur = r.cursor()
        cur.execute(r.tables.q("SELECT e.originator_id, e.originator_version, e.state FROM {events} e LEFT JOIN {log} l "
                               "ON e.originator_id = l.chain AND e.originator_version = l.seq "
                               "WHERE l.idx IS NULL LIMIT ?"), (limit,))
        out = {}
        for chain, seq, state in map(_plain, cur.fetchall()):
            if isinstance(state, (bytes, memoryview)):
                state = bytes(state)
                out[hashlib.sha256(state).digest()] = (chain, int(seq), state)
        return out


def _verify_detailed(url: str, workers: int, chunk: int, trusted_genesis: str | None,
                     trusted_checkpoint_keys: list[str], external_cps: list, progress) -> Report:
    """Every check, entry by entry, naming every problem (one snapshot for the whole-table
    scans, the registry and the checkpoints)."""
    scans = _integrity(url, with_registry=True)
    span, damaged, unlogged = scans["span"], scans["damaged"], scans["unlogged"]
    log_min, log_count, events, max_index = scans["log_min"], scans["log_count"], scans["events"], scans["max_index"]
    keys = key_table(rec.envelope for rec in scans["registry_records"] if rec.envelope is not None)
    cps = list(scans["checkpoints"]) + external_cps
    v = LogVerifier(cps, expected_size=span, trusted_genesis=trusted_genesis,
                    trusted_checkpoint_keys=trusted_checkpoint_keys)
    # a log row whose chain or seq was altered names no event, and its event names no log row:
    # found by its entry hash, the row is judged against its entry (a mismatch, not a loss)
    elsewhere = _unlogged_envelopes(url) if unlogged else {}
    found: set[tuple[str, int]] = set()
    ranges = [(s, min(span, s + chunk)) for s in range(0, span, chunk)]
    done = 0
    for batch in _map_ranges(url, ranges, keys, workers):
        for c in batch:
            if c.error and c.error.startswith("missing") and c.stored[3] in elsewhere:
                chain, seq, env = elsewhere[c.stored[3]]
                s_chain, s_seq, s_type, s_hash, s_nodes, s_command = c.stored
                c = check_entries([_Row(c.index, c.recorded_us, s_chain, s_seq, s_type, s_hash, s_nodes, env,
                                        s_command)], keys)[0]
                found.add((chain, seq))
            v.feed(c)
        done += len(batch)
        if progress:
            progress(done, span)
    rep = v.finish()
    for where, what in damaged:
        rep.problems.append(Problem("damaged", what, where if type(where) is int else None))
    if log_min is not None and int(log_min) < 0:
        rep.problems.append(Problem("phantom", f"the log holds {int(log_count) - rep.entries} rows outside "
                                    f"0..{max_index} (from index {log_min})", int(log_min)))
    unlogged = [u for u in unlogged if tuple(u) not in found]
    if unlogged:
        for chain, seq in unlogged:
            rep.problems.append(Problem("unlogged", f"entry {chain}:{seq} is in the events table but not in the log",
                                        None, chain, seq))
    elif events != rep.entries - sum(1 for p in rep.problems if p.code == "missing"):
        rep.problems.append(Problem("unlogged", f"the events table holds {events} entries, the log {rep.entries}"))
    return rep


def _map_ranges(url: str, ranges, keys, workers: int) -> Iterator[list[Checked]]:
    jobs = [(url, start, stop, keys) for start, stop in ranges]
    yield from _map_jobs(_check_range, jobs, workers)


# --- the fast path: a clean log checked range by range on every core --------------------------
#
# Every rule LogVerifier applies is applied here too, by the same functions of ledger/rules.py,
# but each worker process checks a whole aligned range of 2**FAST_BITS entries on its own
# (signatures, key validity from the registry's key records, chain links and record times inside
# the range, the Merkle subtree of the range against the stored nodes) and returns a summary;
# the parent joins the ranges (chain links and record times across them, the tree above them,
# every checkpoint). Any broken rule or doubt returns None, and verify_database then runs the
# detailed path, which names every problem.

FAST_BITS = 12
CHECKPOINT_PAGE = 1000  # stored checkpoint rows read per query


def _ranges(span: int, unit: int) -> Iterator[tuple[int, int]]:
    """The aligned ranges [a, b) of ``unit`` entries (the last one partial) that cover the log."""
    for a in range(0, span, unit):
        yield a, min(span, a + unit)

_WORKER_READERS: dict[str, LogReader] = {}  # in a worker process: url -> its LogReader, for all its ranges
_IN_WORKER = False


def _worker_started() -> None:
    global _IN_WORKER
    _IN_WORKER = True


def _read_range(url: str, start: int, stop: int) -> list | None:
    """_range_rows with a reader opened once per worker process (a PostgreSQL connection costs
    the server a backend process); the parent process opens one per range and closes it."""
    if not _IN_WORKER:
        with LogReader(url) as r:
            return _range_rows(r, start, stop)
    r = _WORKER_READERS.get(url)
    if r is None:
        r = _WORKER_READERS[url] = LogReader(url)
    return _range_rows(r, start, stop)


def _range_rows(r: LogReader, start: int, stop: int) -> list | None:
    """The log rows [start, stop) with their envelopes: (idx, chain, seq, type, entry_hash,
    recorded_us, nodes, envelope, command_id) tuples in log order; None when in doubt."""
    cur = r.cursor()
    log_sql = ("SELECT l.idx, l.chain, l.seq, l.type, l.entry_hash, l.recorded_us, l.nodes, {envelope}, "
               "l.command_id FROM {log} l WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx")
    by_row = log_sql.replace("{envelope}", "(SELECT e.state FROM {events} e WHERE "
                             "e.originator_id = l.chain AND e.originator_version = l.seq)")
    if r.tables.backend == "sqlite":
        # in-process: a correlated primary-key look-up per row is cheap
        cur.execute(r.tables.q(by_row), (start, stop))
        return cur.fetchall()  # sqlite3 rows are tuples already
    # PostgreSQL: the server's work counts (it shares the cores). A batch's events are inserted
    # in log order in the transaction that writes its log rows, so the range's envelopes are
    # one range of notification ids: two look-ups and one index range scan instead of a
    # look-up per row. Rows are matched by (chain, seq); anything else is doubt.
    cur.execute(r.tables.q(log_sql.replace("{envelope}", "NULL")), (start, stop))
    rows = [_plain(row) for row in cur.fetchall()]
    if len(rows) != stop - start:
        return None
    ends = []
    for row in (rows[0], rows[-1]):
        cur.execute(r.tables.q("SELECT notification_id FROM {events} WHERE originator_id = ? AND "
                               "originator_version = ?"), (row[1], row[2]))
        found = cur.fetchone()
        if found is None:
            return None
        ends.append(_plain(found)[0])
    if ends[1] - ends[0] + 1 > 2 * len(rows) + 1024:  # not one contiguous run: ask row by row
        cur.execute(r.tables.q(by_row), (start, stop))
        return [_plain(row) for row in cur.fetchall()]
    cur.execute(r.tables.q("SELECT originator_id, originator_version, state FROM {events} "
                           "WHERE notification_id >= ? AND notification_id <= ?"), (ends[0], ends[1]))
    states = {(e[0], e[1]): e[2] for e in map(_plain, cur.fetchall())}
    out = []
    for row in rows:
        env = states.get((row[1], row[2]))
        if env is None:
            return None
        out.append(row[:7] + (env,) + row[8:])
    return out


def _fast_range(url: str, start: int, stop: int, keys: dict, registered: dict, registry_indices: frozenset,
                cp_sizes: tuple, designations: dict | None = None, root: str | None = None) -> tuple | None:
    """Check the aligned range [start, stop) in one process with the rules of ledger/rules.py;
    None when any rule is broken or anything is in doubt."""
    rows = _read_range(url, start, stop)
    if rows is None or len(rows) != stop - start:
        return None
    tree: list[bytes] = []  # the range's frontier (the range is aligned: it starts a subtree)
    first: dict[str, tuple[int, bytes]] = {}
    last: dict[str, tuple[int, bytes]] = {}
    cp_local: dict[int, tuple[list[bytes], dict]] = {}
    previous_us: int | None = None
    first_us = None
    extra = b""
    n_rows = len(rows)
    time_text: tuple[int, str] | None = None
    try:
        for i, (idx, chain, seq, type_, entry_hash, recorded_us, nodes, env, command_id) in enumerate(rows):
            if idx != start + i or type(env) is not bytes or type(recorded_us) is not int or type(nodes) is not bytes:
                return None
            rules.record_time(previous_us, recorded_us)
            if first_us is None:
                first_us = recorded_us
            previous_us = recorded_us
            s = SignedEntry.parse(env)
            e = s.entry
            if (chain, seq, type_, entry_hash, command_id) != (e.chain, e.seq, e.type, s.hash, e.command_id):
                return None
            if e.type in REGISTRY_TYPES:
                if idx not in registry_indices:  # checked, in order, with the registry before the ranges
                    return None
            else:
                rules.party_registered(registered.get(e.chain), e.chain, idx)
                pub = rules.key_valid(keys.get(e.key_id), e.chain, e.key_id, idx, recorded_us)
                rules.signature(pub, s.content, s.signature, e.key_id, e.chain)
                rules.authorized(e.type, e.chain, (designations or {}).get(e.chain, ()), idx, recorded_us,
                                 e.chain == root)
            if e.chain in last:
                rules.chain_link(last[e.chain], e.chain, e.seq, e.prev)
            else:
                first[e.chain] = (e.seq, e.prev)  # linked by the parent to the chain's head before the range
            last[e.chain] = (e.seq, s.hash)
            if time_text is None or time_text[0] != recorded_us:
                time_text = (recorded_us, micros_to_time_text(recorded_us))
            # the range is aligned, so the leaf's position in it decides the nodes it completes
            completed = merkle.append_leaf(tree, i, rules.leaf_hash(s.hash, idx, time_text[1]))
            if i == n_rows - 1 and len(nodes) > len(completed):
                # the range's last leaf may complete nodes above the range (checked by the parent)
                rules.stored_nodes(completed, nodes[:len(completed)])
                extra = nodes[len(completed):]
            else:
                rules.stored_nodes(completed, nodes)
            if idx + 1 in cp_sizes:
                cp_local[idx + 1] = (list(tree), dict(last))  # the subtree and the range's chain heads there
    except (rules.Invalid, RegistryError, EntryError, OverflowError, ValueError):
        return None
    return (first, last, first_us, previous_us, tree, extra, cp_local)


def _fast_verify(url: str, span: int, registry_records: list, census: tuple[int, int | None], external: list,
                 workers: int,
                 trusted_genesis: str | None, trusted_checkpoint_keys: list[str],
                 progress: Callable[[int, int], None] | None, side: tuple | None = None,
                 side_result: list | None = None) -> Report | None:
    rep = Report()
    # 1. the registry, in log order: its entries fully checked with the registry's rules
    registry = Registry()
    for rec in registry_records:
        if rec.envelope is None:
            return None
        try:
            s = SignedEntry.parse(rec.envelope)
            pub = registry.key_for(s, rec.index, rec.recorded_us)
            rules.signature(pub, s.content, s.signature, s.entry.key_id, s.entry.chain)
            if rec.index > 0:
                registry.authorized(s.entry, rec.index, rec.recorded_us)
            registry.apply(s, rec.index)
        except (EntryError, RegistryError, rules.Invalid):
            return None
        if rec.index == 0:
            rep.genesis = s.hash.hex()
    if not registry_records or registry_records[0].index != 0:
        return None
    if trusted_genesis and trusted_genesis != rep.genesis:
        return None
    keys = {k.key_id: k for k in registry.keys.values() if k.purpose == "entries"}
    indices = frozenset(r.index for r in registry_records)
    # The checkpoints: the stored rows (``census``: how many, the greatest size column, in the
    # snapshot of the registry) are read range by range, each judged at the size its note
    # states (a row that says otherwise is doubt) once its range is joined, and forgotten; the
    # notes kept outside the database (``external``, as rows) likewise. Memory holds one range's.
    count, top = census
    if (top is not None and top > span) or any(n > span for n, _, _ in external):
        return None  # a checkpoint beyond the log: the detailed path names it
    size_unit = 1 << FAST_BITS
    registered = dict(registry.registered)
    reader = LogReader(url)

    def stored(lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes]]:
        """The stored rows with lo < size column <= hi (none above the census's greatest)."""
        if top is None or lo >= min(hi, top):
            return
        while True:
            rows = reader.queries.checkpoints_after(reader.cursor(), lo, CHECKPOINT_PAGE, min(hi, top))
            yield from rows
            if len(rows) < CHECKPOINT_PAGE:
                return
            lo = rows[-1][0]

    def outside(lo: int, hi: int) -> list[tuple[int, bytes, bytes]]:
        return [c for c in external if lo < c[0] <= hi]

    def jobs() -> Iterator[tuple]:
        for a, b in _ranges(span, size_unit):
            sizes = reader.queries.checkpoint_sizes(reader.cursor(), a, min(b, top)) if top is not None else []
            cp_sizes = tuple(sorted(set(sizes) | {c[0] for c in outside(a, b)}))
            yield (url, a, b, keys, registered, indices, cp_sizes, registry.designations, registry.root)

    judged = [0]  # stored rows judged

    def judge(rows, roots: dict[int, bytes], heads_at: dict[int, tuple[int, bytes]], stored_rows: bool) -> bool:
        """Each checkpoint of ``rows``: its signature by a checkpoint key valid at its size, origin,
        root, heads (raises rules.Invalid); False on doubt."""
        for row_size, row_root, note in rows:
            size = note_size(note)
            if size is None or size != row_size or size > span:
                return False
            if size not in roots or row_root != roots[size]:
                return False
            rules.checkpoint(note, rules.checkpoint_verifiers(registry, size, trusted_checkpoint_keys),
                             size=size, root=roots[size], heads=heads_at[size])
            rep.checkpoints += 1
            judged[0] += stored_rows
        return True
    # 2. the ranges, joined in order
    chunks = merkle.Frontier()  # the tree above the ranges: one leaf per full range
    heads: dict[str, tuple[int, bytes]] = {}
    last_us: int | None = None
    done = 0
    try:
        # checkpoints of the empty log (and rows whose size column is no log size: doubt)
        empty = ({0: merkle.EMPTY_ROOT}, {0: chain_heads.commitment({})})
        if not (judge(stored(-2**62, 0), *empty, True) and judge(outside(-1, 0), *empty, False)):
            return None
        # the generator first: zip then runs it to its end (where it hands over the side job's answer)
        for result, (a, b) in zip(_map_jobs(_fast_range, jobs(), workers, side, side_result),
                                  _ranges(span, size_unit)):
            if result is None:
                return None
            first, last, first_us, end_us, local, extra, cp_local = result
            rules.record_time(last_us, first_us)
            last_us = end_us
            for chain, (seq, prev) in first.items():
                rules.chain_link(heads.get(chain), chain, seq, prev)
            roots: dict[int, bytes] = {}  # checkpoint size -> root, in this range
            heads_at: dict[int, tuple[int, bytes]] = {}  # checkpoint size -> heads committed
            for size, (hashes, heads_here) in cp_local.items():
                roots[size] = merkle.fold(chunks.hashes + hashes)
                heads_at[size] = chain_heads.commitment({**heads, **heads_here})
            heads.update(last)
            if b - a == size_unit:
                above = chunks.append(local[0])[1:]
                rules.stored_nodes(b"".join(h for _, _, h in above), extra)
            elif extra or b != span:
                return None
            else:
                chunks = merkle.Frontier(b, chunks.hashes + local)  # the last, partial range (counted in leaves)
            # 3. the range's checkpoints: signature by a checkpoint key valid at their size,
            # origin, root, heads
            if not (judge(stored(a, b), roots, heads_at, True) and judge(outside(a, b), roots, heads_at, False)):
                return None
            done += b - a
            if progress:
                progress(done, span)
        if judged[0] != count:  # rows came or went since the snapshot: doubt
            return None
    except rules.Invalid:
        return None
    finally:
        reader.close()
    rep.entries = span
    rep.size = span
    rep.chains = len(heads)
    rep.keys = len(registry.keys)
    rep.root = merkle.fold(chunks.hashes)
    return rep


def _map_jobs(fn, jobs: Iterable[tuple], workers: int, side: tuple | None = None,
              side_result: list | None = None) -> Iterator[Any]:
    """fn(*job) for every job, in order, on ``workers`` processes (a few jobs ahead: ``jobs`` is
    read as they are submitted, so it may be a generator). ``side`` = (function, args) runs first
    in the same pool; its answer is appended to ``side_result`` once the jobs are done. Without a
    pool (one worker or one job) the caller runs it."""
    it = iter(jobs)
    head = list(itertools.islice(it, 2))
    if workers <= 1 or len(head) <= 1:
        for job in itertools.chain(head, it):
            yield fn(*job)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=context(), initializer=_worker_started) as pool:
        side_future = pool.submit(side[0], *side[1]) if side is not None else None
        pending = collections.deque(pool.submit(fn, *job)
                                    for job in itertools.chain(head, itertools.islice(it, workers * 2 - len(head))))
        while pending:
            f = pending.popleft()
            job = next(it, None)
            if job is not None:
                pending.append(pool.submit(fn, *job))
            yield f.result()
        if side_future is not None and side_result is not None:
            side_result.append(side_future.result())


# --- the stored checkpoints a command may hand out -------------------------------------------

def signed_checkpoints(store: Any) -> list[tuple[int, bytes, bytes]]:
    """The stored checkpoints of ``store`` (a LedgerStore) that are the log's, judged by their
    signed notes (never by the size column): each note verifies with a checkpoint key of the
    log valid at its size (ledger/rules.py), and its size and root are the log's. Returned as
    (size, root, note) from the notes, in increasing size; a junk or altered row is left out
    (``reledger verify`` names it)."""
    size = store.size()
    registry = store.registry()  # key records carry their authorization and revocation indices
    out = {}
    for _row_size, _row_root, note in store.checkpoints():
        n = note_size(note)
        if n is None or n > size or n in out:
            continue
        try:
            cp = rules.checkpoint(note, rules.checkpoint_verifiers(registry, n), size=n, root=store.root(n))
        except rules.Invalid:
            continue
        out[n] = (n, cp.root, note)
    return [out[n] for n in sorted(out)]


def latest_signed_checkpoint(store: Any, page: int = 1000, within: int | None = None,
                             registry: Any = None) -> tuple[int, bytes, bytes] | None:
    """``signed_checkpoints(store)[-1]`` (None when that is empty), reading the stored rows a
    page at a time: memory does not grow with the number of checkpoints.

    The same judgement by the signed notes (never the size column): the answer is the greatest
    note size among the rows whose note verifies (a checkpoint key of the log valid at its size;
    its size and root the log's), and, among the rows whose note states that size, the first by
    the size column that verifies. One pass over the rows finds the greatest note size not
    greater than the log's, and the first row stating it; that row's note is then checked. Only
    when it does not verify (a forged or junk row) are the further rows stating that size
    checked, and then, if none verifies, the next smaller note size is looked for, and so on.
    ``within``: the latest one covering at most that many entries (default: the log's size);
    ``registry``: the key registry after at least that many entries, if the caller has it."""
    size = store.size() if within is None else min(within, store.size())
    if registry is None:
        registry = store.registry()  # key records carry their authorization and revocation indices
    below: int | None = None  # note sizes >= below were tried: none of their rows verified
    while True:
        best: tuple[int, int, bytes] | None = None  # (note size, row size, note) of its first row
        for row_size, _row_root, note in store.checkpoint_rows(page=page):
            n = note_size(note)
            if n is None or n > size or (below is not None and n >= below):
                continue
            if best is None or n > best[0]:
                best = (n, row_size, note)
        if best is None:
            return None
        n, first_row, first_note = best
        verifiers, root = rules.checkpoint_verifiers(registry, n), store.root(n)
        rows = itertools.chain([(first_row, b"", first_note)], store.checkpoint_rows(after=first_row, page=page))
        for _row_size, _row_root, note in rows:
            if note_size(note) != n:
                continue
            try:
                cp = rules.checkpoint(note, verifiers, size=n, root=root)
            except rules.Invalid:
                continue
            return n, cp.root, note
        below = n
