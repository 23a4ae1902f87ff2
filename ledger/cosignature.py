"""Witness cosignatures (c2sp.org/tlog-cosignature) and trust policies (c2sp.org/tlog-policy).

A witness cosigns a checkpoint once it has checked that the checkpoint is consistent with every
checkpoint of that log it cosigned before: a log that shows two histories to two people cannot
get both cosigned by the same honest witness. A cosignature is one more signed-note line on the
checkpoint: ``— <witness name> base64(key ID || timestamped_signature)``, where
``timestamped_signature`` is ``u64 timestamp`` (POSIX seconds, big-endian) followed by

- type 0x04, Ed25519: a 64-byte signature over ``cosignature/v1\\ntime <timestamp>\\n`` and the
  checkpoint's whole note text;
- type 0x06, ML-DSA-44 (FIPS 204, post-quantum): a 2,420-byte signature over the
  ``cosigned_message`` structure: ``subtree/v1\\n\\0``, the cosigner name (1-byte length), the
  timestamp (u64), the origin (1-byte length), start 0 (u64), end = tree size (u64), the root.

Key ID = SHA-256(name || 0x0A || type || public key)[:4]; verifier keys (vkeys) are
``<name>+<key ID hex>+base64(type || public key)``, signer keys ``PRIVATE+KEY+<name>+<key ID
hex>+base64(type || 32-byte seed)`` (the seed of RFC 8032 for Ed25519, the FIPS 204 seed ξ for
ML-DSA-44).

A policy (tlog-policy) names the logs (their checkpoint vkeys), the witnesses (their cosigner
vkeys) and a quorum: a witness, ``none``, or a group that needs k of its members. A checkpoint is
valid under a policy when a listed log signed it (origin = that key's name) and the quorum is met
by verified cosignatures.
"""

from __future__ import annotations

import base64
import os
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .checkpoint import (SIG_PREFIX, Checkpoint, NoteError, NoteSigner, NoteVerifier, open_note,
                         valid_key_name)
from .keys import usable_public_key
from .merkle import ProofError, verify_consistency

COSIG_ED25519 = 0x04
COSIG_MLDSA44 = 0x06
ALGORITHMS = {COSIG_ED25519: "Ed25519 cosignature/v1", COSIG_MLDSA44: "ML-DSA-44 subtree/v1"}
_PUBLIC_LEN = {COSIG_ED25519: 32, COSIG_MLDSA44: 1312}
_SIGNATURE_LEN = {COSIG_ED25519: 64, COSIG_MLDSA44: 2420}
ED25519_HEADER = b"cosignature/v1\n"
MLDSA_LABEL = b"subtree/v1\n\x00"
MAX_TIMESTAMP = 2**63 - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 2.1: the root of the empty tree
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


class CosignatureError(NoteError):
    """A cosignature, a cosigner key or a policy is malformed, or does not verify."""


def cosigner_key_id(name: str, algorithm: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([algorithm]) + public_key).digest()[:4]


def ed25519_message(body: bytes, timestamp: int) -> bytes:
    """What an Ed25519 (type 0x04) cosignature signs: header, time line, the checkpoint text."""
    return ED25519_HEADER + b"time %d\n" % timestamp + body


