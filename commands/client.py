"""An enterprise's client: holds its key, builds and signs entries, submits them over HTTP.

    from reledger.commands.client import LedgerClient
    from reledger.ledger.keys import SigningKey

    client = LedgerClient("http://127.0.0.1:8080", SigningKey.read("MINE01.key"))
    receipt = client.append("MineralProductProduced", {...}, occurred_at="2024-03-01T08:00:00Z")

Retries are safe: a retried submission carries the same signed bytes and the same command id,
so the ledger records it once and answers the original receipt (``duplicate=True``).
Refusals raise :class:`Refused` (or a subclass) with the server's RFC 9457 problem fields.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import msgpack

from reledger.commands.auth import sign_request
from reledger.ledger import merkle
from reledger.ledger.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from reledger.ledger.encoding import time_text
from reledger.ledger.entry import SignedEntry, leaf_bytes
from reledger.ledger.genesis import ChainSigner
from reledger.ledger.keys import SigningKey
from reledger.ledger.tlogproof import TlogProof, checkpoint_size, verify as verify_tlog_proof

MAX_RETRY_AFTER = 10.0  # seconds: a longer Retry-After is waited this long (then the next try)


class ClientError(Exception):
    """The server could not be reached, or answered something unexpected.

    Raised by append/append_many, it carries ``envelopes``: the signed bytes that were
    submitted (resubmitting them with :meth:`LedgerClient.submit` is always safe)."""

    envelopes: list[bytes] = []


class Refused(ClientError):
    """The server refused the request (RFC 9457 problem)."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status, self.problem = status, problem
        self.code = problem.get("code", "")
        self.field = problem.get("field")
        self.detail = problem.get("detail", "")
        super().__init__(f"{status} {self.code}: {self.detail}")


class Conflict(Refused):
    """409: the chain moved (seq/prev) or the command id was used for other bytes."""


class Unauthorized(Refused):
    """401/403: the request was not authenticated or not allowed."""


@dataclass(frozen=True)
class AppendResult:
    receipts: list[dict[str, Any]]
    findings: list[dict[str, Any]]


