"""C2SP signed notes (c2sp.org/signed-note) and log checkpoints (c2sp.org/tlog-checkpoint).

A checkpoint body is three or more non-empty lines, each ending in a newline:

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the 32-byte RFC 9162 root>
    [extension lines]

A signed note is a text ending in a newline, a blank line, then one or more lines
``— <key name> <base64(4-byte key ID || signature)>`` (U+2014 EM DASH). For Ed25519
(signature type 0x01) the key ID is SHA-256(name || 0x0A || 0x01 || public key)[:4].
Key strings are those of golang.org/x/mod/sumdb/note:

    verifier key: <name>+<key ID, 8 lowercase hex>+<base64(0x01 || 32-byte public key)>
    signer key:   PRIVATE+KEY+<name>+<key ID>+<base64(0x01 || 32-byte seed)>

Parsing is strict: anything malformed raises NoteError (or its subclass
CheckpointError), never a crash and never a silent repair.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .keys import usable_public_key

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # EM DASH, space
MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16
MAX_TREE_SIZE = 2**64 - 1
_SIZE_RE = re.compile(r"(0|[1-9][0-9]*)", re.ASCII)
_HEX8_RE = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(ValueError):
    """A malformed or unverifiable signed note or key string."""


class CheckpointError(NoteError):
    """A malformed checkpoint body, or a checkpoint for the wrong origin."""


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4) in its one canonical spelling."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _show(text: str, limit: int = 60) -> str:
    """repr() of untrusted text for an error message, cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_text(text: str, what: str) -> None:
    """Notes must not hold ASCII control characters (below U+0020) other than newline."""
    for ch in text:
        if ch < " " and ch != "\n":
            raise NoteError(f"{what} contains control character U+{ord(ch):04X}")


def _decode(data: bytes, what: str) -> str:
    if not isinstance(data, bytes):
        raise NoteError(f"{what} must be bytes, got {type(data).__name__}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None
    _check_text(text, what)
    return text


def _check_name(name: object) -> None:
    """Key names are non-empty and contain no Unicode space and no '+'."""
    if not isinstance(name, str) or not name:
        raise NoteError(f"key name must be a non-empty string, got {_show(repr(name))}")
    for ch in name:
        if ch == "+" or ch.isspace() or unicodedata.category(ch).startswith("Z"):
            raise NoteError(f"key name {_show(name)} contains forbidden character U+{ord(ch):04X}")


def valid_key_name(name: object) -> bool:
    """True for a signed-note key name (non-empty, no space, no '+')."""
    try:
        _check_name(name)
        return True
    except NoteError:
        return False


def key_id(name: str, public_key: bytes) -> bytes:
    """Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _parse_key_string(text: str, what: str) -> tuple[str, bytes, bytes]:
    """Split '<name>+<hex8>+<base64(0x01 || key)>' into (name, key ID, 32-byte key)."""
    if not isinstance(text, str):
        raise NoteError(f"{what} must be a string")
    parts = text.split("+", 2)  # the base64 part may itself contain '+'
    if len(parts) != 3:
        raise NoteError(f"{what} is not <name>+<key ID>+<key>")
    name, hex8, b64 = parts
    _check_name(name)
    if not _HEX8_RE.fullmatch(hex8):
        raise NoteError(f"{what} key ID {_show(hex8)} is not 8 lowercase hex digits")
    raw = _b64decode(b64, f"{what} key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError(f"{what} is not an Ed25519 (type 0x01, 32-byte) key")
    return name, bytes.fromhex(hex8), raw[1:]


class NoteVerifier:
    """An Ed25519 public key with its key name."""

    def __init__(self, name: str, public_key: Ed25519PublicKey, mldsa: object = None) -> None:
        _check_name(name)
        if not isinstance(public_key, Ed25519PublicKey):
            raise NoteError("public_key must be an Ed25519PublicKey")
        # a log key's post-quantum half (a ledger.cosignature.CosignatureVerifier of type 0x06, of
        # the same name): a checkpoint signed with this key must carry its ML-DSA-44 line too (5.4)
        self.mldsa = mldsa
        self.name = name
        self.public_key = public_key
        self.raw = _raw_public(public_key)
        if not usable_public_key(self.raw):  # no signature would verify under it
            raise NoteError("public key is not a usable Ed25519 key (not a canonical curve point, or of small order)")
        self.key_id = key_id(name, self.raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key string; its key ID must match its name and key."""
        name, kid, raw = _parse_key_string(vkey, "verifier key")
        try:
            verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as e:  # NoteError is a ValueError too
            raise NoteError(f"verifier key is not a valid Ed25519 key: {e}") from None
        if verifier.key_id != kid:
            raise NoteError(f"verifier key ID {kid.hex()} does not match name and key")
        return verifier

    def vkey(self) -> str:
        raw = bytes([ALG_ED25519]) + _raw_public(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode('ascii')}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, text)
            return True
        except InvalidSignature:
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoteVerifier) and self.vkey() == other.vkey()

    def __hash__(self) -> int:
        return hash(self.vkey())

    def __repr__(self) -> str:
        return f"NoteVerifier.from_vkey({self.vkey()!r})"