def mldsa_message(name: str, timestamp: int, checkpoint: Checkpoint) -> bytes:
    """What an ML-DSA-44 (type 0x06) cosignature of a whole checkpoint signs (start 0, end = size)."""
    who, origin = name.encode("utf-8"), checkpoint.origin.encode("utf-8")
    if not (1 <= len(who) <= 255 and 1 <= len(origin) <= 255):
        raise CosignatureError("cosigner name and origin must be 1 to 255 bytes for ML-DSA-44 cosignatures")
    return (MLDSA_LABEL + bytes([len(who)]) + who + struct.pack(">Q", timestamp) + bytes([len(origin)]) + origin
            + struct.pack(">QQ", 0, checkpoint.size) + checkpoint.root)


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CosignatureError(f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CosignatureError(f"{what} is not in canonical base64")
    return raw


def _split_key(text: object, what: str) -> tuple[str, bytes, int, bytes]:
    """'<name>+<hex8>+<base64(type || material)>' -> (name, key ID, type, material)."""
    if not isinstance(text, str):
        raise CosignatureError(f"{what} must be a string")
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise CosignatureError(f"{what} is not <name>+<key ID>+<key>")
    name, hex8, b64 = parts
    if not valid_key_name(name):
        raise CosignatureError(f"{what} has an invalid key name {name[:60]!r}")
    if not _HEX8.fullmatch(hex8):
        raise CosignatureError(f"{what} key ID {hex8[:20]!r} is not 8 lowercase hex digits")
    raw = _b64(b64, f"{what} key")
    if not raw:
        raise CosignatureError(f"{what} has no key")
    return name, bytes.fromhex(hex8), raw[0], raw[1:]


def vkey_type(vkey: object) -> int | None:
    """The signature type byte of a vkey string, or None when it is not even shaped like one
    (the parser of that type then says what is wrong)."""
    try:
        return _split_key(vkey, "vkey")[2]
    except CosignatureError:
        return None


class CosignatureVerifier:
    """A witness's public key (Ed25519 type 0x04 or ML-DSA-44 type 0x06) with its name."""

    def __init__(self, name: str, algorithm: int, public_key: bytes) -> None:
        if not valid_key_name(name):
            raise CosignatureError(f"invalid cosigner name {name!r}")
        if algorithm not in ALGORITHMS:
            raise CosignatureError(f"signature type {algorithm:#04x} is not a cosignature type (0x04, 0x06)")
        if not isinstance(public_key, bytes) or len(public_key) != _PUBLIC_LEN[algorithm]:
            raise CosignatureError(f"a {ALGORITHMS[algorithm]} public key is {_PUBLIC_LEN[algorithm]} bytes")
        if algorithm == COSIG_ED25519:
            if not usable_public_key(public_key):
                raise CosignatureError("public key is not a usable Ed25519 key")
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        else:
            try:
                self._key = mldsa.MLDSA44PublicKey.from_public_bytes(public_key)
            except ValueError as e:
                raise CosignatureError(f"not an ML-DSA-44 public key: {e}") from None
        self.name, self.algorithm, self.public_key = name, algorithm, public_key
        self.key_id = cosigner_key_id(name, algorithm, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        name, kid, algorithm, material = _split_key(vkey, "cosigner vkey")
        verifier = cls(name, algorithm, material)
        if verifier.key_id != kid:
            raise CosignatureError(f"cosigner vkey ID {kid.hex()} does not match its name and key")
        return verifier

    def vkey(self) -> str:
        raw = base64.b64encode(bytes([self.algorithm]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{raw}"

    def verify(self, checkpoint: Checkpoint, body: bytes, signature: bytes) -> int:
        """Check one cosignature (the bytes after the key ID); return its timestamp."""
        if len(signature) != 8 + _SIGNATURE_LEN[self.algorithm]:
            raise CosignatureError(f"cosignature of {self.name} is {len(signature)} bytes, "
                                   f"not {8 + _SIGNATURE_LEN[self.algorithm]}")
        timestamp = struct.unpack(">Q", signature[:8])[0]
        if timestamp > MAX_TIMESTAMP:
            raise CosignatureError(f"cosignature of {self.name} has a timestamp above 2^63-1")
        if self.algorithm == COSIG_ED25519:
            message = ed25519_message(body, timestamp)
        else:
            message = mldsa_message(self.name, timestamp, checkpoint)
        try:
            self._key.verify(signature[8:], message)
        except InvalidSignature:
            raise CosignatureError(f"invalid cosignature from {self.name}+{self.key_id.hex()}") from None
        return timestamp

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CosignatureVerifier) and self.vkey() == other.vkey()

    def __hash__(self) -> int:
        return hash(self.vkey())

    def __repr__(self) -> str:
        return f"CosignatureVerifier({self.name!r}, {ALGORITHMS[self.algorithm]}, key ID {self.key_id.hex()})"


class CosignatureSigner:
    """A witness's private key: Ed25519 (0x04) or ML-DSA-44 (0x06), from a 32-byte seed."""

    def __init__(self, name: str, algorithm: int, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise CosignatureError("a cosigner seed is 32 bytes")
        if algorithm == COSIG_ED25519:
            self._key = Ed25519PrivateKey.from_private_bytes(seed)
            public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        elif algorithm == COSIG_MLDSA44:
            self._key = mldsa.MLDSA44PrivateKey.from_seed_bytes(seed)
            public = self._key.public_key().public_bytes_raw()
        else:
            raise CosignatureError(f"signature type {algorithm:#04x} is not a cosignature type (0x04, 0x06)")
        self._seed = seed
        self._verifier = CosignatureVerifier(name, algorithm, public)
        self.name, self.algorithm, self.key_id = name, algorithm, self._verifier.key_id

    @classmethod
    def generate(cls, name: str, algorithm: int) -> CosignatureSigner:
        return cls(name, algorithm, os.urandom(32))

    @classmethod
    def from_skey(cls, skey: str) -> CosignatureSigner:
        if not isinstance(skey, str) or not skey.startswith("PRIVATE+KEY+"):
            raise CosignatureError("a cosigner signer key starts with PRIVATE+KEY+")
        name, kid, algorithm, seed = _split_key(skey[len("PRIVATE+KEY+"):], "cosigner signer key")
        signer = cls(name, algorithm, seed)
        if signer.key_id != kid:
            raise CosignatureError(f"cosigner signer key ID {kid.hex()} does not match its name and key")
        return signer

    def skey(self) -> str:
        raw = base64.b64encode(bytes([self.algorithm]) + self._seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{raw}"

    def verifier(self) -> CosignatureVerifier:
        return self._verifier

    def cosign(self, checkpoint: Checkpoint, timestamp: int) -> str:
        """The signed-note line of this key's cosignature on `checkpoint` at `timestamp` (> 0)."""
        if type(timestamp) is not int or not 0 < timestamp <= MAX_TIMESTAMP:
            raise CosignatureError("a checkpoint cosignature's timestamp is a positive POSIX time")
        if self.algorithm == COSIG_ED25519:
            sig = self._key.sign(ed25519_message(checkpoint.body(), timestamp))
        else:
            sig = self._key.sign(mldsa_message(self.name, timestamp, checkpoint))
        raw = self.key_id + struct.pack(">Q", timestamp) + sig
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(raw).decode('ascii')}\n"

    def __repr__(self) -> str:
        return f"CosignatureSigner({self.name!r}, {ALGORITHMS[self.algorithm]}, key ID {self.key_id.hex()})"


def log_signer(key) -> NoteSigner:
    """The note signer of a checkpoint key (ledger.keys.SigningKey, purpose checkpoint, with its
    name): Ed25519 (type 0x01) and, when the key file holds one, its ML-DSA-44 half (type 0x06,
    the same name), which sign_checkpoint adds as a second line (FORMAT.md 5.4)."""
    pq = CosignatureSigner(key.name, COSIG_MLDSA44, key.mldsa_seed) if key.mldsa_seed is not None else None
    return NoteSigner(key.name, key.private_key, pq)


def signature_lines(note: bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and its signature lines (name, key ID, signature)."""
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise CosignatureError("note is not UTF-8") from None
    split = decoded.rfind("\n\n")
    if split < 0 or not decoded.endswith("\n"):
        raise CosignatureError("note has no blank line before its signatures, or no final newline")
    text, block = decoded[: split + 1], decoded[split + 2:]
    out = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise CosignatureError(f"malformed signature line {line[:60]!r}")
        name, sep, b64 = line[len(SIG_PREFIX):].partition(" ")
        if not sep or not valid_key_name(name):
            raise CosignatureError(f"malformed signature line {line[:60]!r}")
        raw = _b64(b64, f"signature of {name}")
        if len(raw) < 5:
            raise CosignatureError(f"signature of {name} is too short")
        out.append((name, raw[:4], raw[4:]))
    return text.encode("utf-8"), out


def cosignatures(note: bytes, verifiers: Iterable[CosignatureVerifier]) -> dict[CosignatureVerifier, int]:
    """The verified cosignatures of a checkpoint note: {verifier: timestamp}.

    Lines of unknown keys are ignored (signed-note); a line whose name and key ID are a known
    cosigner's but whose signature fails makes the note malformed (CosignatureError)."""
    text, lines = signature_lines(note)
    checkpoint = Checkpoint.parse(text)
    known = {(v.name, v.key_id): v for v in verifiers}
    found: dict[CosignatureVerifier, int] = {}
    for name, kid, sig in lines:
        v = known.get((name, kid))
        if v is not None:
            found[v] = v.verify(checkpoint, text, sig)
    return found


def check_log_pq(note: bytes, verifiers: Iterable[NoteVerifier], signed_by: Iterable[NoteVerifier]) -> None:
    """FORMAT.md 5.4: every line of a log key's ML-DSA-44 half (``verifier.mldsa``) known among
    ``verifiers`` verifies, and every log key in ``signed_by`` (those whose Ed25519 line verified)
    that has an ML-DSA-44 half signed with it too. Raises CosignatureError saying which is
    missing or bad."""
    pq = [v.mldsa for v in verifiers if v.mldsa is not None]
    if not pq:
        return
    found = cosignatures(note, pq)
    for v in signed_by:
        if v.mldsa is not None and v.mldsa not in found:
            raise CosignatureError(f"no ML-DSA-44 signature of the log key {v.name}+{v.mldsa.key_id.hex()} "
                                   "(its post-quantum half: FORMAT.md 5.4)")


def add_cosignatures(note: bytes, lines: Iterable[str]) -> bytes:
    """The note with more signature lines appended (each already verified by the caller)."""
    extra = "".join(lines).encode("utf-8")
    return note + extra


# --- tlog-policy ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass
class Policy:
    """A parsed c2sp.org/tlog-policy file."""

    logs: list[NoteVerifier] = field(default_factory=list)
    pq_logs: list[CosignatureVerifier] = field(default_factory=list)  # log lines of type 0x06 (ML-DSA-44)
    log_urls: dict[str, str] = field(default_factory=dict)  # log key name -> URL
    witnesses: dict[str, CosignatureVerifier] = field(default_factory=dict)
    witness_urls: dict[str, str] = field(default_factory=dict)  # witness name -> submission prefix
    groups: dict[str, Group] = field(default_factory=dict)
    quorum: str = ""

    @classmethod
    def parse(cls, data: bytes) -> Policy:
        if not isinstance(data, bytes):
            raise CosignatureError("a policy is bytes")
        bad = sorted({b for b in data if b < 0x20 and b not in (0x09, 0x0A) or b == 0x7F})
        if bad:
            raise CosignatureError(f"policy has a control character {bad[0]:#04x}")
        policy, names, keys = cls(), {"none"}, set()
        for number, raw_line in enumerate(data.split(b"\n"), 1):
            line = raw_line.decode("utf-8", errors="surrogateescape")
            words = line.replace("\t", " ").split()
            where = f"policy line {number}"
            if not words or words[0].startswith("#"):
                continue
            kind, args = words[0], words[1:]
            if kind == "log":
                if len(args) not in (1, 2):
                    raise CosignatureError(f"{where}: log <vkey> [<url>]")
                try:  # a log signs with Ed25519 (0x01) or an ML-DSA-44 cosignature (0x06): tlog-checkpoint
                    if vkey_type(args[0]) == COSIG_MLDSA44:
                        v = CosignatureVerifier.from_vkey(args[0])
                        raw, into = v.public_key, policy.pq_logs
                    else:
                        v = NoteVerifier.from_vkey(args[0])
                        raw, into = v.raw, policy.logs
                except NoteError as e:
                    raise CosignatureError(f"{where}: {e}") from None
                if raw in keys:
                    raise CosignatureError(f"{where}: duplicate key")
                keys.add(raw)
                into.append(v)
                if len(args) == 2:
                    policy.log_urls[v.name] = args[1]
            elif kind == "witness":
                if len(args) not in (2, 3):
                    raise CosignatureError(f"{where}: witness <name> <vkey> [<url>]")
                name = args[0]
                if name in names:
                    raise CosignatureError(f"{where}: the name {name!r} is defined twice (or is 'none')")
                try:
                    w = CosignatureVerifier.from_vkey(args[1])
                except NoteError as e:
                    raise CosignatureError(f"{where}: {e}") from None
                if w.public_key in keys:
                    raise CosignatureError(f"{where}: duplicate key")
                keys.add(w.public_key)
                names.add(name)
                policy.witnesses[name] = w
                if len(args) == 3:
                    policy.witness_urls[name] = args[2]
            elif kind == "group":
                if len(args) < 3:
                    raise CosignatureError(f"{where}: group <name> all|any|<k> <name>...")
                name, k, members = args[0], args[1], tuple(args[2:])
                if name in names:
                    raise CosignatureError(f"{where}: the name {name!r} is defined twice (or is 'none')")
                for m in members:
                    if m == "none" or m not in names:
                        raise CosignatureError(f"{where}: group member {m!r} is not defined on an earlier line")
                if len(set(members)) != len(members):
                    raise CosignatureError(f"{where}: a group lists a member twice")
                if k == "all":
                    threshold = len(members)
                elif k == "any":
                    threshold = 1
                elif re.fullmatch(r"[1-9][0-9]*", k) and 1 <= int(k) <= len(members):
                    threshold = int(k)
                else:
                    raise CosignatureError(f"{where}: threshold {k!r} is not all, any or 1..{len(members)}")
                names.add(name)
                policy.groups[name] = Group(name, threshold, members)
            elif kind == "quorum":
                if len(args) != 1:
                    raise CosignatureError(f"{where}: quorum <name>")
                if policy.quorum:
                    raise CosignatureError(f"{where}: a policy has exactly one quorum line")
                if args[0] not in names:
                    raise CosignatureError(f"{where}: quorum {args[0]!r} is not defined on an earlier line")
                policy.quorum = args[0]
            else:
                raise CosignatureError(f"{where}: unknown keyword {kind[:30]!r}")
        if not policy.quorum:
            raise CosignatureError("policy has no quorum line")
        return policy

    def lists_log(self, signer: NoteSigner) -> bool:
        """Whether a log line of this policy is the log key ``signer``'s: its Ed25519 key (type
        0x01) or its ML-DSA-44 half (type 0x06), under its name."""
        pq = signer.mldsa.verifier() if signer.mldsa is not None else None
        return (any(v.name == signer.name and v.raw == signer.public_key_bytes for v in self.logs)
                or (pq is not None and pq in self.pq_logs))

    def met_by(self, witnessed: set[str]) -> bool:
        """Does the quorum hold when exactly the witnesses named in `witnessed` cosigned?"""

        def holds(name: str) -> bool:
            if name == "none":
                return True
            group = self.groups.get(name)
            if group is None:
                return name in witnessed
            return sum(holds(m) for m in group.members) >= group.threshold

        return holds(self.quorum)

    def check(self, note: bytes) -> CheckedCheckpoint:
        """Verify a checkpoint note under this policy: signed by a listed log whose key name is its
        origin, and cosigned by witnesses that meet the quorum. Raises CosignatureError saying what
        is missing."""
        if not self.logs and not self.pq_logs:
            raise CosignatureError("the policy lists no log")
        text, lines = signature_lines(note)
        try:
            checkpoint = Checkpoint.parse(text)
            signers: list[str] = []
            # Ed25519 log keys (0x01): when a line is theirs, the note must open with them
            if {(v.name, v.key_id) for v in self.logs} & {(n, k) for n, k, _ in lines}:
                signers += [v.name for v in open_note(note, self.logs)[1]]
            # ML-DSA-44 log keys (0x06, tlog-checkpoint's recommendation): their cosignature lines
            signers += [v.name for v in cosignatures(note, self.pq_logs)]
        except NoteError as e:
            raise CosignatureError(f"checkpoint not signed by a log of the policy: {e}") from None
        if not signers:
            raise CosignatureError("checkpoint not signed by a log of the policy: note has no signature from a "
                                   "known key")
        if checkpoint.origin not in signers:
            raise CosignatureError(f"checkpoint origin {checkpoint.origin!r} is not the name of the log key "
                                   "that signed it")
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            raise CosignatureError("a checkpoint of size 0 must have the empty tree's root")
        found = cosignatures(note, self.witnesses.values())
        by_name = {name: found[w] for name, w in self.witnesses.items() if w in found}
        if not self.met_by(set(by_name)):
            missing = sorted(set(self.witnesses) - set(by_name))
            raise CosignatureError(f"witness quorum {self.quorum!r} not met: cosigned by "
                                   f"{', '.join(sorted(by_name)) or 'no witness of the policy'}; no valid "
                                   f"cosignature from {', '.join(missing)}")
        return CheckedCheckpoint(checkpoint, by_name)


@dataclass(frozen=True)
class CheckedCheckpoint:
    checkpoint: Checkpoint
    cosigned_by: dict[str, int]  # witness name -> cosignature timestamp


def split_view(a: CheckedCheckpoint, b: CheckedCheckpoint, proof: list[bytes] | None = None) -> str | None:
    """Name a split view between two checkpoints of one log, or None when none is shown.

    Same size, different roots: a split, whatever the proof. Different sizes: a split when the
    given consistency proof (from the smaller to the larger) does not verify; without a proof the
    two cannot be compared, and None is answered."""
    x, y = sorted((a.checkpoint, b.checkpoint), key=lambda c: c.size)
    if x.origin != y.origin:
        return None
    if x.size == y.size:
        if x.root != y.root:
            return (f"split view of {x.origin}: two roots at size {x.size} ({x.root.hex()[:16]}..., "
                    f"{y.root.hex()[:16]}...)")
        return None
    if proof is None or x.size == 0:
        return None
    try:
        verify_consistency(x.size, y.size, proof, x.root, y.root)
    except ProofError as e:
        return f"split view of {x.origin}: size {x.size} is not consistent with size {y.size} ({e})"
    return None
