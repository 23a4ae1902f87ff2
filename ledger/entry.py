"""The entry: what a party signs, how it is chained, and how the log covers it.

Three byte strings, all canonical msgpack (``reledger.ledger.encoding``), specified in docs/FORMAT.md:

``content``   a map of exactly these keys (sorted):
              body, chain, command_id, key_id, occurred_at, prev, seq, type, v
``envelope``  a map {"entry": bin(content), "sig": bin(64)}; the signature is Ed25519 over
              ENTRY_TAG || content. The envelope is what clients submit and the store keeps.
``leaf``      a map {"entry_hash": bin(32), "index": int, "recorded_at": str}: what the ledger
              adds outside the signature. The Merkle log hashes it as an RFC 9162 leaf.

The entry hash is SHA-256(envelope); ``prev`` of seq n+1 is the entry hash of seq n, and
32 zero bytes for seq 1.
"""

from __future__ import annotations

import hashlib
import re
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature

from . import encoding
from .encoding import EncodingError
from .keys import KEY_ID_RE, SigningKey, ed25519_public_key, verify_signature

FORMAT_VERSION = 1
ENTRY_TAG = b"reledger/v1/entry\n"
ZERO_HASH = bytes(32)
CONTENT_KEYS = ("body", "chain", "command_id", "key_id", "occurred_at", "prev", "seq", "type", "v")
CHAIN_RE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{1,63}\Z")
TYPE_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}\Z")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
MAX_ENVELOPE = 256 * 1024