class NoteSigner:
    """An Ed25519 private key with its key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey, mldsa: object = None) -> None:
        _check_name(name)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise NoteError("private_key must be an Ed25519PrivateKey")
        # the log's post-quantum half: a ledger.cosignature.CosignatureSigner of type 0x06 and the
        # same name, whose line sign_checkpoint adds (FORMAT.md 5.4)
        if mldsa is not None and getattr(mldsa, "name", None) != name:
            raise NoteError("the ML-DSA-44 half of a log key has the log key's name")
        self.mldsa = mldsa
        self.name = name
        self.private_key = private_key
        self.key_id = key_id(name, _raw_public(private_key.public_key()))

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse 'PRIVATE+KEY+<name>+<hex8>+<base64(0x01 || seed)>'."""
        if not isinstance(skey, str) or not skey.startswith("PRIVATE+KEY+"):
            raise NoteError("signer key must start with PRIVATE+KEY+")
        name, kid, seed = _parse_key_string(skey[len("PRIVATE+KEY+"):], "signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != kid:
            raise NoteError(f"signer key ID {kid.hex()} does not match name and key")
        return signer

    def skey(self) -> str:
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{b64}"

    @property
    def public_key_bytes(self) -> bytes:
        return _raw_public(self.private_key.public_key())

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.private_key.public_key(),
                            self.mldsa.verifier() if self.mldsa is not None else None)

    def sign(self, text: bytes) -> bytes:
        return self.private_key.sign(text)

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, key ID {self.key_id.hex()})"


def sign_note(text: bytes, signers: Iterable[NoteSigner]) -> bytes:
    """Return text, a blank line, and one signature line per signer (at least one)."""
    _decode(text, "note text")
    if not text.endswith(b"\n"):
        raise NoteError("note text must end with a newline")
    signers = list(signers)
    if not signers:
        raise NoteError("a signed note needs at least one signer")
    lines = []
    for s in signers:
        sig = base64.b64encode(s.key_id + s.sign(text)).decode("ascii")
        lines.append(f"{SIG_PREFIX}{s.name} {sig}\n")
    return text + b"\n" + "".join(lines).encode("utf-8")


