"""The one definition of a valid log: the rules of docs/FORMAT.md as named functions.

Every verifier of reledger judges by these functions and by no other definition:

* the readable whole-log verifier, :class:`reledger.ledger.verify.LogVerifier`;
* the bundle verifier, :func:`reledger.ledger.bundle.verify_bundle`;
* the fast whole-log verifier over a database, ``reledger.storage.verify`` (it runs the same
  functions range by range in worker processes);
* the key registry (:class:`reledger.ledger.registry.Registry`), through which the store's
  append plan, the command API and replay decide which key may sign what.

Each rule returns quietly when it holds and raises :class:`Invalid` (or, for the key rules,
:class:`RegistryError`, which the command API turns into its refusal codes) when it does not.
The ``code`` of an Invalid is the problem code ``reledger verify`` reports (FORMAT.md 7).

An auditor reads this module, ``registry.py`` (registry state), ``verify.py`` (the order the
rules are applied in over a whole log) and ``bundle.py`` (the same for one party's bundle).
"""

from __future__ import annotations

from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import authority, heads as chain_heads, merkle
from .checkpoint import Checkpoint, NoteError, NoteVerifier, open_note, signature_keys
from .cosignature import COSIG_MLDSA44, CosignatureVerifier, check_log_pq, vkey_type
from .entry import ENTRY_TAG, ZERO_HASH, leaf_bytes
from .keys import verify_signature

REGISTRY_TYPES = frozenset({"PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked"})
REGULATOR = "REGULATOR"


class Invalid(ValueError):
    """A rule of FORMAT.md that does not hold; ``code`` is the problem code of FORMAT.md 7."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class RegistryError(ValueError):
    """An entry the key rules refuse (unknown, revoked, expired or foreign key...), or a
    registry body that breaks FORMAT.md 4.1. ``code`` is the refusal code of the command API."""

    def __init__(self, message: str, field: str | None = None, code: str = "key"):
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


# --- keys (FORMAT.md 4.2, 4.3) ---------------------------------------------------------------

def genesis_key(entry: Any, body: dict) -> bytes:
    """4.2: log index 0 is a KeyAuthorized entry, seq 1, authorizing for its own chain the very
    key that signs it. ``body`` is the entry's body as checked by the registry (4.1)."""
    if entry.type != "KeyAuthorized" or entry.seq != 1:
        raise RegistryError("genesis: log index 0 must be KeyAuthorized, seq 1 of the regulator's chain",
                            "type", "genesis")
    if body["party"] != entry.chain or body["key_id"] != entry.key_id or body["purpose"] != "entries":
        raise RegistryError("genesis: the first entry must authorize, for its own chain, the key that signs it",
                            "body", "genesis")
    return body["public_key"]


def party_registered(registered_at: int | None, chain: str, index: int) -> None:
    """4.3.1: the chain is a party registered by an entry at an index below ``index``."""
    if registered_at is None or registered_at >= index:
        raise RegistryError(f"chain: party {chain} is not registered", "chain", "unregistered")


def key_valid(rec: Any, chain: str, key_id: str, index: int, recorded_us: int) -> bytes:
    """4.3.2-5: key ``key_id`` (its registry record ``rec``, None if never authorized) may sign
    an entry of ``chain`` at log ``index`` recorded at ``recorded_us``; returns its public key."""
    if rec is None or rec.purpose != "entries":
        raise RegistryError(f"key_id: key {key_id} is not authorized for any party", "key_id", "unknown_key")
    if rec.party != chain:
        raise RegistryError(f"key_id: key {key_id} belongs to party {rec.party}, not to {chain}", "key_id",
                            "foreign_key")
    if rec.authorized_at >= index:
        raise RegistryError(f"key_id: key {key_id} was not yet authorized", "key_id", "unknown_key")
    if rec.revoked_at is not None and rec.revoked_at < index:
        raise RegistryError(f"key_id: key {key_id} was revoked (log index {rec.revoked_at})", "key_id",
                            "revoked_key")
    if recorded_us < rec.valid_from_us:
        raise RegistryError(f"key_id: key {key_id} is not valid yet", "key_id", "expired_key")
    if rec.valid_until_us is not None and recorded_us >= rec.valid_until_us:
        raise RegistryError(f"key_id: key {key_id} has expired", "key_id", "expired_key")
    return rec.public_key


