"""The key registry: which party held which key, for what, between which log positions.

Pure state built from the registry entries of the log, in log order. The store uses it to
accept or refuse an entry; the verifier replays it to check every entry with the key that was
valid when that entry was recorded. Nothing here reads or writes storage.

Rules (docs/FORMAT.md, "Keys and the genesis"):

* The genesis is log index 0: a ``KeyAuthorized`` entry, seq 1 of chain R, whose body authorizes
  for party R the very key that signs it. R is the root regulator.
* Only a party with the REGULATOR role asserts ``PartyRegistered``, ``PartyDesignationChanged``,
  ``KeyAuthorized`` and ``KeyRevoked``.
* An entry of chain C at log index i is valid only with a key authorized for C (purpose
  "entries") by an entry at an index < i, not revoked by an entry at an index < i, and with
  ``valid_from <= recorded_at < valid_until``; and C must be a registered party.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa

from . import authority, encoding, rules
from .encoding import EncodingError
from .entry import SignedEntry
from .checkpoint import valid_key_name
from .keys import MLDSA44_PUBLIC_LEN, PURPOSES, key_id as compute_key_id, usable_public_key
from .rules import REGISTRY_TYPES, REGULATOR, RegistryError

__all__ = ["REGISTRY_TYPES", "REGULATOR", "KeyRecord", "Registry", "RegistryError"]

_MISSING = object()


@dataclass
class KeyRecord:
    party: str
    key_id: str
    public_key: bytes
    purpose: str
    authorized_at: int  # log index of the KeyAuthorized entry
    valid_from_us: int
    valid_until_us: int | None
    revoked_at: int | None = None  # log index of the KeyRevoked entry
    name: str | None = None  # checkpoint keys: the signed-note key name
    mldsa_public_key: bytes | None = None  # checkpoint keys: the log's ML-DSA-44 key (FORMAT.md 5.4)


@dataclass
class Registry:
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    registered: dict[str, int] = field(default_factory=dict)  # party -> log index of its registration
    size: int = 0  # how many log entries have been applied
    root: str | None = None  # the genesis regulator
    # party -> its designations in log order (authority.py: (index, since_us, roles, until_us)),
    # for the authority rule (rules.authorized: which roles count at an entry's record time)
    designations: dict[str, tuple] = field(default_factory=dict)

    # --- undo journal: a refused group's changes are taken back without copying -----------
    _journal: list | None = field(default=None, repr=False, compare=False)

    def mark(self) -> int:
        """Start (or continue) journaling changes; returns a position for :meth:`rollback`."""
        if self._journal is None:
            self._journal = []
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every change made since ``mark``."""
        while self._journal is not None and len(self._journal) > mark:
            target, key, old = self._journal.pop()
            if target is self:
                self.root = old
            elif old is _MISSING:
                del target[key]
            else:
                target[key] = old

    def forget(self) -> None:
        """Stop journaling (the changes stay)."""
        self._journal = None

    def _set(self, target: dict, key: str, value: Any) -> None:
        if self._journal is not None:
            self._journal.append((target, key, target.get(key, _MISSING)))
        target[key] = value

    def _set_root(self, chain: str) -> None:
        if self._journal is not None:
            self._journal.append((self, "root", self.root))
        self.root = chain

    def copy(self) -> "Registry":
        """A copy that shares the (never mutated) key records: O(keys) dictionary copies, no
        deep copy (a revocation replaces its record)."""
        return Registry(dict(self.keys), dict(self.roles), dict(self.registered), self.size, self.root,
                        dict(self.designations))

    # --- checking ----------------------------------------------------------------------
    def key_for(self, signed: SignedEntry, index: int, recorded_us: int) -> bytes:
        """The public key that must have signed ``signed`` recorded at ``index`` (the rules of
        FORMAT.md 4.2 and 4.3, ledger/rules.py); raises RegistryError when no valid key exists.
        Does not check the signature itself."""
        return self.key_at(signed.entry, index, recorded_us)

    def key_at(self, e: Any, index: int, recorded_us: int) -> bytes:
        """:meth:`key_for` of an entry's content (anything with chain, seq, type, key_id, and
        body for a KeyAuthorized entry)."""
        if index == 0:
            return rules.genesis_key(e, _key_authorized_body(e.body) if e.type == "KeyAuthorized" else {})
        rules.party_registered(self.registered.get(e.chain), e.chain, index)
        pub = rules.key_valid(self.keys.get(e.key_id), e.chain, e.key_id, index, recorded_us)
        rules.may_record(e.type, e.chain, self.roles.get(e.chain, ()))
        return pub

    # --- applying ----------------------------------------------------------------------
    def apply(self, signed: SignedEntry, index: int) -> None:
        """Apply an accepted entry at ``index`` (registry types change state; others only
        advance ``size``). Bodies of registry types are checked for the fields used here."""
        e = signed.entry
        if e.type == "KeyAuthorized":
            b = _key_authorized_body(e.body)
            if b["key_id"] in self.keys:
                raise RegistryError(f"body.key_id: key {b['key_id']} is already authorized", "body.key_id", "body")
            if index != 0 and b["party"] not in self.roles:
                raise RegistryError(f"body.party: party {b['party']} is not registered", "body.party", "body")
            self._set(self.keys, b["key_id"], KeyRecord(
                b["party"], b["key_id"], b["public_key"], b["purpose"], index,
                b["valid_from_us"], b["valid_until_us"], None, b["name"], b["mldsa_public_key"]))
            if index == 0:
                self._set_root(e.chain)
                self._set(self.roles, e.chain, frozenset({REGULATOR}))
                self._set(self.registered, e.chain, 0)
        elif e.type == "KeyRevoked":
            party, kid = _text(e.body, "party"), _text(e.body, "key_id")
            rec = self.keys.get(kid)
            if rec is None or rec.party != party:
                raise RegistryError(f"body.key_id: party {party} has no key {kid}", "body.key_id", "body")
            if rec.revoked_at is not None:
                raise RegistryError(f"body.key_id: key {kid} is already revoked", "body.key_id", "body")
            self._set(self.keys, kid, dataclasses.replace(rec, revoked_at=index))
        elif e.type in ("PartyRegistered", "PartyDesignationChanged"):
            party = _text(e.body, "party")
            roles = e.body.get("roles")
            if e.type == "PartyRegistered" and party in self.roles and party != self.root:
                raise RegistryError(f"body.party: party {party} is already registered", "body.party", "body")
            if e.type == "PartyDesignationChanged" and party not in self.roles:
                raise RegistryError(f"body.party: party {party} is not registered", "body.party", "body")
            if roles is not None:
                if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                    raise RegistryError("body.roles: must be a list of role names", "body.roles", "body")
                if party == self.root and REGULATOR not in roles:
                    raise RegistryError("body.roles: the root regulator keeps the REGULATOR role", "body.roles", "body")
                self._set(self.roles, party, frozenset(roles))
            elif e.type == "PartyRegistered":
                raise RegistryError("body.roles: missing", "body.roles", "body")
            if party not in self.registered:
                self._set(self.registered, party, index)
            history = self.designations.get(party, ())
            d = authority.designation(e.type, e.body, index, history[-1] if history else None, party == self.root)
            self._set(self.designations, party, history + (d,))
        self.size = index + 1

    def authorized(self, e: Any, index: int, recorded_us: int) -> None:
        """rules.authorized for an entry's content (chain, type) at ``index``: its chain's roles
        as this registry recorded them may assert its type (raises rules.Invalid)."""
        rules.authorized(e.type, e.chain, self.designations.get(e.chain, ()), index, recorded_us,
                         e.chain == self.root)

    def checkpoint_keys(self, before_index: int) -> list[KeyRecord]:
        """Checkpoint keys authorized by an entry at an index < before_index and not revoked
        before it."""
        return [k for k in self.keys.values()
                if k.purpose == "checkpoint" and k.authorized_at < before_index
                and (k.revoked_at is None or k.revoked_at >= before_index)]