def signature_keys(note: bytes) -> list[tuple[str, bytes]]:
    """(key name, key ID) of each signature line of a note that :func:`open_note` accepted,
    in order."""
    block = note[note.rfind(b"\n\n") + 2:].decode("utf-8")
    out = []
    for line in block[:-1].split("\n"):
        name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
        out.append((name, _b64decode(b64, f"signature of {name}")[:4]))
    return out


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> tuple[bytes, list[NoteVerifier]]:
    """Verify a signed note; return (text, the known verifiers whose signature verified).

    Signatures whose (name, key ID) match no given verifier are ignored, as the spec
    requires (each must still be a well-formed line). A known key whose signature fails
    rejects the whole note, and so does a note without any verified signature. A repeated
    line is accepted here, as golang.org/x/mod/sumdb/note does (reledger's checkpoints refuse
    it: ledger/rules.py ``checkpoint``).
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if not isinstance(v, NoteVerifier):
            raise NoteError(f"verifiers must be NoteVerifier, got {type(v).__name__}")
        if known.setdefault((v.name, v.key_id), v) != v:
            raise NoteError(f"ambiguous verifiers: two keys named {v.name} with ID {v.key_id.hex()}")
    _decode(note, "note")  # valid UTF-8 without control characters
    split = note.rfind(b"\n\n")  # the text ends at the last blank line
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :].decode("utf-8")
    if not block.endswith("\n"):
        raise NoteError("note must end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    verified: list[NoteVerifier] = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line {_show(line)}")
        name, sep, b64 = line[len(SIG_PREFIX):].partition(" ")
        if not sep or not b64:
            raise NoteError(f"malformed signature line {_show(line)}")
        _check_name(name)
        raw = _b64decode(b64, f"signature of {name}")
        if len(raw) < 5:
            raise NoteError(f"signature of {name} is too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue  # an unknown key: ignore (c2sp.org/signed-note), its line well formed
        if not verifier.verify(text, raw[4:]):
            raise NoteError(f"invalid signature for key {name}+{raw[:4].hex()}")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise NoteError("note has no signature from a known key")
    return text, verified


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin (log identity), tree size, RFC 9162 root and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for what, line in [("origin", self.origin)] + [("extension line", e) for e in self.extensions]:
            if not isinstance(line, str) or not line:
                raise CheckpointError(f"{what} must be a non-empty string, got {_show(repr(line))}")
            if "\n" in line:
                raise CheckpointError(f"{what} must not contain a newline")
            try:
                line.encode("utf-8")
                _check_text(line, what)
            except (UnicodeEncodeError, NoteError) as e:
                raise CheckpointError(f"{what} {_show(line)} is not valid note text: {e}") from None
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size must be an int in [0, 2**64), got {_show(repr(self.size))}")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise CheckpointError("root must be 32 bytes")

    def body(self) -> bytes:
        """The note text of this checkpoint."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii")]
        return "".join(line + "\n" for line in lines + list(self.extensions)).encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Parse a checkpoint note text strictly: parse(cp.body()) == cp, all else refused."""
        try:
            text = _decode(body, "checkpoint")
        except NoteError as e:
            raise CheckpointError(str(e)) from None
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint needs at least 3 lines, got {len(lines)}")
        origin, size, root, *extensions = lines
        for i, line in enumerate(lines):
            if not line:
                raise CheckpointError(f"checkpoint line {i + 1} is empty")
        if not _SIZE_RE.fullmatch(size) or len(size) > 20 or int(size) > MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {_show(size)} is not a decimal uint64 without leading zeros")
        try:
            root_hash = _b64decode(root, "root hash")
        except NoteError as e:
            raise CheckpointError(str(e)) from None
        if len(root_hash) != 32:
            raise CheckpointError(f"root hash must be 32 bytes, got {len(root_hash)}")
        return cls(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner, timestamp: int | None = None) -> bytes:
    """The signed note of a checkpoint (the log's key name SHOULD equal its origin): the Ed25519
    line (5.2) and, when the signer has an ML-DSA-44 half, its line after it (5.4), a
    tlog-cosignature of type 0x06 made at ``timestamp`` (POSIX seconds, required then)."""
    note = sign_note(checkpoint.body(), [signer])
    if signer.mldsa is not None:
        if timestamp is None:
            raise NoteError("an ML-DSA-44 checkpoint signature needs its timestamp")
        note += signer.mldsa.cosign(checkpoint, timestamp).encode("utf-8")
    return note


def verify_checkpoint(note: bytes, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Open a checkpoint note signed by `verifier`; if `origin` is given, it must match."""
    checkpoint = Checkpoint.parse(open_note(note, [verifier])[0])
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin {_show(checkpoint.origin)} is not {origin!r}")
    return checkpoint
