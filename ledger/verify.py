"""Verification of a whole log: signatures, keys, chains, the Merkle log and checkpoints.

This module checks; it never writes, and needs nothing but ``ledger/``: what an auditor reads to
check a whole log. The rules themselves are ``ledger/rules.py``; this module applies them in log
order. Reading a database and spreading the work over processes is ``reledger.storage.verify``
(its fast path runs the same rules range by range).

Two phases:

* **per entry** (:func:`check_entries`, order-free): parse the envelope strictly, recompute the
  entry hash and the Merkle leaf, check the signature with the public key that the key id names
  (keys are looked up in a table gathered from the log's KeyAuthorized entries; whether that key
  was *valid* is decided in the next phase);
* **in log order** (:class:`LogVerifier`): gap-free indices, record times, command ids, seq and
  prev of every chain, key validity at the entry's log position (registry replayed in order),
  the authority of its chain's role to assert its type (FORMAT.md 4.5, ``rules.authorized``),
  the Merkle tree rebuilt leaf by leaf and compared with the stored nodes and with every
  checkpoint (judged by its signed note: signature, origin, size, root, chain heads).

Any failure becomes a :class:`Problem` naming the log index, chain and seq.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from . import heads as chain_heads, merkle, rules
from .checkpoint import Checkpoint, NoteError
from .encoding import micros_to_time_text
from .entry import EntryError, SignedEntry
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
    entry_hash, nodes, envelope and command_id as stored in the log row)."""
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
            leaf = rules.leaf_hash(s.hash, r.index, micros_to_time_text(r.recorded_us))
        except (OverflowError, ValueError) as err:  # a record time no calendar can show
            out.append(Checked(r.index, r.recorded_us, r.chain, r.seq, None, None, None, None, None, None, stored,
                               f"malformed record time {r.recorded_us}: {err}"))
            continue
        pub = keys.get(e.key_id)
        if pub is None and r.index == 0 and e.type == "KeyAuthorized":
            pub = e.body.get("public_key") if isinstance(e.body.get("public_key"), bytes) else None
        try:
            rules.signature(pub, s.content, s.signature, e.key_id, e.chain)
            signed_with = pub
        except rules.Invalid:
            signed_with = None
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
    """Phase two: feed Checked results in log order, then call :meth:`finish`.

    ``checkpoints`` are stored checkpoint rows (size, root, note) as a database holds them; each
    is judged by its signed note (its size, its root), the row's size and root columns only
    compared with it."""

    def __init__(self, checkpoints: Iterable[tuple[Any, Any, Any]] = (), *, expected_size: int | None = None,
                 trusted_genesis: str | None = None, trusted_checkpoint_keys: list[str] = ()):
        self.report = Report()
        self.registry = Registry()
        self.frontier = merkle.Frontier()
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.next_index = 0
        self.expected_size = expected_size
        self.trusted_genesis = trusted_genesis
        self.trusted_keys = list(trusted_checkpoint_keys)
        rules.checkpoint_verifiers(self.registry, 0, self.trusted_keys)  # a malformed trusted key: NoteError now
        self.last_recorded_us: int | None = None
        self.commands: set[tuple[str, str]] = set()
        self.checkpoints: list[tuple[int, Any, Any, bytes]] = []  # (the note's size, row size, row root, note)
        for row_size, row_root, note in checkpoints:
            size = note_size(note)
            if size is None:  # (its size column is no log position: it names nothing signed)
                self.problem("checkpoint", f"a stored checkpoint row (size column {row_size!r}) holds no "
                             "checkpoint note")
                continue
            self.checkpoints.append((size, row_size, row_root, note))
        self.checkpoints.sort(key=lambda c: c[0])
        self._cp_pos = 0

    def problem(self, code: str, message: str, c: Checked | None = None, index: int | None = None) -> None:
        self.report.problems.append(Problem(code, message, c.index if c else index,
                                            c.chain if c else None, c.seq if c else None))

    def _rule(self, c: Checked, rule, *args) -> Any:
        try:
            return rule(*args)
        except rules.Invalid as e:
            self.problem(e.code, e.message, c)
        except RegistryError as e:
            self.problem("key", str(e), c)
        return None

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
        self._rule(c, rules.record_time, self.last_recorded_us, c.recorded_us)
        self.last_recorded_us = max(self.last_recorded_us or 0, c.recorded_us)
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
        self._rule(c, rules.command_new, self.commands, c.chain, c.command_id)
        self.commands.add((c.chain, c.command_id))
        if c.index == 0:
            rep.genesis = c.entry_hash.hex()
            if self.trusted_genesis and self.trusted_genesis != rep.genesis:
                self.problem("genesis", f"the genesis entry hash {rep.genesis} is not the trusted "
                             f"{self.trusted_genesis}", c)
        self._rule(c, rules.chain_link, self.heads.get(c.chain), c.chain, c.seq, c.prev)
        if c.chain not in self.heads:
            rep.chains += 1
        self.heads[c.chain] = (c.seq, c.entry_hash)
        # key validity (the registry as of this index) and signature
        signed = SignedEntry.parse(c.envelope) if c.envelope is not None else None
        pub = self._rule(c, self.registry.key_at, signed.entry if signed else c, c.index, c.recorded_us)
        if pub is not None and c.signed_with != pub:
            self.problem("signature", f"the signature is not valid for key {c.key_id} of {c.chain}", c)
        elif pub is not None and c.index > 0:  # (a bad key or signature is its problem already)
            self._rule(c, self.registry.authorized, c, c.index, c.recorded_us)
        if signed is not None:
            try:
                self.registry.apply(signed, c.index)
            except RegistryError as e:
                self.problem("registry", str(e), c)
        self._merkle(c, c.leaf_hash)

    def _merkle(self, c: Checked, leaf: bytes) -> None:
        completed = b"".join(h for _, _, h in self.frontier.append(leaf))
        self._rule(c, rules.stored_nodes, completed, c.stored[4])
        self._check_checkpoints()

    def _check_checkpoints(self) -> None:
        while self._cp_pos < len(self.checkpoints) and self.checkpoints[self._cp_pos][0] <= self.frontier.size:
            size, row_size, row_root, note = self.checkpoints[self._cp_pos]
            self._cp_pos += 1
            if size == self.frontier.size:
                self._check_checkpoint(size, row_size, row_root, note, self.frontier.root(),
                                       chain_heads.commitment(self.heads))

    def _check_checkpoint(self, size: int, row_size: Any, row_root: Any, note: bytes, computed: bytes,
                          heads: tuple[int, bytes]) -> None:
        self.report.checkpoints += 1
        where = max(size - 1, 0)
        try:
            verifiers = rules.checkpoint_verifiers(self.registry, size, self.trusted_keys)
            rules.checkpoint(note, verifiers, size=size, root=computed, heads=heads)
        except rules.Invalid as e:
            self.problem(e.code, e.message, index=where)
            return
        if row_size != size or row_root != computed:
            self.problem("checkpoint", f"checkpoint of size {size}: the stored row says size {row_size!r} and root "
                         f"{row_root.hex()[:16] if isinstance(row_root, bytes) else row_root!r}..., not its signed "
                         "note's (the row was altered; the note is intact)", index=where)

    def finish(self) -> Report:
        rep = self.report
        size = self.frontier.size
        if self.expected_size is not None and self.next_index < self.expected_size:
            self.problem("gap", f"log indices {self.next_index}..{self.expected_size - 1} are missing",
                         index=self.next_index)
        if size == 0:
            self._check_checkpoints()
        for cp_size, _, _, note in self.checkpoints[self._cp_pos:]:
            if cp_size <= size:
                continue
            # only a checkpoint the operator really signed says the log was longer
            try:
                rules.checkpoint(note, rules.checkpoint_verifiers(self.registry, cp_size, self.trusted_keys),
                                 size=cp_size)
            except rules.Invalid as e:
                self.problem("checkpoint", f"{e.message} (a checkpoint beyond the log's {size} entries)", index=size)
                continue
            self.problem("truncated", f"a checkpoint signs {cp_size} entries but the log holds only {size}: "
                         "the log was truncated or entries were deleted", index=size)
        rep.size = size
        rep.root = self.frontier.root()
        rep.keys = len(self.registry.keys)
        return rep


def note_size(note: Any) -> int | None:
    """The tree size a checkpoint note states (its signature NOT checked), None if it states
    none: which size a stored checkpoint is judged at."""
    if not isinstance(note, bytes):
        return None
    try:
        return Checkpoint.parse(note[:note.rfind(b"\n\n") + 1]).size
    except (NoteError, ValueError):
        return None


def verify_log(records: Iterable[Any], checkpoints: Iterable[tuple[Any, Any, Any]] = (), *,
               trusted_genesis: str | None = None, trusted_checkpoint_keys: list[str] = ()) -> Report:
    """Every check of FORMAT.md 7 over a log held in memory: ``records`` in log order (objects
    as :func:`check_entries` takes), ``checkpoints`` as (size, root, note) rows."""
    records = list(records)
    keys = key_table(r.envelope for r in records if r.envelope is not None and r.type in REGISTRY_TYPES)
    v = LogVerifier(checkpoints, expected_size=None, trusted_genesis=trusted_genesis,
                    trusted_checkpoint_keys=trusted_checkpoint_keys)
    for c in check_entries(records, keys):
        v.feed(c)
    return v.finish()
