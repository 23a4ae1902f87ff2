"""Verification of a whole log: signatures, keys, chains, the Merkle log and checkpoints.

This module checks; it never writes. It needs only ``ledger/`` (and, to read a database, the
read-only ``reledger.storage.reader``), so an auditor can run it alone.

Two phases, so that the expensive part runs on every core:

* **per entry** (:func:`check_entries`, parallel, order-free): parse the envelope strictly,
  recompute the entry hash and the Merkle leaf, check the signature with the public key that
  the key id names (keys are looked up in a table gathered from the log's KeyAuthorized
  entries; whether that key was *valid* is decided in the next phase);
* **in log order** (:class:`LogVerifier`, sequential, cheap): gap-free indices, seq and prev
  of every chain, key validity at the entry's log position (registry replayed in order),
  the Merkle tree rebuilt leaf by leaf and compared with the stored nodes and with every
  stored checkpoint (root, size and operator signature).

Any failure becomes a :class:`Problem` naming the log index, chain and seq.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import heads as chain_heads, merkle
from .checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from .encoding import micros_to_time_text
from .encoding import EncodingError
from .entry import ZERO_HASH, EntryError, SignedEntry, leaf_bytes
from .keys import key_id as compute_key_id
from .registry import REGISTRY_TYPES, Registry, RegistryError


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    index: int | None = None
    chain: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "index": self.index, "chain": self.chain,
                "seq": self.seq}

    def __str__(self) -> str:
        where = f"log index {self.index}" if self.index is not None else "log"
        if self.chain is not None:
            where += f" ({self.chain}:{self.seq})"
        return f"{where}: {self.message}"


@dataclass
class Report:
    entries: int = 0
    chains: int = 0
    keys: int = 0
    checkpoints: int = 0
    size: int = 0
    root: bytes = merkle.EMPTY_ROOT
    genesis: str | None = None  # entry hash of log index 0, the trust anchor
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        ranked = [p for p in self.problems if p.index is not None]
        return min(ranked, key=lambda p: p.index) if ranked else (self.problems[0] if self.problems else None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "chains": self.chains, "keys": self.keys,
                "checkpoints": self.checkpoints, "size": self.size, "root": self.root.hex(),
                "genesis": self.genesis, "first_problem": self.first.to_dict() if self.first else None,
                "problems": [p.to_dict() for p in self.problems[:100]], "problem_count": len(self.problems)}


@dataclass(frozen=True)
class Checked:
    """Phase-one result for one stored entry."""

    index: int
    recorded_us: int
    chain: str | None
    seq: int | None
    type: str | None
    prev: bytes | None
    key_id: str | None
    entry_hash: bytes | None
    leaf_hash: bytes | None
    signed_with: bytes | None  # the public key the signature verified with, None if it did not
    stored: tuple  # (chain, seq, type, entry_hash, nodes) as stored beside the entry
    error: str | None = None  # malformed or missing envelope
    envelope: bytes | None = None  # kept for registry entries only
    command_id: str | None = None


def check_entries(records: Iterable[Any], keys: dict[str, bytes]) -> list[Checked]:
    """Phase one for a run of records (objects with index, recorded_us, chain, seq, type,
    entry_hash, nodes, envelope)."""
    out = []
    for r in records:
        stored = (r.chain, r.seq, r.type, r.entry_hash, r.nodes, getattr(r, "command_id", None))
        if r.envelope is None:
            out.append(Checked(r.index, r.recorded_us, r.chain, r.seq, None, None, None, None, None, None, stored,
                               "missing: the entry is gone from the events table"))
            continue
        try:
            s = SignedEntry.parse(r.envelope)
        except EntryError as e:
            out.append(Checked(r.index, r.recorded_us, r.chain, r.seq, None, None, None, None, None, None, stored,
                               f"malformed entry: {e}"))
            continue
        e = s.entry
        try:
            leaf = merkle.leaf_hash(leaf_bytes(s.hash, r.index, micros_to_time_text(r.recorded_us)))
        except (OverflowError, ValueError) as err:  # a record time no calendar can show
            out.append(Checked(r.index, r.recorded_us, r.chain, r.seq, None, None, None, None, None, None, stored,
                               f"malformed record time {r.recorded_us}: {err}"))
            continue
        pub = keys.get(e.key_id)
        if pub is None and r.index == 0 and e.type == "KeyAuthorized":
            pub = e.body.get("public_key") if isinstance(e.body.get("public_key"), bytes) else None
        signed_with = pub if pub is not None and s.signature_valid(pub) else None
        out.append(Checked(r.index, r.recorded_us, e.chain, e.seq, e.type, e.prev, e.key_id, s.hash, leaf,
                           signed_with, stored, None, r.envelope if e.type in REGISTRY_TYPES else None,
                           e.command_id))
    return out


def key_table(registry_envelopes: Iterable[bytes]) -> dict[str, bytes]:
    """key id -> public key from every KeyAuthorized entry (validity is checked later)."""
    keys: dict[str, bytes] = {}
    for env in registry_envelopes:
        try:
            e = SignedEntry.parse(env).entry
        except EntryError:
            continue
        pub = e.body.get("public_key") if e.type == "KeyAuthorized" else None
        if isinstance(pub, bytes) and len(pub) == 32 and compute_key_id(pub) == e.body.get("key_id"):
            keys.setdefault(e.body["key_id"], pub)
    return keys


class LogVerifier:
    """Phase two: feed Checked results in log order, then call :meth:`finish`."""

    def __init__(self, checkpoints: list[tuple[int, bytes, bytes]] = (), *, expected_size: int | None = None,
                 trusted_genesis: str | None = None, trusted_checkpoint_keys: list[str] = (),
                 origin: str | None = None):
        self.report = Report()
        self.registry = Registry()
        self.frontier = merkle.Frontier()
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.next_index = 0
        self.checkpoints = sorted(checkpoints)
        self._cp_pos = 0
        self.expected_size = expected_size
        self.trusted_genesis = trusted_genesis
        self.trusted_keys = [NoteVerifier.from_vkey(v) for v in trusted_checkpoint_keys]
        self.origin = origin
        self.last_recorded_us = 0
        self.commands: set[tuple[str, str]] = set()

    def problem(self, code: str, message: str, c: Checked | None = None, index: int | None = None) -> None:
        self.report.problems.append(Problem(code, message, c.index if c else index,
                                            c.chain if c else None, c.seq if c else None))

    def feed(self, c: Checked) -> None:
        rep = self.report
        if c.index != self.next_index:
            if c.index > self.next_index:
                self.problem("gap", f"log indices {self.next_index}..{c.index - 1} are missing", index=self.next_index)
            else:
                self.problem("order", f"log index {c.index} appears twice or out of order", c)
                return
        self.next_index = c.index + 1
        rep.entries += 1
        if c.index == 0:
            self._check_checkpoints()  # a checkpoint of the empty log
        if c.recorded_us < self.last_recorded_us:
            self.problem("time", "recorded before the entry preceding it in the log (record times go backwards)", c)
        self.last_recorded_us = max(self.last_recorded_us, c.recorded_us)
        if c.error:
            self.problem("missing" if c.error.startswith("missing") else "malformed", c.error, c)
            # keep the Merkle tree going with the stored leaf so later checks stay meaningful
            self._merkle(c, c.stored[4][:32] if c.stored[4] else bytes(32))
            return
        s_chain, s_seq, s_type, s_hash, s_nodes, s_command = c.stored
        if (s_chain, s_seq, s_type) != (c.chain, c.seq, c.type):
            self.problem("mismatch", f"the log row says {s_chain}:{s_seq} {s_type} but the entry is "
                         f"{c.chain}:{c.seq} {c.type}", c)
        if s_hash != c.entry_hash:
            self.problem("hash", "the entry's bytes do not match the entry hash recorded in the log", c)
        if s_command is not None and s_command != c.command_id:
            self.problem("mismatch", f"the log row's command id {s_command} is not the entry's {c.command_id}", c)
        if (c.chain, c.command_id) in self.commands:
            self.problem("command", f"command id {c.command_id} was already used on chain {c.chain}", c)
        self.commands.add((c.chain, c.command_id))
        if c.index == 0:
            rep.genesis = c.entry_hash.hex()
            if self.trusted_genesis and self.trusted_genesis != rep.genesis:
                self.problem("genesis", f"the genesis entry hash {rep.genesis} is not the trusted "
                             f"{self.trusted_genesis}", c)
        # chain
        head_seq, head_hash = self.heads.get(c.chain, (0, ZERO_HASH))
        if c.seq != head_seq + 1:
            self.problem("chain", f"seq {c.seq} does not follow seq {head_seq} of chain {c.chain}", c)
        elif c.prev != head_hash:
            self.problem("chain", f"prev does not match the hash of {c.chain}:{head_seq}", c)
        if c.chain not in self.heads:
            rep.chains += 1
        self.heads[c.chain] = (c.seq, c.entry_hash)
        # key validity and signature
        signed = SignedEntry.parse(c.envelope) if c.envelope is not None else _Stub(c)
        try:
            pub = self.registry.key_for(signed, c.index, c.recorded_us)
            if c.signed_with is None or c.signed_with != pub:
                self.problem("signature", f"the signature is not valid for key {c.key_id} of {c.chain}", c)
        except RegistryError as e:
            self.problem("key", str(e), c)
        if c.envelope is not None:
            try:
                self.registry.apply(signed, c.index)
            except RegistryError as e:
                self.problem("registry", str(e), c)
        self._merkle(c, c.leaf_hash)

    def _merkle(self, c: Checked, leaf: bytes) -> None:
        completed = self.frontier.append(leaf)
        expected = b"".join(h for _, _, h in completed)
        if c.stored[4] != expected:
            self.problem("merkle", "the Merkle nodes stored for this entry are not the ones its leaf completes", c)
        self._check_checkpoints()

    def _check_checkpoints(self) -> None:
        while self._cp_pos < len(self.checkpoints) and self.checkpoints[self._cp_pos][0] <= self.frontier.size:
            size, root, note = self.checkpoints[self._cp_pos]
            self._cp_pos += 1
            if size == self.frontier.size:
                self._check_checkpoint(size, root, note, self.frontier.root())

    def _check_checkpoint(self, size: int, root: bytes, note: bytes, computed: bytes) -> None:
        self.report.checkpoints += 1
        verifiers = list(self.trusted_keys)
        if not verifiers:
            for k in self.registry.checkpoint_keys(size):
                if k.name:
                    verifiers.append(NoteVerifier(k.name, Ed25519PublicKey.from_public_bytes(k.public_key)))
            if not verifiers:
                self.problem("checkpoint", f"checkpoint of size {size}: no checkpoint key was registered in the "
                             "log before it, so nobody could sign it", index=max(size - 1, 0))
                return
        try:
            text, signed_by = open_note(note, verifiers)
            cp = Checkpoint.parse(text)
        except (NoteError, ValueError) as e:
            self.problem("checkpoint", f"checkpoint of size {size}: {e}", index=max(size - 1, 0))
            return
        if all(cp.origin != v.name for v in signed_by):
            self.problem("checkpoint", f"checkpoint of size {size}: origin {cp.origin!r} is not the name of the key "
                         "that signed it (the log's origin)", index=max(size - 1, 0))
        if cp.size != size or cp.root != root:
            self.problem("checkpoint", f"checkpoint of size {size}: the signed note says size {cp.size}", index=size - 1)
        if cp.root != computed:
            self.problem("checkpoint", f"checkpoint of size {size}: the log's Merkle root {computed.hex()[:16]}... "
                         f"is not the signed root {cp.root.hex()[:16]}...", index=max(size - 1, 0))
        try:
            signed_heads = chain_heads.of_extensions(cp.extensions)
        except chain_heads.HeadsError as e:
            self.problem("checkpoint", f"checkpoint of size {size}: {e}", index=max(size - 1, 0))
            return
        if signed_heads is not None and signed_heads != chain_heads.commitment(self.heads):
            count, root = chain_heads.commitment(self.heads)
            self.problem("checkpoint", f"checkpoint of size {size}: the chain heads it signs ({signed_heads[0]} chains, "
                         f"root {signed_heads[1].hex()[:16]}...) are not the log's ({count} chains, root "
                         f"{root.hex()[:16]}...)", index=max(size - 1, 0))

    def finish(self) -> Report:
        rep = self.report
        size = self.frontier.size
        if self.expected_size is not None and self.next_index < self.expected_size:
            self.problem("gap", f"log indices {self.next_index}..{self.expected_size - 1} are missing",
                         index=self.next_index)
        for cp_size, _, _ in self.checkpoints[self._cp_pos:]:
            if cp_size > size:
                self.problem("truncated", f"a checkpoint signs {cp_size} entries but the log holds only {size}: "
                             "the log was truncated or entries were deleted", index=size)
        if size == 0:
            self._check_checkpoints()
        rep.size = size
        rep.root = self.frontier.root()
        rep.keys = len(self.registry.keys)
        return rep


class _Stub:
    """Enough of a SignedEntry for Registry.key_for when only phase-one facts are at hand."""

    __slots__ = ("entry", "chain", "seq", "type", "key_id")

    def __init__(self, c: Checked):
        self.entry = self
        self.chain, self.seq, self.type, self.key_id = c.chain, c.seq, c.type, c.key_id


# --- driving it over a database ----------------------------------------------------------

def _check_range(url: str, start: int, stop: int, keys: dict[str, bytes]) -> list[Checked]:
    from reledger.storage.reader import LogReader

    with LogReader(url) as r:
        return check_entries(r.iter_records(start, stop), keys)


def _integrity(url: str, with_registry: bool = False, unlogged: bool = True) -> dict[str, Any]:
    """The whole-table scans (one snapshot): row counts, events without a log row, duplicate
    command ids, values of the wrong type. A clean ledger has none of these problems. With
    ``with_registry``, the registry entries and stored checkpoints of the same snapshot too.

    ``unlogged=False`` skips the anti-join for events without a log row. The fast path may:
    it finds the event of every log row, and checks each chain's seqs to be consecutive along
    the log (so those events are distinct), so when the events table holds exactly as many
    rows as the log, no event is left without a log row."""
    from reledger.storage.reader import LogReader

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
    """Verify the ledger at ``url`` using ``workers`` processes for phase one.

    ``checkpoint_notes`` are extra signed checkpoints kept outside the database (by a witness
    or an earlier audit): they must be consistent with the log too.

    A clean ledger takes the fast path (every check, range by range on every core), while the
    whole-table integrity scans run beside it in a thread; anything unclean, or any doubt of the
    fast path, runs the detailed path, which names every problem."""
    from reledger.storage.reader import LogReader

    workers = workers or os.cpu_count() or 1
    cps = _external_checkpoints(checkpoint_notes)
    with LogReader(url) as r:
        r.begin_snapshot()  # size, registry and checkpoints from one consistent view
        cur = r.cursor()
        size = r.queries.size(cur)[0]
        max_index = _max_index(r)
        span = max(size, max_index + 1)
        registry_records = r.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, span)
        stored_cps = r.queries.checkpoints(cur)
        r.end_snapshot()
    if size == span:
        side_result: list = []  # the scans, run in the fast path's process pool beside the ranges
        fast = _fast_verify(url, span, registry_records, sorted(list(stored_cps) + cps[0]), workers,
                            trusted_genesis, list(trusted_checkpoint_keys), progress,
                            side=(_integrity, (url, False, False)), side_result=side_result)
        if fast is not None:
            scans = side_result[0] if side_result else _integrity(url)
            # the scans saw a snapshot at least as recent: a clean one covers every entry verified
            if scans["clean"] and scans["size"] >= span:
                return fast
    return _verify_detailed(url, workers, chunk, trusted_genesis, trusted_checkpoint_keys, cps, progress)


def _external_checkpoints(checkpoint_notes: list[bytes]) -> tuple[list[tuple[int, bytes, bytes]], list[int]]:
    cps, external = [], []
    for note in checkpoint_notes:
        try:
            text = note.split(b"\n\n", 1)[0] + b"\n"
            cp = Checkpoint.parse(text)
            cps.append((cp.size, cp.root, note))
            external.append(cp.size)
        except (ValueError, IndexError) as e:
            raise ValueError(f"an external checkpoint is malformed: {e}") from e
    return cps, external


def _verify_detailed(url: str, workers: int, chunk: int, trusted_genesis: str | None,
                     trusted_checkpoint_keys: list[str], external_cps: tuple, progress) -> Report:
    """Every check, entry by entry, naming every problem (one snapshot for the whole-table
    scans, the registry and the checkpoints)."""
    scans = _integrity(url, with_registry=True)
    span, damaged, unlogged = scans["span"], scans["damaged"], scans["unlogged"]
    log_min, log_count, events, max_index = scans["log_min"], scans["log_count"], scans["events"], scans["max_index"]
    keys = key_table(rec.envelope for rec in scans["registry_records"] if rec.envelope is not None)
    cps = list(scans["checkpoints"]) + external_cps[0]
    v = LogVerifier(cps, expected_size=span, trusted_genesis=trusted_genesis,
                    trusted_checkpoint_keys=trusted_checkpoint_keys)
    ranges = [(s, min(span, s + chunk)) for s in range(0, span, chunk)]
    done = 0
    for batch in _map_ranges(url, ranges, keys, workers):
        for c in batch:
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
    if unlogged:
        for chain, seq in unlogged:
            rep.problems.append(Problem("unlogged", f"entry {chain}:{seq} is in the events table but not in the log",
                                        None, chain, seq))
    elif events != rep.entries - sum(1 for p in rep.problems if p.code == "missing"):
        rep.problems.append(Problem("unlogged", f"the events table holds {events} entries, the log {rep.entries}"))
    return rep


# --- the fast path: a clean log checked range by range on every core --------------------------
#
# Every check of LogVerifier runs here too, but each worker process checks a whole aligned
# range of 2**FAST_BITS entries on its own (signatures, key validity from a key timeline built
# from the registry entries first, chain links and record times inside the range, the Merkle
# subtree of the range against the stored nodes) and returns a summary; the parent joins the
# ranges (chain links and times across them, the tree above them, every checkpoint). Any doubt
# returns None, and verify_database then runs the detailed path, which names every problem.

FAST_BITS = 12


_WORKER_READERS: dict[str, Any] = {}  # in a worker process: url -> its LogReader, for all its ranges


def _read_range(url: str, start: int, stop: int) -> list | None:
    """_range_rows with a reader opened once per worker process (a PostgreSQL connection costs
    the server a backend process). The parent process never keeps one, so a forked child
    never inherits a live connection."""
    import multiprocessing

    from reledger.storage.reader import LogReader

    if multiprocessing.parent_process() is None:
        with LogReader(url) as r:
            return _range_rows(r, start, stop)
    r = _WORKER_READERS.get(url)
    if r is None:
        r = _WORKER_READERS[url] = LogReader(url)
    return _range_rows(r, start, stop)


def _range_rows(r, start: int, stop: int) -> list | None:
    """The log rows [start, stop) with their envelopes: (idx, chain, seq, type, entry_hash,
    recorded_us, nodes, envelope, command_id) tuples in log order; None when in doubt."""
    from reledger.storage.reader import _tuple

    cur = r.cursor()
    log_sql = ("SELECT l.idx, l.chain, l.seq, l.type, l.entry_hash, l.recorded_us, l.nodes, {envelope}, "
               "l.command_id FROM {log} l WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx")
    if r.tables.backend == "sqlite":
        # in-process: a correlated primary-key look-up per row is cheap
        cur.execute(r.tables.q(log_sql.replace("{envelope}", "(SELECT e.state FROM {events} e WHERE "
                                                "e.originator_id = l.chain AND e.originator_version = l.seq)")),
                    (start, stop))
        return cur.fetchall()  # sqlite3 rows are tuples already
    # PostgreSQL: the server's work counts (it shares the cores). A batch's events are inserted
    # in log order in the transaction that writes its log rows, so the range's envelopes are
    # one range of notification ids: two look-ups and one index range scan instead of a
    # look-up per row. Rows are matched by (chain, seq); anything else is doubt.
    cur.execute(r.tables.q(log_sql.replace("{envelope}", "NULL")), (start, stop))
    rows = [_tuple(row) for row in cur.fetchall()]
    if len(rows) != stop - start:
        return None
    ends = []
    for row in (rows[0], rows[-1]):
        cur.execute(r.tables.q("SELECT notification_id FROM {events} WHERE originator_id = ? AND "
                               "originator_version = ?"), (row[1], row[2]))
        found = cur.fetchone()
        if found is None:
            return None
        ends.append(_tuple(found)[0])
    if ends[1] - ends[0] + 1 > 2 * len(rows) + 1024:  # not one contiguous run: ask row by row
        cur.execute(r.tables.q(log_sql.replace("{envelope}", "(SELECT e.state FROM {events} e WHERE "
                                                "e.originator_id = l.chain AND e.originator_version = l.seq)")),
                    (start, stop))
        return [_tuple(row) for row in cur.fetchall()]
    cur.execute(r.tables.q("SELECT originator_id, originator_version, state FROM {events} "
                           "WHERE notification_id >= ? AND notification_id <= ?"), (ends[0], ends[1]))
    states = {(e[0], e[1]): e[2] for e in map(_tuple, cur.fetchall())}
    out = []
    for row in rows:
        env = states.get((row[1], row[2]))
        if env is None:
            return None
        out.append(row[:7] + (env,) + row[8:])
    return out


def _fast_range(url: str, start: int, stop: int, keys: dict, registered: dict, registry_indices: frozenset,
                cp_sizes: tuple) -> tuple | None:
    """Check the aligned range [start, stop) in one process. The loop is the per-entry hot path
    of an audit, so it works on raw rows and inlines what it can: the entry's fast parse
    (entry._split_envelope and entry._fast_content, falling back to SignedEntry.parse), the
    leaf bytes (entry.leaf_bytes) and the Merkle frontier (merkle.Frontier.append)."""
    from cryptography.exceptions import InvalidSignature

    from .entry import ENTRY_TAG, LeafHasher, _fast_content, _split_envelope
    from .keys import _public_key

    rows = _read_range(url, start, stop)
    if rows is None or len(rows) != stop - start:
        return None
    sha256 = hashlib.sha256
    hasher_us, leaf_hash = None, None
    tree: list[bytes] = []  # the range's frontier (the range is aligned: it starts a subtree)
    first: dict[str, tuple[int, bytes]] = {}
    last: dict[str, tuple[int, bytes]] = {}
    cp_local: dict[int, list[bytes]] = {}
    previous_us = -1
    first_us = None
    extra = b""
    n_rows = len(rows)
    verifiers: dict[bytes, Any] = {}  # public key bytes -> key object, once per range
    for i, (idx, chain, seq, type_, entry_hash, recorded_us, nodes, env, command_id) in enumerate(rows):
        if (idx != start + i or type(env) is not bytes or type(recorded_us) is not int or recorded_us < previous_us
                or type(nodes) is not bytes):
            return None
        if first_us is None:
            first_us = recorded_us
        previous_us = recorded_us
        parts = _split_envelope(env)
        m = _fast_content(parts[0]) if parts is not None else None
        if m is None:
            try:
                s = SignedEntry.parse(env)
            except (EntryError, EncodingError):
                return None
            content, signature, m = s.content, s.signature, s.entry.as_map()
        else:
            content, signature = parts
        h = sha256(env).digest()
        e_chain, e_seq = m["chain"], m["seq"]
        if (chain, seq, type_, entry_hash, command_id) != (e_chain, e_seq, m["type"], h, m["command_id"]):
            return None
        if m["type"] in REGISTRY_TYPES:
            if idx not in registry_indices:  # checked, in order, before the ranges
                return None
        else:
            k = keys.get(m["key_id"])
            if (k is None or k[0] != e_chain or k[2] >= idx or (k[3] is not None and k[3] < idx)
                    or recorded_us < k[4] or (k[5] is not None and recorded_us >= k[5])
                    or registered.get(e_chain, idx) >= idx):
                return None
            try:
                key = verifiers.get(k[1])
                if key is None:
                    key = verifiers[k[1]] = _public_key(k[1])
                key.verify(signature, ENTRY_TAG + content)
            except (InvalidSignature, ValueError):
                return None
        if e_chain in last:
            head_seq, head = last[e_chain]
            if e_seq != head_seq + 1 or m["prev"] != head:
                return None
        else:
            first[e_chain] = (e_seq, m["prev"])
        last[e_chain] = (e_seq, h)
        if recorded_us != hasher_us:
            try:
                leaf_hash = LeafHasher(micros_to_time_text(recorded_us))
            except (OverflowError, ValueError):
                return None
            hasher_us = recorded_us
        # the range is aligned, so the leaf's position in it decides the nodes it completes
        completed = merkle.append_leaf(tree, i, leaf_hash(h, idx))
        if nodes != completed:
            # only the range's last leaf may complete nodes above the range (checked by the parent)
            if i != n_rows - 1 or not nodes.startswith(completed):
                return None
            extra = nodes[len(completed):]
        if idx + 1 in cp_sizes:
            cp_local[idx + 1] = (list(tree), dict(last))  # the subtree and the range's chain heads there
    return (first, last, first_us, previous_us, tree, extra, cp_local)


def _fast_verify(url: str, span: int, registry_records: list, checkpoints: list, workers: int,
                 trusted_genesis: str | None, trusted_checkpoint_keys: list[str],
                 progress: Callable[[int, int], None] | None, side: tuple | None = None,
                 side_result: list | None = None) -> Report | None:
    rep = Report()
    # 1. the registry, in log order: its entries fully checked, and the key timeline
    registry = Registry()
    registered: dict[str, int] = {}
    for rec in registry_records:
        if rec.envelope is None:
            return None
        try:
            s = SignedEntry.parse(rec.envelope)
            pub = registry.key_for(s, rec.index, rec.recorded_us)
            if not s.signature_valid(pub):
                return None
            registry.apply(s, rec.index)
        except (EntryError, RegistryError):
            return None
        for party in registry.roles:
            registered.setdefault(party, rec.index)
        if rec.index == 0:
            rep.genesis = s.hash.hex()
    if not registry_records or registry_records[0].index != 0:
        return None
    if trusted_genesis and trusted_genesis != rep.genesis:
        return None
    keys = {k.key_id: (k.party, k.public_key, k.authorized_at, k.revoked_at, k.valid_from_us, k.valid_until_us)
            for k in registry.keys.values() if k.purpose == "entries"}
    indices = frozenset(r.index for r in registry_records)
    if any(size > span for size, _, _ in checkpoints):
        return None
    size_unit = 1 << FAST_BITS
    ranges = [(a, min(span, a + size_unit)) for a in range(0, span, size_unit)]
    jobs = [(url, a, b, keys, registered, indices, tuple(sz for sz, _, _ in checkpoints if a < sz <= b))
            for a, b in ranges]
    # 2. the ranges, joined in order
    chunks = merkle.Frontier()  # the tree above the ranges: one leaf per full range
    heads: dict[str, tuple[int, bytes]] = {}
    roots: dict[int, bytes] = {}
    heads_at: dict[int, tuple[int, bytes]] = {0: chain_heads.commitment({})}  # checkpoint size -> heads committed
    last_us = -1
    done = 0
    # the generator first: zip then runs it to its end (where it hands over the side job's answer)
    for result, (a, b) in zip(_map_jobs(_fast_range, jobs, workers, side, side_result), ranges):
        if result is None:
            return None
        first, last, first_us, end_us, local, extra, cp_local = result
        if first_us < last_us:
            return None
        last_us = end_us
        for chain, (seq, prev) in first.items():
            head_seq, head_hash = heads.get(chain, (0, ZERO_HASH))
            if seq != head_seq + 1 or prev != head_hash:
                return None
        for size, (hashes, heads_here) in cp_local.items():
            roots[size] = merkle._fold(chunks.hashes + hashes)
            heads_at[size] = chain_heads.commitment({**heads, **heads_here})
        heads.update(last)
        if b - a == size_unit:
            above = chunks.append(local[0])[1:]
            if extra != b"".join(h for _, _, h in above):
                return None
        elif extra or b != span:
            return None
        else:
            chunks = merkle.Frontier(a + (b - a), chunks.hashes + local)  # the last, partial range
        done += b - a
        if progress:
            progress(done, span)
    if span and chunks.size != span:  # the last range was full: count its leaves, not ranges
        chunks = merkle.Frontier(span, chunks.hashes)
    # 3. the checkpoints: root, signature by a checkpoint key of the log, origin
    verifiers_for = (lambda size: [NoteVerifier.from_vkey(v) for v in trusted_checkpoint_keys]) \
        if trusted_checkpoint_keys else (lambda size: [
            NoteVerifier(k.name, Ed25519PublicKey.from_public_bytes(k.public_key))
            for k in registry.checkpoint_keys(size) if k.name])
    for size, root, note in checkpoints:
        expected = merkle.EMPTY_ROOT if size == 0 else roots.get(size)
        try:
            text, signed_by = open_note(note, verifiers_for(size))
            cp = Checkpoint.parse(text)
            signed_heads = chain_heads.of_extensions(cp.extensions)
        except (NoteError, ValueError):  # (HeadsError is a ValueError)
            return None
        if expected is None or cp.size != size or cp.root != root or root != expected or \
                all(cp.origin != v.name for v in signed_by):
            return None
        if signed_heads is not None and signed_heads != heads_at.get(size):
            return None
        rep.checkpoints += 1
    rep.entries = span
    rep.size = span
    rep.chains = len(heads)
    rep.keys = len(registry.keys)
    rep.root = merkle._fold(chunks.hashes) if span else merkle.EMPTY_ROOT
    return rep


def _map_jobs(fn, jobs: list[tuple], workers: int, side: tuple | None = None,
              side_result: list | None = None) -> Iterator[Any]:
    """fn(*job) for every job, in order, on ``workers`` processes (a few jobs ahead). ``side``
    = (function, args) runs first in the same pool (in a process: forking a process that runs
    threads can hand a child a lock held for ever); its answer is appended to ``side_result``
    once the jobs are done. Without a pool (one worker or one job) the caller runs it."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        side_future = pool.submit(side[0], *side[1]) if side is not None else None
        pending = [pool.submit(fn, *job) for job in jobs[: workers * 2]]
        nxt = len(pending)
        while pending:
            f = pending.pop(0)
            if nxt < len(jobs):
                pending.append(pool.submit(fn, *jobs[nxt]))
                nxt += 1
            yield f.result()
        if side_future is not None and side_result is not None:
            side_result.append(side_future.result())


def _max_index(r) -> int:
    cur = r.cursor()
    cur.execute(r.tables.q("SELECT MAX(idx) FROM {log} WHERE {int_idx}"))
    row = cur.fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def _map_ranges(url: str, ranges, keys, workers: int) -> Iterator[list[Checked]]:
    if workers <= 1 or len(ranges) <= 1:
        for start, stop in ranges:
            yield _check_range(url, start, stop, keys)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = []
        ahead = workers * 2
        it = iter(ranges)
        for start, stop in it:
            futures.append(pool.submit(_check_range, url, start, stop, keys))
            if len(futures) >= ahead:
                break
        while futures:
            f = futures.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                futures.append(pool.submit(_check_range, url, nxt[0], nxt[1], keys))
            yield f.result()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
