"""The append rule: what a log accepts of groups of checked entries, and the rows they add.

:func:`plan` is a pure function of the store's caches (what the log holds: its size, last
record time, Merkle frontier, chain heads and key registry), the command ids already recorded,
the record time, and the checked entries. It reads no database and changes none of its inputs;
it answers the rows to insert, each group's receipts or refusal, and the caches after the commit.

Each group is all-or-nothing; the groups of one call share one transaction and one record
time. An entry is accepted when its command id is new on its chain (or names the same entry:
the original receipt, a duplicate), its seq and prev extend its chain, the registry holds a key
valid for it at its index (``Registry.key_for``) and its signature verifies with that key
(already checked by the pool when the key was known then), and a registry entry's body applies.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

from reledger.ledger import merkle
from reledger.ledger.encoding import micros_to_time_text
from reledger.ledger.entry import LeafHasher, SignedEntry, ZERO_HASH
from reledger.ledger.registry import REGISTRY_TYPES, Registry, RegistryError


class AppendError(ValueError):
    """An entry (and so its whole group) was refused; nothing of the group was written.

    ``code`` is one of: malformed, signature, unregistered, unknown_key, foreign_key,
    revoked_key, expired_key, forbidden, genesis, body, conflict, command_conflict.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None, position: int | None = None,
                 chain: str | None = None, seq: int | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.position, self.chain, self.seq = position, chain, seq

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field,
                "position": self.position, "chain": self.chain, "seq": self.seq}


@dataclass(frozen=True)
class Receipt:
    """What the ledger answers for an accepted entry."""

    index: int
    chain: str
    seq: int
    entry_hash: bytes
    recorded_at: str
    duplicate: bool = False  # True when the command id had been recorded already

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "chain": self.chain, "seq": self.seq, "entry_hash": self.entry_hash.hex(),
                "recorded_at": self.recorded_at, "duplicate": self.duplicate}


_new = object.__new__


def receipt(index: int, chain: str, seq: int, entry_hash: bytes, recorded_at: str, duplicate: bool) -> Receipt:
    """Receipt(...) without the frozen dataclass's per-field object.__setattr__ (hot path)."""
    r = _new(Receipt)
    d = r.__dict__
    d["index"] = index
    d["chain"] = chain
    d["seq"] = seq
    d["entry_hash"] = entry_hash
    d["recorded_at"] = recorded_at
    d["duplicate"] = duplicate
    return r


class Checked(tuple):
    """An entry parsed, with its signature checked if its key was known then: the one form in
    which the plan reads an entry, whichever path checked it (a worker process's compact answer
    from ``entry.check_envelopes``, or a SignedEntry checked in a thread: :meth:`of`).

    ``verified_with``: the public key the signature was verified with (None: not checked yet;
    the plan checks it with the key the registry names). ``body``: given for registry types
    (what ``Registry`` reads), None or the body for others. ``entry`` is the object itself, so
    that ``Registry.key_for`` and ``apply`` read it as a SignedEntry."""

    __slots__ = ()
    chain = property(operator.itemgetter(0))
    seq = property(operator.itemgetter(1))
    prev = property(operator.itemgetter(2))
    type = property(operator.itemgetter(3))
    key_id = property(operator.itemgetter(4))
    command_id = property(operator.itemgetter(5))
    hash = property(operator.itemgetter(6))
    verified_with = property(operator.itemgetter(7))
    body = property(operator.itemgetter(8))
    envelope = property(operator.itemgetter(9))

    @classmethod
    def of(cls, signed: SignedEntry, verified_with: bytes | None) -> "Checked":
        e = signed.entry
        return tuple.__new__(cls, (e.chain, e.seq, e.prev, e.type, e.key_id, e.command_id, signed.hash,
                                   verified_with, e.body, signed.envelope))

    @property
    def entry(self) -> "Checked":
        return self

    def signature_valid(self, public_key: bytes) -> bool:
        return SignedEntry.parse(self.envelope).signature_valid(public_key)


@dataclass(frozen=True)
class Caches:
    """What the store knows of a log of ``size`` entries (-1: nothing yet): the record time of
    its last entry, its Merkle frontier, the heads (seq, entry hash) of the chains the plan will
    meet (a chain absent here is new), and the key registry after it."""

    size: int = -1
    last_us: int = 0
    frontier: merkle.Frontier = field(default_factory=merkle.Frontier)
    heads: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    registry: Registry = field(default_factory=Registry)


@dataclass
class Plan:
    """The rows to insert in one transaction, each group's answer, and the caches after it."""

    events: list[tuple]  # (chain, seq, type, envelope): eventsourcing's stored event columns
    rows: list[tuple]  # (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes)
    results: list[list[Receipt] | AppendError]
    caches: Caches
    refused: bool  # whether the plan refused a group itself (as against the checks before it)


Group = list[Checked]


