"""An entry's proof of inclusion in C2SP tlog-proof form (c2sp.org/tlog-proof@v1).

    c2sp.org/tlog-proof@v1
    extra <base64 of canonical msgpack {"envelope": bin, "recorded_at": str}>
    index <the entry's log index, decimal, no leading zeros>
    <base64 of each hash of the RFC 9162 inclusion proof, leaf's sibling first>

    <the checkpoint note, verbatim: the operator's signature and any witness cosignatures>

The leaf is reledger's (docs/FORMAT.md 3.1): SHA-256(0x00 || canonical msgpack {"entry_hash",
"index", "recorded_at"}), so a verifier needs the signed envelope and its record time: the
``extra`` line carries both (the spec leaves the extra data to the application, and it is not
trusted: the envelope's hash and the record time are bound to the checkpoint's root by the
inclusion proof). A verifier checks the checkpoint against the log keys (and witness policy) it
trusts, then the inclusion; :func:`verify` does both.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from . import encoding, merkle
from .checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from .cosignature import CosignatureError, Policy, check_log_pq, signature_lines
from .entry import EntryError, SignedEntry, leaf_bytes

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]*)", re.ASCII)


class ProofFormatError(ValueError):
    """A tlog-proof that is malformed, or that does not verify."""


@dataclass(frozen=True)
class TlogProof:
    envelope: bytes
    recorded_at: str
    index: int
    proof: tuple[bytes, ...]
    note: bytes

    def text(self) -> bytes:
        extra = encoding.canonical({"envelope": self.envelope, "recorded_at": self.recorded_at})
        lines = [HEADER, "extra " + base64.b64encode(extra).decode("ascii"), f"index {self.index}"]
        lines += [base64.b64encode(h).decode("ascii") for h in self.proof]
        return ("\n".join(lines) + "\n\n").encode("ascii") + self.note

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        """Parse strictly: parse(p.text()) == p, and anything else is refused."""
        if not isinstance(data, bytes):
            raise ProofFormatError("a tlog-proof is bytes")
        head, sep, note = data.partition(b"\n\n")
        if not sep:
            raise ProofFormatError("no empty line before the checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise ProofFormatError("the proof's lines are not ASCII") from None
        if lines[0] != HEADER:
            raise ProofFormatError(f"the first line is not {HEADER}")
        if len(lines) < 3 or not lines[1].startswith("extra "):
            raise ProofFormatError("reledger's proofs carry an extra line (the envelope and its record time)")
        try:
            raw = base64.b64decode(lines[1][len("extra "):], validate=True)
            extra = encoding.decode(raw)
        except (binascii.Error, encoding.EncodingError) as e:
            raise ProofFormatError(f"the extra line: {e}") from None
        if not (isinstance(extra, dict) and set(extra) == {"envelope", "recorded_at"}
                and isinstance(extra["envelope"], bytes) and isinstance(extra["recorded_at"], str)):
            raise ProofFormatError('the extra data is not {"envelope": bin, "recorded_at": text}')
        m = _INDEX.fullmatch(lines[2])
        if m is None:
            raise ProofFormatError("the third line is not 'index N' (decimal, no leading zeros)")
        proof = []
        for line in lines[3:]:
            try:
                h = base64.b64decode(line, validate=True)
            except binascii.Error:
                raise ProofFormatError("an inclusion proof line is not base64") from None
            if len(h) != 32 or base64.b64encode(h).decode("ascii") != line:
                raise ProofFormatError("an inclusion proof line is not one base64 SHA-256 hash")
            proof.append(h)
        p = cls(extra["envelope"], extra["recorded_at"], int(m.group(1)), tuple(proof), note)
        if p.text() != data:
            raise ProofFormatError("not in canonical form")
        return p


@dataclass(frozen=True)
class Verified:
    entry: SignedEntry
    index: int
    checkpoint: Checkpoint
    cosigned_by: dict[str, int]


def verify(data: bytes, logs: list[NoteVerifier], policy: Policy | None = None) -> Verified:
    """Verify a tlog-proof: the checkpoint signed by one of ``logs`` (its origin that key's name)
    and, with a ``policy``, cosigned by its quorum; the envelope parsed strictly; the entry's leaf
    included at its index in the checkpointed tree. (The entry's own signature is checked
    against its party's key by whoever knows that key: ``verify-bundle`` carries the registry.)"""
    p = TlogProof.parse(data)
    try:
        text, signed_by = open_note(p.note, logs)
        cp = Checkpoint.parse(text)
    except NoteError as e:
        raise ProofFormatError(f"the checkpoint: {e}") from None
    if not any(v.name == cp.origin for v in signed_by):
        raise ProofFormatError(f"the checkpoint's origin {cp.origin!r} is not the name of the key that signed it")
    try:
        check_log_pq(p.note, logs, signed_by)  # the log's ML-DSA-44 signature, when its key has one (5.4)
    except NoteError as e:
        raise ProofFormatError(f"the checkpoint: {e}") from None
    cosigned: dict[str, int] = {}
    if policy is not None:
        try:
            cosigned = policy.check(p.note).cosigned_by
        except CosignatureError as e:
            raise ProofFormatError(str(e)) from None
    try:
        signed = SignedEntry.parse(p.envelope)
        leaf = merkle.leaf_hash(leaf_bytes(signed.hash, p.index, p.recorded_at))
        merkle.verify_inclusion(leaf, p.index, cp.size, list(p.proof), cp.root)
    except (EntryError, encoding.EncodingError, merkle.ProofError) as e:
        raise ProofFormatError(f"entry at index {p.index}: {e}") from None
    return Verified(signed, p.index, cp, cosigned)


def checkpoint_size(note: bytes) -> int:
    """The tree size a checkpoint note states (unverified: for choosing which proof to ask for)."""
    try:
        return Checkpoint.parse(signature_lines(note)[0]).size
    except NoteError as e:
        raise ProofFormatError(f"the checkpoint: {e}") from None


__all__ = ["HEADER", "ProofFormatError", "TlogProof", "Verified", "checkpoint_size", "verify"]
