"""Building (not storing) signed entries: a chain cursor, the genesis and registry entries.

``ChainSigner`` holds a party's key and the head of its chain (seq, hash) and signs the next
entry; the genesis is the first entries of the root regulator's chain (docs/FORMAT.md,
"Keys and the genesis").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .entry import ZERO_HASH, SignedEntry, make_entry
from .keys import SigningKey


@dataclass
class ChainSigner:
    """Signs successive entries of one party's chain."""

    key: SigningKey
    seq: int = 0
    head: bytes = ZERO_HASH
    chain: str = field(default="")

    def __post_init__(self) -> None:
        self.chain = self.chain or self.key.party

    def sign(self, type: str, body: dict, occurred_at: str, command_id: str | None = None) -> SignedEntry:
        s = make_entry(self.key, seq=self.seq + 1, prev=self.head, type=type, occurred_at=occurred_at,
                       body=body, command_id=command_id, chain=self.chain)
        self.seq, self.head = s.entry.seq, s.hash
        return s

    def peek(self, type: str, body: dict, occurred_at: str, command_id: str | None = None) -> SignedEntry:
        """Sign the next entry without advancing (for a submit that may be refused)."""
        return make_entry(self.key, seq=self.seq + 1, prev=self.head, type=type, occurred_at=occurred_at,
                          body=body, command_id=command_id, chain=self.chain)

    def advance(self, signed: SignedEntry) -> None:
        self.seq, self.head = signed.entry.seq, signed.hash


def key_authorized_body(key: SigningKey, valid_from: str, *, name: str | None = None,
                        valid_until: str | None = None, reason: str = "registration") -> dict:
    body = {"party": key.party, "key_id": key.key_id, "public_key": key.public_key, "purpose": key.purpose,
            "valid_from": valid_from, "reason": reason}
    if name:
        body["name"] = name
    if key.mldsa_seed is not None:
        body["mldsa44_public_key"] = key.mldsa_public_key
    if valid_until:
        body["valid_until"] = valid_until
    return body


def genesis_entries(regulator: ChainSigner, checkpoint_key: SigningKey, *, name: str, origin: str,
                    at: str, province: str = "Beijing") -> list[SignedEntry]:
    """The first three entries of a ledger: the root regulator's self-authorized key, its
    registration, and the operator's checkpoint key (whose signed-note name is ``origin``)."""
    rk = regulator.key
    return [
        regulator.sign("KeyAuthorized", key_authorized_body(rk, at, reason="genesis"), at),
        regulator.sign("PartyRegistered", {
            "party": rk.party, "name": name, "roles": ["REGULATOR"], "province": province,
            "valid_from": at}, at),
        regulator.sign("KeyAuthorized", key_authorized_body(checkpoint_key, at, name=origin,
                                                            reason="checkpoint signing key"), at),
    ]
