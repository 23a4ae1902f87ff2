"""Ed25519 keys: key ids, signing with a domain-separation tag, key files.

* A key id is the first 8 bytes of SHA-256(raw 32-byte public key), as 16 lowercase hex digits.
* Every signature is Ed25519 over ``tag || message``; the tag names what is signed
  (see :data:`reledger.ledger.entry.ENTRY_TAG`), so that a signature over one kind of message can never
  be presented as a signature over another.
* A key file is JSON (format ``reledger-key-v1``) written with mode 0600.
* A checkpoint key may also hold an ML-DSA-44 (FIPS 204, post-quantum) key, from a 32-byte
  seed: the log signs every checkpoint with both (FORMAT.md 4.4, 5.4).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE_FORMAT = "reledger-key-v1"
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
PURPOSES = ("entries", "checkpoint")
MLDSA44_PUBLIC_LEN = 1312


def mldsa44_public_key(seed: bytes) -> bytes:
    """The 1,312-byte ML-DSA-44 public key of a 32-byte FIPS 204 seed (xi)."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise KeyError_("an ML-DSA-44 seed is 32 bytes")
    return mldsa.MLDSA44PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()


class KeyError_(ValueError):
    """A malformed key or key file."""


def key_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise KeyError_("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def ed25519_public_key(raw: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key of 32 raw bytes (cached: the same few keys verify every entry)."""
    return Ed25519PublicKey.from_public_bytes(raw)


_public_key = ed25519_public_key  # (the name ledger/verify.py imports until its branch is merged: then delete)


# Ed25519's curve (RFC 8032, 5.1): -x^2 + y^2 = 1 + d x^2 y^2 over GF(p)
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
# the y coordinates of the eight points of small order (RFC 8032's identity, its point of order
# 2, the two of order 4, the four of order 8), as in libsodium's blocklist
_SMALL_ORDER_Y = frozenset({
    1, _P - 1, 0,
    int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"),
    int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"),
})


def usable_public_key(public_key: bytes) -> bool:
    """Whether ``public_key`` is 32 bytes that encode a point of the curve canonically (y below
    p, an x for it, not "-0") that is not of small order. Every key from Ed25519's key
    generation is one. A key of small order must never be registered: under the identity point
    the signature (R, S) = (identity, 0) satisfies RFC 8032's verification equation for *every*
    message (OpenSSL, behind ``cryptography``, accepts it; tests/test_keys_strict.py), so anyone
    could sign for its party, and the party could disown what it signed. FORMAT.md 4.1."""
    if len(public_key) != 32:
        return False
    n = int.from_bytes(public_key, "little")
    y, x_odd = n & ((1 << 255) - 1), n >> 255
    if y >= _P or y in _SMALL_ORDER_Y:
        return False
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        return not x_odd  # x = 0 has no negative
    return pow(x2, (_P - 1) // 2, _P) == 1  # x^2 has a square root: a point of the curve


def verify_signature(public_key: bytes, tag: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``public_key`` over tag || message."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        ed25519_public_key(bytes(public_key)).verify(signature, tag + message)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class SigningKey:
    """A party's private key: who it belongs to, and what it signs (entries or checkpoints)."""

    party: str
    private_key: Ed25519PrivateKey
    purpose: str = "entries"
    name: str | None = None  # for checkpoint keys: the signed-note key name (the log's origin)
    mldsa_seed: bytes | None = None  # checkpoint keys only: the ML-DSA-44 seed (post-quantum half)

    def __post_init__(self) -> None:
        if self.mldsa_seed is not None:
            if self.purpose != "checkpoint":
                raise KeyError_("only a checkpoint key has an ML-DSA-44 half (entries stay Ed25519)")
            if not isinstance(self.mldsa_seed, bytes) or len(self.mldsa_seed) != 32:
                raise KeyError_("an ML-DSA-44 seed is 32 bytes")

    @classmethod
    def generate(cls, party: str, purpose: str = "entries", name: str | None = None,
                 mldsa: bool = False) -> "SigningKey":
        return cls(party, Ed25519PrivateKey.generate(), purpose, name, os.urandom(32) if mldsa else None)

    @classmethod
    def from_seed(cls, party: str, seed: bytes, purpose: str = "entries", name: str | None = None,
                  mldsa_seed: bytes | None = None) -> "SigningKey":
        return cls(party, Ed25519PrivateKey.from_private_bytes(seed), purpose, name, mldsa_seed)

    @property
    def mldsa_public_key(self) -> bytes | None:
        """The ML-DSA-44 public key (1,312 bytes) of a checkpoint key that has one, else None."""
        return None if self.mldsa_seed is None else mldsa44_public_key(self.mldsa_seed)

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, tag: bytes, message: bytes) -> bytes:
        return self.private_key.sign(tag + message)

    # --- key files ---------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {
            "format": KEY_FILE_FORMAT,
            "party": self.party,
            "purpose": self.purpose,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "private_key": base64.b64encode(self.seed).decode(),
        }
        if self.name:
            data["name"] = self.name
        if self.mldsa_seed is not None:
            data["mldsa44_public_key"] = base64.b64encode(self.mldsa_public_key).decode()
            data["mldsa44_private_key"] = base64.b64encode(self.mldsa_seed).decode()
        return data

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the key file with mode 0600 (refuses to overwrite unless asked)."""
        path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")
        os.chmod(path, 0o600)
        return path

    @classmethod
    def from_json(cls, data: dict) -> "SigningKey":
        if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
            raise KeyError_(f"not a {KEY_FILE_FORMAT} key file")
        try:
            seed = base64.b64decode(data["private_key"], validate=True)
            party = data["party"]
            purpose = data.get("purpose", "entries")
        except (KeyError, ValueError, TypeError) as e:
            raise KeyError_(f"malformed key file: {e}") from e
        if len(seed) != 32:
            raise KeyError_("malformed key file: the private key is not 32 bytes")
        if purpose not in PURPOSES:
            raise KeyError_(f"malformed key file: unknown purpose {purpose!r}")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise KeyError_("malformed key file: name must be text")
        mldsa_seed = None
        if "mldsa44_private_key" in data:
            try:
                mldsa_seed = base64.b64decode(data["mldsa44_private_key"], validate=True)
            except (ValueError, TypeError) as e:
                raise KeyError_(f"malformed key file: mldsa44_private_key: {e}") from e
            if len(mldsa_seed) != 32:
                raise KeyError_("malformed key file: the ML-DSA-44 seed is not 32 bytes")
        elif "mldsa44_public_key" in data:
            raise KeyError_("malformed key file: mldsa44_public_key without mldsa44_private_key")
        key = cls.from_seed(party, seed, purpose, name, mldsa_seed)
        if data.get("key_id") not in (None, key.key_id):
            raise KeyError_("malformed key file: key_id does not match the key")
        if mldsa_seed is not None and data.get("mldsa44_public_key") not in (
                None, base64.b64encode(key.mldsa_public_key).decode()):
            raise KeyError_("malformed key file: mldsa44_public_key does not match the ML-DSA-44 seed")
        return key

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SigningKey":
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise KeyError_(f"cannot read key file {path}: {e}") from e
        return cls.from_json(data)
