"""Evidence bundles: a party's entries with everything needed to check them offline.

A bundle is one canonical msgpack map (docs/FORMAT.md, "Bundles"), in the spirit of C2SP
tlog-proof:

    {"format": "reledger-bundle-v1",
     "party": text,
     "checkpoint": bin (a signed checkpoint note of tree size N),
     "entries": [{"index", "recorded_at", "envelope", "proof": [bin32...]}, ...],
     "consistency": [{"note": bin (an earlier checkpoint), "proof": [bin32...]}, ...],
     "heads": {"position": int, "count": int, "proof": [bin32...]}}

``entries`` holds every entry of the party's chain in the tree, and every registry entry of the
log (so that the key valid for each entry at its log position, and the checkpoint key, can be
worked out), each with its RFC 9162 inclusion proof against the checkpoint. ``consistency``
proves every earlier checkpoint the operator stored to be a prefix of this one. ``heads`` (when
the checkpoint commits to chain heads, ledger/heads.py) proves that the party's last entry in
the bundle is the head of its chain at the checkpoint: nothing of the chain was left out.

:func:`verify_bundle` needs nothing but ``ledger/``: no database, no network. Every byte of a
bundle is covered by a check (canonical decoding, signatures, proofs), so any alteration fails.
Given earlier checkpoints or bundles it checks consistency too, so a history rewritten by the
operator itself is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import encoding, heads as chain_heads, merkle, rules
from .checkpoint import Checkpoint, NoteError
from .encoding import EncodingError
from .entry import ZERO_HASH, EntryError, SignedEntry, leaf_bytes
from .registry import REGISTRY_TYPES, Registry, RegistryError
from .tlogproof import TlogProof

FORMAT = "reledger-bundle-v1"
BUNDLE_KEYS = ["checkpoint", "consistency", "entries", "format", "party"]
HEADS_KEYS = ["count", "position", "proof"]


class BundleError(ValueError):
    """A bundle that cannot even be read."""


@dataclass
class BundleReport:
    party: str = ""
    size: int = 0
    root: bytes = b""
    origin: str = ""
    entries: int = 0
    chain_length: int = 0
    registry_entries: int = 0
    proofs: int = 0
    consistency_checked: list[int] = field(default_factory=list)
    genesis: str | None = None
    complete: bool = False  # the chain's end is proven (the checkpoint's chain heads)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "party": self.party, "size": self.size, "root": self.root.hex(), "origin": self.origin,
                "entries": self.entries, "chain_length": self.chain_length, "registry_entries": self.registry_entries,
                "inclusion_proofs": self.proofs, "consistent_with_sizes": self.consistency_checked,
                "genesis": self.genesis, "chain_complete": self.complete, "problems": self.problems}


def encode_bundle(party: str, checkpoint_note: bytes, entries: list[dict], consistency: list[dict],
                  heads: dict | None = None) -> bytes:
    """The bundle's bytes; ``heads`` = {"position", "count", "proof"} when the checkpoint
    commits to chain heads (left out otherwise)."""
    b = {"format": FORMAT, "party": party, "checkpoint": checkpoint_note, "entries": entries,
         "consistency": consistency}
    if heads is not None:
        b["heads"] = heads
    return encoding.canonical(b)


def decode_bundle(data: bytes) -> dict[str, Any]:
    try:
        b = encoding.decode(data)
    except EncodingError as e:
        raise BundleError(f"not a bundle: {e}") from e
    if not isinstance(b, dict) or sorted(set(b) - {"heads"}) != BUNDLE_KEYS or b.get("format") != FORMAT:
        raise BundleError(f"not a {FORMAT} bundle (a map of exactly {', '.join(BUNDLE_KEYS)}, and heads)")
    if "heads" in b:
        h = b["heads"]
        if not isinstance(h, dict) or sorted(h) != HEADS_KEYS or not isinstance(h["proof"], list):
            raise BundleError("heads: a map of exactly count, position, proof (a list)")
    if not isinstance(b["party"], str) or not isinstance(b["checkpoint"], bytes):
        raise BundleError("party must be text and checkpoint binary")
    if not isinstance(b["entries"], list) or not isinstance(b["consistency"], list):
        raise BundleError("entries and consistency must be lists")
    for i, e in enumerate(b["entries"]):
        if not isinstance(e, dict) or sorted(e) != ["envelope", "index", "proof", "recorded_at"]:
            raise BundleError(f"entries[{i}]: a map of exactly envelope, index, proof, recorded_at")
    for i, c in enumerate(b["consistency"]):
        if not isinstance(c, dict) or sorted(c) != ["note", "proof"]:
            raise BundleError(f"consistency[{i}]: a map of exactly note, proof")
        if not isinstance(c["note"], bytes) or not isinstance(c["proof"], list):
            raise BundleError(f"consistency[{i}]: note must be binary and proof a list")
    return b


def tlog_proofs(data: bytes) -> list[tuple[int, bytes]]:
    """Each entry of a bundle as the C2SP tlog-proof it is, byte for byte (FORMAT.md 7b, 7c):
    (index, proof) in the bundle's order. Nothing is verified here: verify each proof (its
    checkpoint, its inclusion) with :func:`reledger.ledger.tlogproof.verify`."""
    b = decode_bundle(data)
    out = []
    for i, e in enumerate(b["entries"]):
        if not (isinstance(e["envelope"], bytes) and isinstance(e["recorded_at"], str) and type(e["index"]) is int
                and isinstance(e["proof"], list) and all(isinstance(h, bytes) for h in e["proof"])):
            raise BundleError(f"entries[{i}]: envelope bin, recorded_at text, index int, proof [bin32...]")
        out.append((e["index"], TlogProof(e["envelope"], e["recorded_at"], e["index"], tuple(e["proof"]),
                                          b["checkpoint"]).text()))
    return out


def checkpoint_of(note: bytes) -> Checkpoint:
    """The checkpoint a note states (signature NOT checked)."""
    try:
        text = note.split(b"\n\n", 1)[0] + b"\n"
        return Checkpoint.parse(text)
    except (ValueError, IndexError) as e:
        raise BundleError(f"not a checkpoint note: {e}") from e


def verify_bundle(data: bytes, *, trusted_checkpoint_keys: list[str] = (), trusted_genesis: str | None = None,
                  older: list[bytes] = ()) -> BundleReport:
    """Check a bundle offline. ``older``: earlier checkpoint notes (or whole bundles) that this
    bundle's checkpoint must be consistent with."""
    rep = BundleReport()
    b = decode_bundle(data)
    rep.party = b["party"]
    note = b["checkpoint"]
    cp = checkpoint_of(note)
    rep.size, rep.root, rep.origin = cp.size, cp.root, cp.origin

    # 1. every entry: strict parse, leaf, inclusion proof; in strictly increasing index order
    parsed: list[tuple[int, int, SignedEntry]] = []
    last = -1
    for i, item in enumerate(b["entries"]):
        where = f"entries[{i}]"
        idx, rec_at, env, proof = item["index"], item["recorded_at"], item["envelope"], item["proof"]
        if type(idx) is not int or idx < 0 or not isinstance(rec_at, str) or not isinstance(env, bytes) \
                or not isinstance(proof, list):
            rep.problems.append(f"{where}: malformed (index int >= 0, recorded_at text, envelope bin, proof list)")
            continue
        if idx <= last:
            rep.problems.append(f"{where}: index {idx} is not after {last}")
        last = max(last, idx)
        try:
            signed = SignedEntry.parse(env)
            recorded_us = encoding.time_to_micros(encoding.parse_time(rec_at))
        except (EntryError, EncodingError) as e:
            rep.problems.append(f"{where} (log index {idx}): {e}")
            continue
        leaf = merkle.leaf_hash(leaf_bytes(signed.hash, idx, rec_at))
        try:
            merkle.verify_inclusion(leaf, idx, cp.size, proof, cp.root)
            rep.proofs += 1
        except merkle.ProofError as e:
            rep.problems.append(f"{where} (log index {idx}, {signed.entry.chain}:{signed.entry.seq}): not in the "
                                f"checkpointed log: {e}")
            continue
        parsed.append((idx, recorded_us, signed))
    rep.entries = len(parsed)

    # 2. keys and signatures, in log order (the rules of ledger/rules.py, as whole-log verify
    # applies them): record times, command ids, the party's chain complete and linked
    registry = Registry()
    head: tuple[int, bytes] | None = None
    previous_us: int | None = None
    commands: set[tuple[str, str]] = set()
    for idx, recorded_us, signed in parsed:
        e = signed.entry
        at = f"log index {idx} ({e.chain}:{e.seq})"
        if idx == 0:
            rep.genesis = signed.hash.hex()
        if e.type in REGISTRY_TYPES:
            rep.registry_entries += 1
        elif e.chain != rep.party:
            rep.problems.append(f"log index {idx}: {e.chain}:{e.seq} is neither the party's nor a registry entry")
        try:
            rules.record_time(previous_us, recorded_us)
        except rules.Invalid as err:
            rep.problems.append(f"{at}: {err}")
        previous_us = recorded_us if previous_us is None else max(previous_us, recorded_us)
        try:
            rules.command_new(commands, e.chain, e.command_id)
        except rules.Invalid as err:
            rep.problems.append(f"{at}: {err}")
        commands.add((e.chain, e.command_id))
        try:
            pub = registry.key_for(signed, idx, recorded_us)
            rules.signature(pub, signed.content, signed.signature, e.key_id, e.chain)
            if idx > 0:  # 4.5: the chain's roles at its record time may assert its type
                registry.authorized(e, idx, recorded_us)
        except (RegistryError, rules.Invalid) as err:
            rep.problems.append(f"{at}: {err}")
        try:
            registry.apply(signed, idx)
        except RegistryError as err:
            rep.problems.append(f"{at}: {err}")
        if e.chain == rep.party:
            try:
                rules.chain_link(head, e.chain, e.seq, e.prev)
            except rules.Invalid as err:
                rep.problems.append(f"{e.chain}:{e.seq}: {err}: the chain is incomplete or altered")
            head = (e.seq, signed.hash)
    head_seq, head_hash = head if head is not None else (0, ZERO_HASH)
    rep.chain_length = head_seq
    if rep.genesis is None:
        rep.problems.append("the genesis entry (log index 0) is missing: no trust anchor")
    elif trusted_genesis and trusted_genesis != rep.genesis:
        rep.problems.append(f"the genesis entry hash {rep.genesis} is not the trusted {trusted_genesis}")
    if head is None:
        rep.problems.append(f"the bundle holds no entry of party {rep.party}")

    # 2b. the end of the chain: the checkpoint's chain heads name the bundle's last entry
    try:
        signed_heads = chain_heads.of_extensions(cp.extensions)
    except chain_heads.HeadsError as e:
        rep.problems.append(f"the checkpoint of size {cp.size}: {e}")
        signed_heads = None
    if signed_heads is not None:
        h = b.get("heads")
        if h is None:
            rep.problems.append(f"the checkpoint commits to every chain's head but the bundle has no proof of "
                                f"{rep.party}'s: it may not hold the end of the chain")
        elif head_seq:
            try:
                chain_heads.verify(rep.party, head_seq, head_hash, h["position"], h["count"], h["proof"], signed_heads)
                rep.complete = True
            except (chain_heads.HeadsError, merkle.ProofError) as e:
                rep.problems.append(f"the end of the chain: {e}; entries of {rep.party} after seq {head_seq} "
                                    "may have been left out")
    elif "heads" in b:
        rep.problems.append("the bundle has a heads proof but its checkpoint commits to no chain heads")

    # 3. the checkpoint: signed by a checkpoint key valid at its size, under the key's name as origin
    def verifiers(size: int) -> list:
        try:
            return rules.checkpoint_verifiers(registry, size, trusted_checkpoint_keys)
        except NoteError as e:
            raise BundleError(f"a trusted checkpoint key is malformed: {e}") from None

    try:
        rules.checkpoint(note, verifiers(cp.size))
    except rules.Invalid as e:
        rest = e.message.partition(": ")[2] or e.message
        if rest.startswith(("note", "invalid signature", "no checkpoint key")):
            rest = f"not signed by a checkpoint key of this log: {rest}"
        rep.problems.append(f"the checkpoint of size {cp.size}: {rest}")
        return rep  # nothing is consistent with a checkpoint that is not the log's

    # 4. consistency: the operator's earlier checkpoints, each judged with the keys valid at its
    # own size, and any the caller kept
    proofs = {}
    last_size = -1
    for i, c in enumerate(b["consistency"]):
        try:
            old = checkpoint_of(c["note"])
            # one canonical form: earlier checkpoints in increasing size, each before this one
            if old.size <= last_size:
                raise ValueError(f"the checkpoint of size {old.size} is not after the one of size {last_size}")
            if old.size >= cp.size:
                raise ValueError(f"the checkpoint of size {old.size} is not earlier than this bundle's ({cp.size})")
            last_size = old.size
            rules.checkpoint(c["note"], verifiers(old.size))
            _consistent(old, cp, c["proof"])
            proofs[old.size] = c["proof"]
            rep.consistency_checked.append(old.size)
        except (BundleError, NoteError, merkle.ProofError, ValueError) as e:
            rep.problems.append(f"consistency[{i}]: {e}")
    for j, other in enumerate(older):
        try:
            _check_older(other, cp, proofs, verifiers, rep, trusted_checkpoint_keys, trusted_genesis)
        except (BundleError, NoteError, merkle.ProofError, ValueError) as e:
            rep.problems.append(f"earlier checkpoint #{j + 1}: {e}")
    return rep