def may_record(type_: str, chain: str, roles: Iterable[str]) -> None:
    """4.3.6: only a regulator records registry entries."""
    if type_ in REGISTRY_TYPES and REGULATOR not in roles:
        raise RegistryError(f"type: only a regulator may record {type_}; {chain} is not one", "type", "forbidden")


def authorized(type_: str, chain: str, designations: Iterable, index: int, recorded_us: int, root: bool) -> None:
    """4.5: the chain's roles at the entry's record time may assert its type (DOMAIN.md
    "Authority"; the table and which roles count: ``authority.py``). ``designations`` are the
    chain's (``Registry.designations``), ``root`` whether it is the genesis regulator's chain.
    An entry that breaks it was written below the command API, which refuses it."""
    held = authority.roles_for(type_, tuple(designations), index, recorded_us, root)
    if not authority.may_assert(type_, held):
        when = "holds now" if type_ in authority.REGULATOR_TYPES else "has held"
        raise Invalid("authority", f"{type_} may be asserted by {authority.who_may(type_)}; {chain} {when} "
                      f"{', '.join(sorted(held)) or 'no role'}")


def signature(public_key: bytes | None, content: bytes, sig: bytes, key_id: str, chain: str) -> None:
    """2.3 / 4.3.7: Ed25519 over ENTRY_TAG || content verifies with the key."""
    if public_key is None or not verify_signature(public_key, ENTRY_TAG, content, sig):
        raise Invalid("signature", f"the signature is not valid for key {key_id} of {chain}")


# --- chains, record times, command ids (FORMAT.md 2.5, 2.6, 3.1) ------------------------------

def chain_link(head: tuple[int, bytes] | None, chain: str, seq: int, prev: bytes) -> None:
    """2.5: seq follows the chain's head (``head`` = (seq, entry hash), None for a new chain)
    and prev is the head's entry hash."""
    head_seq, head_hash = head if head is not None else (0, ZERO_HASH)
    if seq != head_seq + 1:
        raise Invalid("chain", f"seq {seq} does not follow seq {head_seq} of chain {chain}")
    if prev != head_hash:
        raise Invalid("chain", f"prev does not match the hash of {chain}:{head_seq}")


def record_time(previous_us: int | None, recorded_us: int) -> None:
    """3.1: record times never decrease along the log."""
    if previous_us is not None and recorded_us < previous_us:
        raise Invalid("time", "recorded before the entry preceding it in the log (record times go backwards)")


def command_new(seen: set, chain: str, command_id: str) -> None:
    """2.6: a command id appears at most once in a chain (``seen`` holds (chain, command id)
    of the entries before; the caller adds this one)."""
    if (chain, command_id) in seen:
        raise Invalid("command", f"command id {command_id} was already used on chain {chain}")


# --- the Merkle log (FORMAT.md 3.1, 3.3) ------------------------------------------------------

def leaf_hash(entry_hash: bytes, index: int, recorded_at: str) -> bytes:
    """3.1: the RFC 9162 leaf hash of the entry at ``index``."""
    return merkle.leaf_hash(leaf_bytes(entry_hash, index, recorded_at))


def stored_nodes(completed: bytes, stored: Any) -> None:
    """3.3: the nodes stored beside an entry are its leaf hash followed by the perfect nodes
    it completes (``completed``, concatenated)."""
    if stored != completed:
        raise Invalid("merkle", "the Merkle nodes stored for this entry are not the ones its leaf completes")


# --- checkpoints (FORMAT.md 4.4, 5) -----------------------------------------------------------