def plan(caches: Caches, groups: list[Group | AppendError], recorded: dict[tuple[str, str], Receipt],
         recorded_us: int, blob: Callable[[bytes], Any] = bytes) -> Plan:
    """The append of ``groups`` (each a list of checked entries, or the AppendError its checks
    gave) to the log that ``caches`` describe, at ``recorded_us`` (not before the log's last
    record time). ``recorded``: (chain, command id) -> the receipt of each of the groups'
    command ids that the log holds. ``blob``: the type the database binds binary columns
    fastest as."""
    recorded_at = micros_to_time_text(recorded_us)
    leaf_hash = LeafHasher(recorded_at).hash  # one record time for the whole transaction
    append_leaf = merkle.append_leaf
    frontier, heads, registry = caches.frontier, dict(caches.heads), caches.registry
    if any(c[3] in REGISTRY_TYPES for g in groups if type(g) is list for c in g):
        # registry entries change the registry: on a copy (once per call), journaled so that a
        # refused group's changes are taken back
        registry = registry.copy()
    # (key id, chain) -> the key that registry.key_for answered for an ordinary entry of this
    # transaction. Record time is one for the whole transaction, and a key valid at one index
    # stays valid at later ones until a registry entry changes the registry (a revocation is
    # such an entry), so the cache is emptied whenever one is applied or a group is refused.
    key_cache: dict[tuple[str, str], bytes] = {}
    events: list[tuple] = []
    rows: list[tuple] = []
    results: list = []
    batch_commands: dict[tuple[str, str], tuple[int, bytes]] = {}
    batch_receipts: dict[int, Receipt] = {}
    refused = False
    index = caches.size
    for group in groups:
        if isinstance(group, AppendError):  # refused by its checks
            results.append(group)
            continue
        tree_size, tree = frontier.size, list(frontier.hashes)  # the group's own frontier
        g_heads: dict[str, tuple[int, bytes]] = {}
        g_mark = registry.mark() if registry is not caches.registry else 0
        g_commands: dict[tuple[str, str], tuple[int, bytes]] = {}
        g_events, g_rows, receipts = [], [], []
        g_receipts: dict[int, Receipt] = {}
        g_index = index
        pos = 0
        try:
            for pos, c in enumerate(group):
                chain, seq, prev, etype, key_id, command_id, entry_hash, verified_with, _, envelope = c
                ckey = (chain, command_id)
                seen = g_commands.get(ckey) or batch_commands.get(ckey)
                if seen is None and ckey in recorded:
                    done = recorded[ckey]
                    if done.entry_hash != entry_hash:
                        raise AppendError("command_conflict", f"command_id: {command_id} was already used on "
                                          f"chain {chain} for another entry (log index {done.index})",
                                          field="command_id")
                    receipts.append(done)
                    continue
                if seen is not None:
                    if seen[1] != entry_hash:
                        raise AppendError("command_conflict", f"command_id: {command_id} was already used on "
                                          f"chain {chain} for another entry (log index {seen[0]})",
                                          field="command_id")
                    p = g_receipts.get(seen[0]) or batch_receipts[seen[0]]
                    receipts.append(receipt(p.index, p.chain, p.seq, p.entry_hash, p.recorded_at, True))
                    continue
                head_seq, head_hash = g_heads.get(chain) or heads.get(chain) or (0, ZERO_HASH)
                if seq != head_seq + 1:
                    raise AppendError("conflict", f"seq: chain {chain} is at seq {head_seq}; "
                                      f"the next entry must have seq {head_seq + 1}, not {seq}", field="seq")
                if prev != head_hash:
                    raise AppendError("conflict", f"prev: does not match the hash of {chain} seq {head_seq} "
                                      f"({head_hash.hex()[:16]}...)", field="prev")
                registry_type = etype in REGISTRY_TYPES
                public_key = None if registry_type else key_cache.get((key_id, chain))
                if public_key is None:
                    try:
                        public_key = registry.key_for(c, g_index, recorded_us)
                    except RegistryError as err:
                        raise AppendError(err.code, str(err), field=err.field) from err
                    if not registry_type:
                        key_cache[(key_id, chain)] = public_key
                if verified_with != public_key and not c.signature_valid(public_key):
                    raise AppendError("signature", f"sig: not a valid signature by key {key_id}", field="sig")
                if registry_type:
                    key_cache.clear()
                    try:
                        registry.apply(c, g_index)
                    except RegistryError as err:
                        raise AppendError("body", str(err), field=err.field) from err
                nodes = append_leaf(tree, tree_size, leaf_hash(entry_hash, g_index))
                tree_size += 1
                g_events.append((chain, seq, etype, blob(envelope)))
                g_rows.append((g_index, chain, seq, etype, command_id, blob(entry_hash), recorded_us, blob(nodes)))
                g_heads[chain] = (seq, entry_hash)
                g_commands[ckey] = (g_index, entry_hash)
                r = receipt(g_index, chain, seq, entry_hash, recorded_at, False)
                receipts.append(r)
                g_receipts[g_index] = r
                g_index += 1
        except AppendError as err:
            refused = True
            if registry is not caches.registry:
                registry.rollback(g_mark)
            key_cache.clear()
            err.position, err.chain, err.seq = pos, group[pos].chain, group[pos].seq
            results.append(err)
            continue
        frontier, index = merkle.Frontier(tree_size, tree), g_index
        heads.update(g_heads)
        batch_commands.update(g_commands)
        batch_receipts.update(g_receipts)
        events += g_events
        rows += g_rows
        results.append(receipts)
    if registry is not caches.registry:
        registry.forget()
        registry.size = index
    after = Caches(index, recorded_us if rows else caches.last_us, frontier, heads, registry)
    return Plan(events, rows, results, after, refused)