class LedgerClient:
    def __init__(self, base_url: str, key: SigningKey, *, timeout: float = 30.0, retries: int = 5,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.retries = retries
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self.signer: ChainSigner | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------
    def _request(self, method: str, path: str, *, body: bytes = b"", content_type: str | None = None,
                 signed: bool = True, accept: str | None = None) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            headers: dict[str, str] = {}
            if content_type:
                headers["Content-Type"] = content_type
            if accept:
                headers["Accept"] = accept
            request = self.http.build_request(method, path, content=body, headers=headers)
            if signed:  # sign the path and query exactly as they go on the request line
                request.headers.update(sign_request(self.key, method, request.url.raw_path.decode("ascii"), body))
            try:
                resp = self.http.send(request)
            except httpx.TransportError as e:  # connection refused/reset, timeout: retry same bytes
                last = e
                if attempt < self.retries:
                    time.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            if resp.status_code in (502, 503, 504):
                last = ClientError(f"server answered {resp.status_code}")
                if attempt < self.retries:
                    time.sleep(max(min(2.0, 0.05 * 2**attempt), _retry_after(resp)))
                continue
            if resp.status_code >= 400:
                try:
                    problem = resp.json()
                except ValueError:
                    problem = {"detail": resp.text}
                cls = Conflict if resp.status_code == 409 else (
                    Unauthorized if resp.status_code in (401, 403) else Refused)
                raise cls(resp.status_code, problem)
            return resp
        raise ClientError(f"{method} {path} failed after {self.retries + 1} attempts: {last}")

    # --- appending -----------------------------------------------------------------------
    def sync(self) -> ChainSigner:
        """Fetch the chain head from the server and prepare to sign the next entry."""
        h = self.head(self.key.party)
        self.signer = ChainSigner(self.key, seq=h["seq"], head=bytes.fromhex(h["entry_hash"]))
        return self.signer

    def submit(self, envelopes: list[bytes]) -> AppendResult:
        """Submit one all-or-nothing group of signed envelopes (safe to retry)."""
        body = msgpack.packb(list(envelopes), use_bin_type=True)
        resp = self._request("POST", "/v1/entries", body=body, content_type="application/msgpack", signed=False)
        data = resp.json()
        return AppendResult(data["receipts"], data.get("findings", []))

    def append(self, type: str, body: dict, occurred_at: str | datetime | None = None,
               command_id: str | None = None) -> dict[str, Any]:
        """Sign and submit the next entry of this party's chain; returns its receipt."""
        return self.append_many([(type, body, occurred_at, command_id)]).receipts[0]

    def append_many(self, items: list[tuple]) -> AppendResult:
        """Sign several entries (type, body[, occurred_at[, command_id]]) and submit them as one group."""
        signer = self.signer or self.sync()
        seq, head = signer.seq, signer.head
        signed: list[SignedEntry] = []
        for item in items:
            type, body, occurred_at, command_id = (tuple(item) + (None, None))[:4]
            if occurred_at is None:
                occurred_at = datetime.now(timezone.utc).replace(microsecond=0)
            if isinstance(occurred_at, datetime):
                occurred_at = time_text(occurred_at)
            signed.append(signer.sign(type, body, occurred_at, command_id))
        envelopes = [s.envelope for s in signed]
        try:
            result = self.submit(envelopes)
        except Refused as e:
            signer.seq, signer.head = seq, head  # nothing was written: roll the cursor back
            self.signer = None  # resync on the next append (the chain may have moved)
            e.envelopes = envelopes
            raise
        except ClientError as e:
            # unknown outcome (the server may have committed before the connection broke):
            # resync on the next append instead of guessing; submit(e.envelopes) is safe and
            # answers the original receipts (duplicate=True) if they were recorded
            signer.seq, signer.head = seq, head
            self.signer = None
            e.envelopes = envelopes
            raise
        return result

    # --- reading -------------------------------------------------------------------------
    def head(self, chain: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/chains/{chain}/head").json()

    def entry(self, chain: str, seq: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/chains/{chain}/entries/{seq}").json()

    def checkpoint(self, verifier: NoteVerifier | None = None) -> tuple[bytes, Checkpoint | None]:
        note = self._request("GET", "/v1/checkpoint").content
        return note, (verify_checkpoint(note, verifier) if verifier else None)

    def inclusion(self, chain: str, seq: int, size: int | None = None) -> dict[str, Any]:
        path = f"/v1/proofs/inclusion?chain={chain}&seq={seq}" + (f"&size={size}" if size else "")
        return self._request("GET", path).json()

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/proofs/consistency?first={first}&second={second}").json()

    def verify_inclusion(self, chain: str, seq: int, verifier: NoteVerifier) -> Checkpoint:
        """Check that an entry is in the log the operator signed: fetch the signed checkpoint,
        the entry and its proof, and verify all three here (trusting no server)."""
        note, cp = self.checkpoint(verifier)
        assert cp is not None
        rec = self.entry(chain, seq)
        proof = self.inclusion(chain, seq, cp.size)
        env = base64.b64decode(rec["envelope"])
        s = SignedEntry.parse(env)
        if (s.entry.chain, s.entry.seq) != (chain, seq):
            raise ClientError(f"the server answered entry {s.entry.chain}:{s.entry.seq} for {chain}:{seq}")

        leaf = merkle.leaf_hash(leaf_bytes(s.hash, proof["index"], proof["recorded_at"]))
        merkle.verify_inclusion(leaf, proof["index"], cp.size, [bytes.fromhex(h) for h in proof["proof"]], cp.root)
        return cp


    def anchor(self, trust_path: Any, note: bytes | None = None) -> Checkpoint:
        """Check the latest published checkpoint (or ``note``) against the auditor's pinned trust
        file (docs/FORMAT.md 7d: the log's keys, its ML-DSA-44 signature if pinned, the witness
        policy), check that it is consistent with the checkpoint the file keeps (a consistency
        proof from the server, verified here), and move the file forward to it. Raises
        :class:`ClientError` saying why when it is not anchored (the file is left as it was)."""
        from reledger.ledger.trust import Trust, TrustError

        try:
            trust = Trust.read(trust_path)
            if note is None:
                note = self._request("GET", "/v1/checkpoint").content
            cp = trust.check_note(note)
            pinned = trust.pinned
            if pinned is not None and 0 < pinned.size < cp.size:
                got = self.consistency(pinned.size, cp.size)
                merkle.verify_consistency(pinned.size, cp.size, [bytes.fromhex(h) for h in got["proof"]],
                                          pinned.root, cp.root)
            trust.advanced(note).write(trust_path)
        except (TrustError, merkle.ProofError, ValueError, KeyError) as e:
            raise ClientError(f"not anchored to the trust file {trust_path}: {e}") from None
        return cp

    def wait_for_proof(self, chain: str, seq: int, *, timeout: float = 60.0, poll: float = 1.0,
                       verifier: NoteVerifier | None = None, policy: Any = None, trust: Any = None) -> bytes:
        """Upgrade an append's receipt to a proof: wait (at most ``timeout`` s, asking every
        ``poll`` s) until a published checkpoint covers the entry, and return the entry's proof in
        C2SP tlog-proof form (docs/FORMAT.md 7c: the envelope and its record time, the inclusion
        proof, the checkpoint note with its cosignatures), verified here when ``verifier`` (the
        log's vkey) is given, with ``policy`` (a :class:`reledger.ledger.cosignature.Policy`) for
        the witnesses' quorum; with ``trust`` (the path of a pinned trust file) against its log
        keys and policy, consistent with its pinned checkpoint, which then moves forward
        (:meth:`anchor`). Raises :class:`ClientError` when no checkpoint covers it in time, or
        when it is not anchored."""
        rec = self.entry(chain, seq)
        envelope, index = base64.b64decode(rec["envelope"]), rec["index"]
        deadline = time.monotonic() + timeout
        while True:
            try:
                note = self._request("GET", "/v1/checkpoint").content
                size = checkpoint_size(note)
            except Refused as e:
                if e.status != 404:  # 404: no checkpoint yet
                    raise
                size = 0
            if index < size:
                got = self.inclusion(chain, seq, size)
                proof = TlogProof(envelope, got["recorded_at"], got["index"],
                                  tuple(bytes.fromhex(h) for h in got["proof"]), note).text()
                if verifier is not None:
                    verify_tlog_proof(proof, [verifier], policy)
                if trust is not None:
                    from reledger.ledger import rules
                    from reledger.ledger.cosignature import Policy
                    from reledger.ledger.registry import Registry
                    from reledger.ledger.tlogproof import ProofFormatError
                    from reledger.ledger.trust import Trust, TrustError

                    try:
                        pinned = Trust.read(trust)
                        verify_tlog_proof(proof, rules.checkpoint_verifiers(Registry(), 0, pinned.vkeys),
                                          Policy.parse(pinned.policy.encode()) if pinned.policy else None)
                    except (TrustError, ProofFormatError) as e:
                        raise ClientError(f"the proof of {chain}:{seq} does not verify against {trust}: {e}") from None
                    self.anchor(trust, note)
                return proof
            if time.monotonic() >= deadline:
                raise ClientError(f"no published checkpoint covers {chain}:{seq} (log index {index}) after "
                                  f"{timeout:g} s; the latest covers {size} entries")
            time.sleep(poll)


def _retry_after(resp: httpx.Response) -> float:
    """The server's Retry-After in seconds (the delay form; 0 when absent or not a number),
    at most MAX_RETRY_AFTER."""
    value = resp.headers.get("retry-after", "").strip()
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else 0.0