def _consistent(old: Checkpoint, new: Checkpoint, proof: list) -> None:
    if old.origin != new.origin:
        raise ValueError(f"origin {old.origin!r} is not {new.origin!r}")
    if old.size > new.size:
        raise ValueError(f"size {old.size} is larger than {new.size}")
    if old.size == new.size:
        if old.root != new.root or proof:
            raise merkle.ProofError(f"two different roots for size {old.size}: the log was rewritten")
        return
    if old.size == 0:
        if old.root != merkle.EMPTY_ROOT:
            raise merkle.ProofError("a checkpoint of size 0 must sign the empty tree's root")
        if proof:
            raise merkle.ProofError("a consistency proof from size 0 must be empty")
        return
    try:
        merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
    except merkle.ProofError as e:
        raise merkle.ProofError(f"the checkpoint of size {new.size} (root {new.root.hex()[:16]}…) does not extend the "
                                f"checkpoint of size {old.size} (root {old.root.hex()[:16]}…): the log was rewritten, "
                                f"or the proof is not the log's ({e})") from None


def _check_older(other: bytes, cp: Checkpoint, proofs: dict, verifiers, rep: BundleReport,
                 trusted_checkpoint_keys: list[str], trusted_genesis: str | None) -> None:
    """``other`` is a checkpoint note or a bundle; it must be consistent with ``cp``.
    ``verifiers(size)`` gives the checkpoint keys valid at a size of this bundle's log."""
    if other[:1] in (b"\x85", b"\x86"):  # a map of five (or six, with heads): another bundle
        ob = decode_bundle(other)
        other_note = ob["checkpoint"]
        other_cp = checkpoint_of(other_note)
        if other_cp.size > cp.size:  # the other bundle is the newer one: it vouches for its keys, and proves us
            theirs = verify_bundle(other, trusted_checkpoint_keys=trusted_checkpoint_keys,
                                   trusted_genesis=trusted_genesis)
            if not theirs.ok:
                raise ValueError(f"the newer bundle (size {other_cp.size}) does not verify: {theirs.problems[0]}")
            proofs_theirs = {checkpoint_of(c["note"]).size: c["proof"] for c in ob["consistency"]}
            if cp.size not in proofs_theirs:
                raise ValueError(f"the newer bundle (size {other_cp.size}) has no consistency proof from size "
                                 f"{cp.size}")
            _consistent(cp, other_cp, proofs_theirs[cp.size])
            rep.consistency_checked.append(other_cp.size)
            return
        old_note = other_note
    else:
        old_note = other
    old = checkpoint_of(old_note)
    if old.size > cp.size:
        raise ValueError(f"the checkpoint of size {old.size} is newer than this bundle's ({cp.size}): give this "
                         "bundle to a check of the newer one's bundle instead")
    rules.checkpoint(old_note, verifiers(old.size))
    if old.size not in proofs and old.size not in (cp.size, 0):
        raise ValueError(f"no consistency proof from size {old.size} in this bundle (export it again from a ledger "
                         "that stored that checkpoint)")
    _consistent(old, cp, proofs.get(old.size, []))
    rep.consistency_checked.append(old.size)
