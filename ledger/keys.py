"""Ed25519 keys: key ids, signing with a domain-separation tag, strict verification, key files.

* A key id is the first 8 bytes of SHA-256(raw 32-byte public key), as 16 lowercase hex digits.
* Every signature is Ed25519 over ``tag || message``; the tag names what is signed
  (see :data:`ledger.entry.ENTRY_TAG`), so that a signature over one kind of message can never
  be presented as a signature over another.
* Every signature the ledger checks is checked by :func:`ed25519_verify` (libsodium's strict
  rules, FORMAT.md 2.7); keys are made and signatures made with ``cryptography``.
* A key file is JSON (format ``reledger-key-v1``) written with mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign_open
from nacl.exceptions import CryptoError

KEY_FILE_FORMAT = "reledger-key-v1"
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
PURPOSES = ("entries", "checkpoint")


class KeyError_(ValueError):
    """A malformed key or key file."""


def key_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise KeyError_("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).hexdigest()[:16]


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``public_key`` over ``message``,
    by libsodium's strict rules (RFC 8032 verification, plus: S below the group order, and the
    public key A and the point R canonically encoded and not of small order).

    The one place where the ledger checks a signature (entries, requests, checkpoint notes).
    Why not ``cryptography`` (OpenSSL), which makes the keys and the signatures: OpenSSL accepts
    a signature (R, S) = (identity, 0) for *any* message under a small-order public key such
    as the identity point, so a party that got such a key registered could "sign" anything, or
    disown what it signed; libsodium refuses both (tests/test_keys_strict.py). It is also
    twice as fast (~40 against ~80 us on the benchmark machine). Every honest signature
    verifies under both. The call releases the GIL (cffi), as OpenSSL's does."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        crypto_sign_open(bytes(signature) + message, bytes(public_key))
        return True
    except (CryptoError, ValueError, TypeError):
        return False


def usable_public_key(public_key: bytes) -> bool:
    """Whether ``public_key`` is a 32-byte Ed25519 key a signature can verify under: a point of
    the curve in canonical form, in the prime-order subgroup, not of small order (every key
    made by the Ed25519 key generation is)."""
    return len(public_key) == 32 and bool(crypto_core_ed25519_is_valid_point(bytes(public_key)))


def verify_signature(public_key: bytes, tag: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``public_key`` over tag || message
    (:func:`ed25519_verify`)."""
    return ed25519_verify(public_key, signature, tag + message)


@dataclass(frozen=True)
class SigningKey:
    """A party's private key: who it belongs to, and what it signs (entries or checkpoints)."""

    party: str
    private_key: Ed25519PrivateKey
    purpose: str = "entries"
    name: str | None = None  # for checkpoint keys: the signed-note key name (the log's origin)

    @classmethod
    def generate(cls, party: str, purpose: str = "entries", name: str | None = None) -> "SigningKey":
        return cls(party, Ed25519PrivateKey.generate(), purpose, name)

    @classmethod
    def from_seed(cls, party: str, seed: bytes, purpose: str = "entries", name: str | None = None) -> "SigningKey":
        return cls(party, Ed25519PrivateKey.from_private_bytes(seed), purpose, name)

    @property
    def seed(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

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
        key = cls.from_seed(party, seed, purpose, name)
        if data.get("key_id") not in (None, key.key_id):
            raise KeyError_("malformed key file: key_id does not match the key")
        return key

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SigningKey":
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise KeyError_(f"cannot read key file {path}: {e}") from e
        return cls.from_json(data)