def checkpoint_verifiers(registry: Any, size: int, trusted_vkeys: Iterable[str] = ()) -> list[NoteVerifier]:
    """4.4: the keys a checkpoint of tree size ``size`` may be signed with: the trusted verifier
    keys if the auditor gave any, else the checkpoint keys of ``registry`` authorized at an
    index < size and not revoked at an index < size, each under its registered name. Raises
    NoteError for a malformed trusted key. The one place reledger builds note verifiers from."""
    registered = [k for k in registry.checkpoint_keys(size) if k.name]

    def pq_half(name: str, raw: bytes, pinned: list) -> CosignatureVerifier | None:
        # 5.4: the pinned ML-DSA-44 key of that name, else the one registered with this Ed25519 key
        for p in pinned:
            if p.name == name:
                return p
        for k in registered:
            if k.name == name and k.public_key == raw and k.mldsa_public_key is not None:
                return CosignatureVerifier(k.name, COSIG_MLDSA44, k.mldsa_public_key)
        return None

    trusted, trusted_pq = [], []
    for v in trusted_vkeys:
        if vkey_type(v) == COSIG_MLDSA44:
            trusted_pq.append(CosignatureVerifier.from_vkey(v))
        else:
            trusted.append(NoteVerifier.from_vkey(v))
    for p in trusted_pq:
        if not any(v.name == p.name for v in trusted):
            raise NoteError(f"the ML-DSA-44 log key {p.name}+{p.key_id.hex()} is pinned without the log's Ed25519 "
                            "key of the same name (a checkpoint is signed with both: FORMAT.md 5.4)")
    if trusted:
        return [NoteVerifier(v.name, v.public_key, pq_half(v.name, v.raw, trusted_pq)) for v in trusted]
    return [NoteVerifier(k.name, Ed25519PublicKey.from_public_bytes(k.public_key), pq_half(k.name, k.public_key, []))
            for k in registered]


def checkpoint(note: bytes, verifiers: list[NoteVerifier], *, size: int | None = None, root: bytes | None = None,
               heads: tuple[int, bytes] | None = None) -> Checkpoint:
    """5: ``note`` is a checkpoint signed (5.2) by one of ``verifiers`` (4.4), with no two
    signature lines of one key (5.2; lines of keys not in ``verifiers`` are otherwise ignored,
    as c2sp.org/signed-note says), its body parses strictly (5.1), its origin is the name of a key that signed it (4.4), a checkpoint of size 0
    has the empty tree's root, and, when given, its size and root are ``size`` and ``root`` and
    its chain heads line (5.3, if present) commits to ``heads`` (count, root). Returns the
    checkpoint; raises Invalid("checkpoint", ...) naming the first rule broken."""
    at = f"checkpoint of size {size}" if size is not None else "checkpoint"
    if not verifiers:
        raise Invalid("checkpoint", f"{at}: no checkpoint key was registered in the log before it, so nobody "
                      "could sign it")
    try:
        text, signed_by = open_note(note, verifiers)
        cp = Checkpoint.parse(text)
        lines = signature_keys(note)
    except (NoteError, ValueError) as e:
        raise Invalid("checkpoint", f"{at}: {e}") from None
    if len(set(lines)) != len(lines):  # 5.2: a key signs a checkpoint once; every line counts (7b)
        name, kid = next(k for i, k in enumerate(lines) if k in lines[:i])
        raise Invalid("checkpoint", f"{at}: two signature lines of key {name}+{kid.hex()}")
    if all(cp.origin != v.name for v in signed_by):
        raise Invalid("checkpoint", f"{at}: origin {cp.origin!r} is not the name of the key that signed it "
                      "(the log's origin)")
    try:  # 5.4: the log's ML-DSA-44 lines of known keys verify, and a key that has one signed with it
        check_log_pq(note, verifiers, signed_by)
    except NoteError as e:
        raise Invalid("checkpoint", f"{at}: {e}") from None
    if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
        raise Invalid("checkpoint", f"{at}: a checkpoint of size 0 must sign the empty tree's root")
    if size is not None and cp.size != size:
        raise Invalid("checkpoint", f"{at}: the signed note says size {cp.size}")
    if root is not None and cp.root != root:
        raise Invalid("checkpoint", f"{at}: the log's Merkle root {root.hex()[:16]}... is not the signed root "
                      f"{cp.root.hex()[:16]}...")
    try:
        signed_heads = chain_heads.of_extensions(cp.extensions)
    except chain_heads.HeadsError as e:
        raise Invalid("checkpoint", f"{at}: {e}") from None
    if heads is not None and signed_heads is not None and signed_heads != heads:
        raise Invalid("checkpoint", f"{at}: the chain heads it signs ({signed_heads[0]} chains, root "
                      f"{signed_heads[1].hex()[:16]}...) are not the log's ({heads[0]} chains, root "
                      f"{heads[1].hex()[:16]}...)")
    return cp