class EntryError(ValueError):
    """An entry that is malformed (bad bytes, missing or extra fields, bad signature...)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _check(cond: bool, message: str, field_name: str) -> None:
    if not cond:
        raise EntryError(f"{field_name}: {message}", field_name)


@dataclass(frozen=True)
class Entry:
    """The signed content of an entry (see module docstring)."""

    chain: str
    seq: int
    prev: bytes
    type: str
    occurred_at: str
    body: dict
    key_id: str
    command_id: str
    v: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_content(self.as_map())

    def as_map(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "chain": self.chain,
            "command_id": self.command_id,
            "key_id": self.key_id,
            "occurred_at": self.occurred_at,
            "prev": self.prev,
            "seq": self.seq,
            "type": self.type,
            "v": self.v,
        }

    def content_bytes(self) -> bytes:
        return encoding.canonical(self.as_map())

    def sign(self, key: SigningKey) -> "SignedEntry":
        if key.key_id != self.key_id:
            raise EntryError("key_id: the entry names another key than the one signing it", "key_id")
        content = self.content_bytes()
        return SignedEntry.from_parts(content, key.sign(ENTRY_TAG, content))


def validate_content(m: Any) -> None:
    """Structural checks every entry must pass, whatever its type."""
    if not isinstance(m, dict):
        raise EntryError("entry: the content is not a map", "entry")
    missing = [k for k in CONTENT_KEYS if k not in m]
    extra = sorted(k for k in m if k not in CONTENT_KEYS)
    if missing:
        raise EntryError(f"entry: missing field(s) {', '.join(missing)}", missing[0])
    if extra:
        raise EntryError(f"entry: unknown field(s) {', '.join(extra)}", extra[0])
    _check(m["v"] == FORMAT_VERSION and type(m["v"]) is int, f"format version must be {FORMAT_VERSION}", "v")
    _check(isinstance(m["chain"], str) and bool(CHAIN_RE.match(m["chain"])),
           "must be a party id of 2-64 characters A-Z 0-9 . _ -", "chain")
    _check(type(m["seq"]) is int and m["seq"] >= 1, "must be an integer >= 1", "seq")
    _check(isinstance(m["prev"], bytes) and len(m["prev"]) == 32, "must be 32 bytes", "prev")
    if m["seq"] == 1:
        _check(m["prev"] == ZERO_HASH, "must be 32 zero bytes for seq 1", "prev")
    _check(isinstance(m["type"], str) and bool(TYPE_RE.match(m["type"])), "must be an entry type name", "type")
    try:
        encoding.parse_time(m["occurred_at"])
    except EncodingError as e:
        raise EntryError(f"occurred_at: {e}", "occurred_at") from e
    _check(isinstance(m["body"], dict), "must be a map", "body")
    _check(isinstance(m["key_id"], str) and bool(KEY_ID_RE.match(m["key_id"])),
           "must be 16 lowercase hex digits", "key_id")
    _check(isinstance(m["command_id"], str) and bool(UUID_RE.match(m["command_id"])),
           "must be a lowercase UUID like 1b4e28ba-2fa1-11d2-883f-0016d3cca427", "command_id")


@dataclass(frozen=True)
class SignedEntry:
    """An envelope: content bytes, signature, and the decoded entry."""

    envelope: bytes
    content: bytes
    signature: bytes
    entry: Entry = field(compare=False)
    hash: bytes = field(compare=False)

    @classmethod
    def from_parts(cls, content: bytes, signature: bytes) -> "SignedEntry":
        envelope = encoding.canonical({"entry": content, "sig": signature})
        return cls.parse(envelope)

    @classmethod
    def parse(cls, envelope: bytes) -> "SignedEntry":
        """Strictly parse an envelope (the signature is NOT checked here: see ``verify``)."""
        if not isinstance(envelope, (bytes, bytearray)):
            raise EntryError("envelope: expected bytes", "envelope")
        envelope = bytes(envelope)
        if len(envelope) > MAX_ENVELOPE:
            raise EntryError(f"envelope: larger than {MAX_ENVELOPE} bytes", "envelope")
        parts = _split_envelope(envelope)
        if parts is not None:
            return cls._from_content(envelope, *parts)
        try:
            outer = encoding.decode(envelope)
        except EncodingError as e:
            raise EntryError(f"envelope: {e}", "envelope") from e
        if not isinstance(outer, dict) or sorted(outer) != ["entry", "sig"]:
            raise EntryError("envelope: must be a map of exactly 'entry' and 'sig'", "envelope")
        content, signature = outer["entry"], outer["sig"]
        if not isinstance(content, bytes) or not isinstance(signature, bytes):
            raise EntryError("envelope: 'entry' and 'sig' must be binary", "envelope")
        if len(signature) != 64:
            raise EntryError("sig: an Ed25519 signature is 64 bytes", "sig")
        return cls._from_content(envelope, content, signature)

    @classmethod
    def _from_content(cls, envelope: bytes, content: bytes, signature: bytes) -> "SignedEntry":
        m = _fast_content(content)
        if m is None:  # not the common canonical shape: the strict path decides and explains
            try:
                m = encoding.decode(content)
            except EncodingError as e:
                raise EntryError(f"entry: {e}", "entry") from e
            validate_content(m)
        # already validated: skip the dataclasses' __init__/__post_init__ (frozen, so each field
        # would cost an object.__setattr__); m holds exactly the fields of Entry
        entry = object.__new__(Entry)
        entry.__dict__.update(m)
        signed = object.__new__(cls)
        signed.__dict__.update(envelope=envelope, content=content, signature=signature, entry=entry,
                               hash=_sha256(envelope).digest())
        return signed

    def signature_valid(self, public_key: bytes) -> bool:
        """Ed25519 over ENTRY_TAG || content. A success is remembered on this object (its bytes
        never change), so the command API and the store do not both pay for one entry."""
        if self.__dict__.get("_verified_with") == public_key:
            return True

        ok = verify_signature(public_key, ENTRY_TAG, self.content, self.signature)
        if ok:
            object.__setattr__(self, "_verified_with", public_key)
        return ok


# --- the fast path of parsing --------------------------------------------------------------
#
# Most entries are canonical and well formed. For them, one C unpack, a Python walk of the
# body only (the top-level map is checked against CONTENT_KEYS as a whole: same keys, same
# sorted order), one C re-pack compared with the input (shortest forms), and type checks with
# small caches of already validated names decide. Any doubt returns None and the strict path
# (encoding.decode + validate_content) decides and names the problem, so both paths accept
# exactly the same bytes (tests/test_entry.py checks this with hypothesis).

_sha256 = hashlib.sha256
_NAME_CACHE_MAX = 1 << 16  # chains, types and key ids already checked, per kind (bounded)


def _name_check(pattern: re.Pattern):
    """A check of ``pattern`` that remembers the (few, repeated) names it accepted."""
    seen: set[str] = set()

    def valid(value: Any) -> bool:
        if type(value) is not str:
            return False
        if value in seen:
            return True
        if not pattern.match(value):
            return False
        if len(seen) >= _NAME_CACHE_MAX:
            seen.clear()
        seen.add(value)
        return True

    return valid


_valid_chain, _valid_type, _valid_key_id = _name_check(CHAIN_RE), _name_check(TYPE_RE), _name_check(KEY_ID_RE)


def _fast_content(content: bytes) -> dict | None:
    """The decoded content when it is canonical and passes validate_content; None when in doubt."""
    try:
        m = msgpack.unpackb(content, raw=False, strict_map_key=True, ext_hook=encoding.refuse_ext)
    except Exception:  # noqa: BLE001 - the strict path explains
        return None
    if type(m) is not dict or tuple(m) != CONTENT_KEYS:
        return None
    body, seq, prev = m["body"], m["seq"], m["prev"]
    if (type(body) is not dict or type(seq) is not int or seq < 1 or type(prev) is not bytes or len(prev) != 32
            or (seq == 1 and prev != ZERO_HASH) or type(m["v"]) is not int or m["v"] != FORMAT_VERSION
            or not _valid_chain(m["chain"]) or not _valid_type(m["type"]) or not _valid_key_id(m["key_id"])
            or type(m["command_id"]) is not str or not UUID_RE.match(m["command_id"])):
        return None
    if not encoding.plain_canonical_tree(body, 1):
        return None
    try:
        encoding.parse_time(m["occurred_at"])
        if msgpack.packb(m, use_bin_type=True) != content:
            return None
    except Exception:  # noqa: BLE001
        return None
    return m


_ENV_HEAD = b"\x82\xa5entry"
_ENV_SIG = b"\xa3sig\xc4\x40"


def _split_envelope(env: bytes) -> tuple[bytes, bytes] | None:
    """(content, signature) when ``env`` has exactly the canonical layout of
    {"entry": bin(content), "sig": bin(64)}; None otherwise (the strict decoder then decides)."""
    if len(env) < 80 or not env.startswith(_ENV_HEAD):
        return None
    tag = env[7]
    if tag == 0xC4:
        n, start = env[8], 9
    elif tag == 0xC5:
        n, start = int.from_bytes(env[8:10], "big"), 10
        if n < 0x100:
            return None
    elif tag == 0xC6:
        n, start = int.from_bytes(env[8:12], "big"), 12
        if n < 0x10000:
            return None
    else:
        return None
    end = start + n
    if len(env) != end + 70 or env[end:end + 6] != _ENV_SIG:
        return None
    return env[start:end], env[end + 6:]


class LeafHasher:
    """merkle.leaf_hash(leaf_bytes(entry_hash, index, recorded_at)) for many entries recorded
    at one time: the leaf's bytes around the hash and the index are fixed, so they are built
    once (the hot paths of append and verify). ``tests/test_entry.py`` checks it against
    leaf_bytes and merkle.leaf_hash."""

    # 0x00 (RFC 9162's leaf prefix), then the canonical map's head and first key, bin8 of 32
    HEAD = b"\x00\x83\xaaentry_hash\xc4\x20"
    INDEX_KEY = b"\xa5index"

    def __init__(self, recorded_at: str) -> None:
        self.tail = tail = b"\xabrecorded_at" + msgpack.packb(recorded_at)
        self._pack_int = pack_int = msgpack.Packer().pack
        head, index_key, sha256 = self.HEAD, self.INDEX_KEY, _sha256

        def leaf_hash(entry_hash: bytes, index: int) -> bytes:
            return sha256(head + entry_hash + index_key + pack_int(index) + tail).digest()

        # the same as a plain function, for hot loops (calling an instance goes through its
        # type's __call__ slot, a bound-method object built per call)
        self.hash = leaf_hash

    def __call__(self, entry_hash: bytes, index: int) -> bytes:
        return self.hash(entry_hash, index)


def leaf_bytes(entry_hash: bytes, index: int, recorded_at: str) -> bytes:
    """The Merkle leaf the ledger records for an entry (outside the party's signature):
    canonical msgpack of {"entry_hash", "index", "recorded_at"} (keys already in order)."""
    if type(entry_hash) is not bytes or len(entry_hash) != 32 or type(index) is not int or index < 0 \
            or type(recorded_at) is not str:
        raise EncodingError("leaf: entry_hash is 32 bytes, index an integer >= 0, recorded_at text")
    return msgpack.packb({"entry_hash": entry_hash, "index": index, "recorded_at": recorded_at}, use_bin_type=True)


def new_command_id() -> str:
    return str(uuid.uuid4())


def make_entry(key: SigningKey, *, seq: int, prev: bytes, type: str, occurred_at: str, body: dict,
               command_id: str | None = None, chain: str | None = None) -> SignedEntry:
    """Build and sign an entry with ``key`` (its party's chain unless ``chain`` says otherwise)."""
    entry = Entry(
        chain=chain or key.party,
        seq=seq,
        prev=prev,
        type=type,
        occurred_at=occurred_at,
        body=body,
        key_id=key.key_id,
        command_id=command_id or new_command_id(),
    )
    return entry.sign(key)


def check_envelopes(envelopes: list[bytes], keys: dict[str, bytes], full_types: frozenset = frozenset()
                    ) -> list[tuple] | tuple:
    """Parse ``envelopes`` strictly and check each signature whose key is in ``keys``
    (key id -> public key): the work a store hands to a worker process.

    Returns one compact tuple per envelope,
    ``(chain, seq, prev, type, key_id, command_id, hash, verified, body)``, where ``verified`` is
    True when the signature was checked (and valid) with ``keys[key_id]`` and ``body`` is given
    only for the types in ``full_types`` (None otherwise); or, at the first refused envelope,
    ``("error", code, message, field, position, chain, seq)`` with code ``malformed`` or
    ``signature``. Plain values only, so that the answer pickles small and fast.

    It judges exactly as ``SignedEntry.parse`` and ``signature_valid``: the common canonical
    shape takes their fast paths inline (no objects built), anything else goes through them."""

    intern = sys.intern
    out = []
    append = out.append
    for pos, env in enumerate(envelopes):
        parts = _split_envelope(env) if type(env) is bytes and len(env) <= MAX_ENVELOPE else None
        m = _fast_content(parts[0]) if parts is not None else None
        if m is None:
            try:
                s = SignedEntry.parse(env)
            except EntryError as e:
                return ("error", "malformed", str(e), e.field, pos, None, None)
            content, signature, m = s.content, s.signature, s.entry.as_map()
        else:
            content, signature = parts
        # the few names repeated from entry to entry, as one object each: the answer pickles
        # each once (then a reference), and the writer unpickles and hashes each once
        key_id, chain, seq, type_ = intern(m["key_id"]), intern(m["chain"]), m["seq"], intern(m["type"])
        pub = keys.get(key_id)
        verified = False
        if pub is not None:
            try:
                ed25519_public_key(pub).verify(signature, ENTRY_TAG + content)
            except (InvalidSignature, ValueError):
                return ("error", "signature", f"sig: not a valid signature by key {key_id}", "sig", pos, chain, seq)
            verified = True
        append((chain, seq, m["prev"], type_, key_id, m["command_id"], _sha256(env).digest(), verified,
                m["body"] if type_ in full_types else None))
    return out
