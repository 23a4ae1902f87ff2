"""An auditor's pinned trust: what a verification is anchored to, kept between verifications.

Without pinned roots a bundle vouches for itself: a whole ledger made up by anyone, with its own
genesis and its own checkpoint key, verifies. An auditor therefore pins, once, from a source it
trusts (the regulator's publication, a signed letter, a previous audit):

- the genesis entry hash of the ledger (FORMAT.md 4.2);
- the log's checkpoint verifier key (vkey, FORMAT.md 5.2; its key name is the log's origin);
- optionally the log's ML-DSA-44 vkey (FORMAT.md 5.4): then every checkpoint must carry the
  log's post-quantum signature too, and one without it (or with a bad one) is refused;
- optionally a C2SP tlog-policy of witnesses whose quorum every checkpoint must meet (7a);

and the trust file then keeps the last checkpoint it verified. Every later verification must be
consistent with that checkpoint (a consistency proof from its size, or the same root at the same
size), and moves it forward: a log that rewrites what an auditor once saw, or shows the auditor
an older or forked history, no longer verifies.

The trust file is canonical JSON (UTF-8, keys sorted, two-space indent, a final newline):

    {"checkpoint": "<the last verified checkpoint note, or null>",
     "format": "reledger-trust/1",
     "genesis": "<64 lowercase hex>",
     "log_mldsa_vkey": "<name>+<key ID>+<base64(0x06 || 1312-byte key)>, or null",
     "log_vkey": "<name>+<key ID>+<base64(0x01 || key)>",
     "policy": "<the tlog-policy text, or null>"}

A file written before ``log_mldsa_vkey`` existed (the other five keys only) is read as
``log_mldsa_vkey: null`` and written back with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from .cosignature import COSIG_MLDSA44, CosignatureError, CosignatureVerifier, Policy, cosignatures, signature_lines

FORMAT = "reledger-trust/1"
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


class TrustError(ValueError):
    """A trust file that cannot be read or used, or a checkpoint that it does not accept."""


@dataclass(frozen=True)
class Trust:
    genesis: str
    log_vkey: str
    policy: str | None = None
    checkpoint: str | None = None
    log_mldsa_vkey: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.genesis, str) or not _HEX64.fullmatch(self.genesis):
            raise TrustError("the pinned genesis is an entry hash: 64 lowercase hex digits")
        try:
            NoteVerifier.from_vkey(self.log_vkey)
        except NoteError as e:
            raise TrustError(f"the pinned log key is not a checkpoint vkey: {e}") from None
        if self.log_mldsa_vkey is not None:
            try:
                pq = CosignatureVerifier.from_vkey(self.log_mldsa_vkey)
            except (CosignatureError, TypeError) as e:
                raise TrustError(f"the pinned ML-DSA-44 log key is not a vkey: {e}") from None
            if pq.algorithm != COSIG_MLDSA44:
                raise TrustError("the pinned ML-DSA-44 log key is not of type 0x06 (ML-DSA-44)")
            if pq.name != NoteVerifier.from_vkey(self.log_vkey).name:
                raise TrustError("the pinned ML-DSA-44 log key's name is not the log key's name (the log's origin)")
        if self.policy is not None:
            try:
                policy = Policy.parse(self.policy.encode("utf-8"))
            except CosignatureError as e:
                raise TrustError(f"the pinned witness policy: {e}") from None
            if self.log_vkey not in {v.vkey() for v in policy.logs}:
                raise TrustError("the pinned witness policy does not list the pinned log key")
        if self.checkpoint is not None:
            self.check_note(self.checkpoint.encode("utf-8"))

    # --- the file --------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> Trust:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise TrustError(f"cannot read the trust file {path}: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TrustError(f"{path} is not a trust file (JSON): {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TrustError(f"{path} is not a {FORMAT} trust file")
        if set(data) - {"log_mldsa_vkey"} != {"format", "genesis", "log_vkey", "policy", "checkpoint"}:
            raise TrustError(f"{path}: a trust file has exactly format, genesis, log_vkey, log_mldsa_vkey, policy, "
                             "checkpoint")
        return cls(data["genesis"], data["log_vkey"], data["policy"], data["checkpoint"], data.get("log_mldsa_vkey"))

    def text(self) -> str:
        return json.dumps({"format": FORMAT, "genesis": self.genesis, "log_vkey": self.log_vkey,
                           "log_mldsa_vkey": self.log_mldsa_vkey, "policy": self.policy,
                           "checkpoint": self.checkpoint},
                          sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    def write(self, path: str | Path, *, new: bool = False) -> None:
        """Write the file (atomically: a new file renamed over the old); ``new`` refuses to
        replace an existing one."""
        p = Path(path)
        if new and p.exists():
            raise TrustError(f"{p} exists: a trust file is pinned once (remove it to pin anew)")
        tmp = p.with_name(p.name + ".new")
        try:
            tmp.write_text(self.text(), encoding="utf-8")
            tmp.replace(p)
        except OSError as e:
            raise TrustError(f"cannot write the trust file {p}: {e.strerror or e}") from None

    # --- checking --------------------------------------------------------------------------
    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.log_vkey)

    @property
    def vkeys(self) -> list[str]:
        """The pinned log keys, as verify's trusted checkpoint keys (ledger/rules.py)."""
        return [self.log_vkey] + ([self.log_mldsa_vkey] if self.log_mldsa_vkey else [])

    @property
    def pinned(self) -> Checkpoint | None:
        if self.checkpoint is None:
            return None
        return Checkpoint.parse(signature_lines(self.checkpoint.encode("utf-8"))[0])

    def check_note(self, note: bytes) -> Checkpoint:
        """A checkpoint note the pinned roots accept: signed by the pinned log key, its origin
        that key's name, and (with a policy) cosigned by a quorum of its witnesses."""
        try:
            text, _ = open_note(note, [self.verifier])
            cp = Checkpoint.parse(text)
        except NoteError as e:
            raise TrustError(f"the checkpoint is not signed by the pinned log key: {e}") from None
        if cp.origin != self.verifier.name:
            raise TrustError(f"the checkpoint's origin {cp.origin!r} is not the pinned log's {self.verifier.name!r}")
        if self.log_mldsa_vkey is not None:
            pq = CosignatureVerifier.from_vkey(self.log_mldsa_vkey)
            try:
                signed = pq in cosignatures(note, [pq])
            except NoteError as e:
                raise TrustError(f"the checkpoint's ML-DSA-44 signature: {e}") from None
            if not signed:
                raise TrustError(f"the checkpoint has no ML-DSA-44 signature of the pinned log key "
                                 f"{pq.name}+{pq.key_id.hex()} (the post-quantum signature is required)")
        if self.policy is not None:
            try:
                Policy.parse(self.policy.encode("utf-8")).check(note)
            except CosignatureError as e:
                raise TrustError(f"the checkpoint does not meet the pinned witness policy: {e}") from None
        return cp

    def advanced(self, note: bytes) -> Trust:
        """The trust with `note` as its last verified checkpoint. The caller has checked that
        `note` is consistent with the pinned checkpoint (verify and verify-bundle do, with a
        consistency proof); a smaller size than the pinned one is refused: the auditor has seen
        a larger tree, and a log may not show it less."""
        cp = self.check_note(note)
        pinned = self.pinned
        if pinned is not None and cp.size < pinned.size:
            raise TrustError(f"the checkpoint's size {cp.size} is below the pinned checkpoint's {pinned.size}: "
                             "the log shows less than it showed before")
        if pinned is not None and cp.size == pinned.size and cp.root != pinned.root:
            raise TrustError(f"two roots at size {cp.size}: the pinned one and this one (a split view)")
        return replace(self, checkpoint=note.decode("utf-8"))


__all__ = ["FORMAT", "Trust", "TrustError"]