def _text(body: dict, name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not v:
        raise RegistryError(f"body.{name}: must be text", f"body.{name}", "body")
    return v


def _time_us(body: dict, name: str, required: bool) -> int | None:
    v = body.get(name)
    if v is None and not required:
        return None
    try:
        return encoding.time_to_micros(encoding.parse_time(v))
    except EncodingError as e:
        raise RegistryError(f"body.{name}: {e}", f"body.{name}", "body") from e


def _key_authorized_body(body: dict) -> dict:
    party, kid = _text(body, "party"), _text(body, "key_id")
    pub = body.get("public_key")
    if not isinstance(pub, bytes) or len(pub) != 32:
        raise RegistryError("body.public_key: must be 32 bytes (Ed25519)", "body.public_key", "body")
    if not usable_public_key(pub):  # anyone could sign under a small-order key (FORMAT.md 2.3)
        raise RegistryError("body.public_key: not a usable Ed25519 public key (not the canonical encoding of a "
                            "point of the curve, or a point of small order: FORMAT.md 4.1)", "body.public_key", "body")
    if compute_key_id(pub) != kid:
        raise RegistryError("body.key_id: does not match the public key", "body.key_id", "body")
    purpose = body.get("purpose", "entries")
    if purpose not in PURPOSES:
        raise RegistryError(f"body.purpose: must be one of {', '.join(PURPOSES)}", "body.purpose", "body")
    name = body.get("name")
    if purpose == "checkpoint" and not valid_key_name(name):
        raise RegistryError("body.name: a checkpoint key needs its signed-note name (the log's origin: "
                            "non-empty, no space, no '+')", "body.name", "body")
    mldsa_pub = body.get("mldsa44_public_key")
    if mldsa_pub is not None:
        if purpose != "checkpoint":
            raise RegistryError("body.mldsa44_public_key: only a checkpoint key has an ML-DSA-44 key (entries "
                                "are signed with Ed25519 alone)", "body.mldsa44_public_key", "body")
        if not isinstance(mldsa_pub, bytes) or len(mldsa_pub) != MLDSA44_PUBLIC_LEN:
            raise RegistryError(f"body.mldsa44_public_key: must be {MLDSA44_PUBLIC_LEN} bytes (ML-DSA-44)",
                                "body.mldsa44_public_key", "body")
        try:
            mldsa.MLDSA44PublicKey.from_public_bytes(mldsa_pub)
        except ValueError:
            raise RegistryError("body.mldsa44_public_key: not an ML-DSA-44 public key", "body.mldsa44_public_key",
                                "body") from None
    return {
        "party": party, "key_id": kid, "public_key": pub, "purpose": purpose, "name": name,
        "mldsa_public_key": mldsa_pub,
        "valid_from_us": _time_us(body, "valid_from", True),
        "valid_until_us": _time_us(body, "valid_until", False),
    }
