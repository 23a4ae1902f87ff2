"""A transparency-log witness (c2sp.org/tlog-witness), and the log's side of witnessing.

``reledger witness serve`` runs a witness: a small HTTP service with a key file of its own and
its state in a SQLite file. For each log it is configured with (the log's checkpoint vkey), it
keeps the latest checkpoint it cosigned, and cosigns a new one only when it is consistent with
that one (a consistency proof in the request):

    POST <prefix>/add-checkpoint     body: "old <size>\\n", up to 63 base64 proof lines, "\\n",
                                     then the signed checkpoint note
        200  one cosignature line per witness key (Ed25519 0x04, and ML-DSA-44 0x06 if the key
             file has one), text/plain
        400  malformed request, or old size above the checkpoint's size
        403  no valid signature of a key the witness trusts for the origin
        404  unknown origin
        409  old size is not the size the witness last cosigned: body "<its size>\\n",
             Content-Type text/x.tlog.size
        422  size 0 with another root than the empty tree's, a proof with old size 0, a proof that
             does not verify, or the same size with another root (a fork: logged as evidence)
    GET  <prefix>/<sha256(origin) hex>/checkpoint
        the latest cosigned checkpoint with the log's signature and the witness's cosignatures

Checking the old size and recording the new checkpoint are one SQLite transaction (BEGIN
IMMEDIATE), so two concurrent requests cannot roll the witness back.

The log's side (:func:`cosign`): submit a checkpoint to the witnesses of a tlog-policy file,
answer 409s with a proof from the witness's own size, verify every cosignature line received,
and return the note only when the policy's quorum is met: ``reledger checkpoint --policy FILE``
publishes nothing otherwise.
"""

from __future__ import annotations

import hashlib
import http.server
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reledger.ledger.checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from reledger.ledger.cosignature import (COSIG_ED25519, EMPTY_ROOT, CosignatureError, CosignatureSigner, Policy,
                                         cosignatures, signature_lines)
from reledger.ledger.merkle import ProofError, verify_consistency

MAX_REQUEST = 64 * 1024  # 63 proof lines and a checkpoint note with a handful of signatures fit many times
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"


class WitnessError(Exception):
    """A witness key file, state or configuration that cannot be used."""


# --- the witness's key file --------------------------------------------------------------------

def read_key_file(path: str | Path) -> list[CosignatureSigner]:
    """A witness key file: one signer key line per algorithm, all with one name; Ed25519 required."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WitnessError(f"cannot read witness key file {path}: {e}") from None
    signers = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            signers.append(CosignatureSigner.from_skey(line.strip()))
        except NoteError as e:
            raise WitnessError(f"{path} line {n}: {e}") from None
    if not any(s.algorithm == COSIG_ED25519 for s in signers):
        raise WitnessError(f"{path} has no Ed25519 (type 0x04) cosigner key")
    if len({s.name for s in signers}) != 1 or len({s.algorithm for s in signers}) != len(signers):
        raise WitnessError(f"{path}: one name, and at most one key per algorithm")
    return signers


def write_key_file(path: str | Path, signers: list[CosignatureSigner], force: bool = False) -> None:
    p = Path(path)
    if p.exists() and not force:
        raise WitnessError(f"{p} exists (pass --force to overwrite it)")
    text = "# reledger witness key file: keep it secret (docs/FORMAT.md, witness key file)\n"
    text += "".join(s.skey() + "\n" for s in signers)
    p.write_text(text, encoding="utf-8")
    p.chmod(0o600)


# --- the witness's state ------------------------------------------------------------------------

class WitnessState:
    """The latest cosigned checkpoint of each log, and the refused requests kept as evidence."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS witness_checkpoints (origin TEXT PRIMARY KEY, "
                             "size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS witness_refused (at INTEGER NOT NULL, origin TEXT NOT NULL, "
                             "status INTEGER NOT NULL, reason TEXT NOT NULL, request BLOB NOT NULL)")
        except sqlite3.Error as e:
            raise WitnessError(f"cannot open the witness state {self.path}: {e}") from None

    def latest(self, origin: str) -> tuple[int, bytes, bytes] | None:
        with self._lock:
            row = self._db.execute("SELECT size, root, note FROM witness_checkpoints WHERE origin = ?",
                                   (origin,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]), bytes(row[2]))

    def refused(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return [(o, s, r) for o, s, r in self._db.execute(
                "SELECT origin, status, reason FROM witness_refused ORDER BY rowid")]

    def close(self) -> None:
        self._db.close()


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    """The add-checkpoint rules of c2sp.org/tlog-witness, on a state and a key file."""

    def __init__(self, signers: list[CosignatureSigner], logs: list[NoteVerifier], state: WitnessState,
                 clock: Callable[[], float] = time.time) -> None:
        if not logs:
            raise WitnessError("a witness needs at least one log vkey (--log)")
        self.signers, self.state, self.clock = signers, state, clock
        self.logs: dict[str, list[NoteVerifier]] = {}
        for v in logs:
            self.logs.setdefault(v.name, []).append(v)  # a log's origin is its key's name
        self.name = signers[0].name

    def add_checkpoint(self, request: bytes) -> Answer:
        try:
            old, proof, note = parse_add_checkpoint(request)
        except ValueError as e:
            return Answer(400, f"{e}\n".encode())
        try:
            text, _ = signature_lines(note)
            checkpoint = Checkpoint.parse(text)
        except NoteError as e:
            return Answer(400, f"malformed checkpoint: {e}\n".encode())
        trusted = self.logs.get(checkpoint.origin)
        if trusted is None:
            return Answer(404, f"unknown log origin {checkpoint.origin[:100]!r}\n".encode())
        try:
            open_note(note, trusted)
        except NoteError as e:
            return Answer(403, f"checkpoint not signed by the log's key: {e}\n".encode())
        if old > checkpoint.size:
            return Answer(400, f"old size {old} is above the checkpoint's size {checkpoint.size}\n".encode())
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            return self._refuse(checkpoint, request, 422, "a checkpoint of size 0 must have the empty tree's root")
        if old == 0 and proof:
            return self._refuse(checkpoint, request, 422, "old size 0 takes no consistency proof")
        outcome, value = self._record(checkpoint, old, proof, note)
        if outcome == "cosigned":
            return Answer(200, value.encode())
        if outcome == "conflict":
            return Answer(409, value.encode(), SIZE_CONTENT_TYPE)
        return self._refuse(checkpoint, request, 422, value)

    def _record(self, checkpoint: Checkpoint, old: int, proof: list[bytes], note: bytes) -> tuple[str, str]:
        """Check the old size and the proof against the state and record the checkpoint, in one
        transaction: ("cosigned", the cosignature lines), ("conflict", "<the witness's size>\\n")
        or ("refused", the reason)."""
        with self.state._lock:  # one writer in this process; BEGIN IMMEDIATE against other processes
            db = self.state._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT size, root FROM witness_checkpoints WHERE origin = ?",
                                 (checkpoint.origin,)).fetchone()
                size, root = (0, EMPTY_ROOT) if row is None else (row[0], bytes(row[1]))
                if old != size:
                    db.execute("ROLLBACK")
                    return "conflict", f"{size}\n"
                if old == checkpoint.size and row is not None and root != checkpoint.root:
                    db.execute("ROLLBACK")
                    return "refused", f"another root at the cosigned size {size}: a fork of the log"
                if 0 < old < checkpoint.size:
                    try:
                        verify_consistency(old, checkpoint.size, proof, root, checkpoint.root)
                    except ProofError as e:
                        db.execute("ROLLBACK")
                        return "refused", f"not consistent with size {old}: {e}"
                elif proof:
                    db.execute("ROLLBACK")
                    return "refused", "equal sizes take no consistency proof"
                now = max(1, int(self.clock()))
                lines = "".join(s.cosign(checkpoint, now) for s in self.signers)
                db.execute("INSERT INTO witness_checkpoints (origin, size, root, note) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                           "note = excluded.note",
                           (checkpoint.origin, checkpoint.size, checkpoint.root, note + lines.encode()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return "cosigned", lines

    def _refuse(self, checkpoint: Checkpoint, request: bytes, status: int, reason: str) -> Answer:
        """Refuse; a request that the log signed but that fails consistency is kept as evidence."""
        with self.state._lock:
            self.state._db.execute("INSERT INTO witness_refused (at, origin, status, reason, request) "
                                   "VALUES (?, ?, ?, ?, ?)", (int(self.clock()), checkpoint.origin, status, reason,
                                                              request))
        return Answer(status, f"{reason}\n".encode())

    def checkpoint_of(self, origin_hash: str) -> Answer:
        for origin in self.logs:
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                latest = self.state.latest(origin)
                if latest is not None:
                    return Answer(200, latest[2])
        return Answer(404, b"no cosigned checkpoint of that log\n")


def parse_add_checkpoint(request: bytes) -> tuple[int, list[bytes], bytes]:
    """Split an add-checkpoint body into (old size, proof hashes, note); ValueError if malformed."""
    import base64
    import binascii

    head, sep, note = request.partition(b"\n\n")
    if not sep:
        raise ValueError("no empty line between the old size and proof lines and the checkpoint")
    lines = head.split(b"\n")
    first = lines[0].decode("ascii", errors="replace")
    if not first.startswith("old ") or not (first[4:] == "0" or (first[4:].isdigit() and first[4] != "0")):
        raise ValueError("the first line must be 'old <size>' (decimal, no leading zeros)")
    if len(first) > 24:
        raise ValueError("old size out of range")
    old = int(first[4:])
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise ValueError("a consistency proof line is not base64") from None
        if len(h) != 32:
            raise ValueError("a consistency proof line is not a 32-byte hash")
        proof.append(h)
    return old, proof, note


def add_checkpoint_request(old: int, proof: list[bytes], note: bytes) -> bytes:
    import base64

    return (f"old {old}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n" + note)


# --- HTTP ------------------------------------------------------------------------------------------

def make_server(witness: Witness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a client that stops sending is dropped
        server_version = "reledger-witness"

        def _send(self, answer: Answer) -> None:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def do_POST(self) -> None:  # noqa: N802 - the http.server interface
            if self.path.rstrip("/") != "/add-checkpoint":
                return self._send(Answer(404, b"not found\n"))
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_REQUEST:
                return self._send(Answer(400 if not length.isdigit() else 413,
                                         f"a body of at most {MAX_REQUEST} bytes with a Content-Length\n".encode()))
            self._send(witness.add_checkpoint(self.rfile.read(int(length))))

        def do_GET(self) -> None:  # noqa: N802
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[1] == "checkpoint" and len(parts[0]) == 64:
                return self._send(witness.checkpoint_of(parts[0]))
            self._send(Answer(404, b"not found\n"))

        def log_message(self, format: str, *args) -> None:  # quiet: a witness logs refusals in its state
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


# --- the log's side: collect cosignatures under a policy --------------------------------------------

@dataclass
class Submission:
    witness: str
    ok: bool
    detail: str


def submit(url: str, old: int, proof: list[bytes], note: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """POST add-checkpoint; (status, body). A witness that cannot be reached answers status 0."""
    req = urllib.request.Request(url.rstrip("/") + "/add-checkpoint", data=add_checkpoint_request(old, proof, note),
                                 method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(MAX_REQUEST)
    except urllib.error.HTTPError as e:
        return e.code, e.read(MAX_REQUEST)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return 0, str(getattr(e, "reason", e)).encode()


def cosign(note: bytes, policy: Policy, proof_from: Callable[[int], list[bytes]], guess: int,
           timeout: float = 10.0) -> tuple[bytes, list[Submission]]:
    """Submit `note` to every witness of `policy` that has a URL; return the note with the verified
    cosignatures and what each witness answered. Raises CosignatureError (and the caller publishes
    nothing) when the quorum is not met. `guess` is the size the witnesses last cosigned as far as
    the log knows (its latest published checkpoint); a 409 tells the witness's own size, and the
    request is made again with a proof from there. `proof_from(old)` is the log's consistency
    proof from size `old` to the note's size."""
    text, _ = signature_lines(note)
    size = Checkpoint.parse(text).size
    lines: list[str] = []
    report: list[Submission] = []
    by_url: dict[str, list[str]] = {}  # one witness may hold two keys of the policy (Ed25519, ML-DSA-44)
    for name, url in policy.witness_urls.items():
        by_url.setdefault(url, []).append(name)
    for url, names in by_url.items():
        who = "+".join(names)
        old = min(guess, size)
        status, body = submit(url, old, proof_from(old) if old else [], note, timeout)
        if status == 409:
            try:
                theirs = int(body.decode("ascii").strip())
            except ValueError:
                theirs = -1
            if not 0 <= theirs <= size:
                report.append(Submission(who, False, f"409 with size {body[:40]!r}: the witness has seen a larger "
                                                     "or unreadable tree"))
                continue
            status, body = submit(url, theirs, proof_from(theirs) if theirs else [], note, timeout)
        if status != 200:
            reason = "unreachable" if status == 0 else f"HTTP {status}"
            report.append(Submission(who, False, f"{reason}: {body.decode('utf-8', 'replace').strip()[:200]}"))
            continue
        answered = [line + "\n" for line in body.decode("utf-8", "replace").splitlines() if line]
        verifiers = [policy.witnesses[n] for n in names]
        try:
            found = cosignatures(note + "".join(answered).encode(), verifiers)
        except NoteError as e:
            report.append(Submission(who, False, f"bad cosignature: {e}"))
            continue
        for name, verifier in zip(names, verifiers):
            if verifier not in found:
                report.append(Submission(name, False, "answered no cosignature from its policy key"))
                continue
            kid = verifier.key_id
            for line in answered:  # keep exactly the line that verified for this key
                parts = line.rstrip("\n").split(" ")
                if len(parts) == 3 and parts[1] == verifier.name and _key_id_of(parts[2]) == kid and line not in lines:
                    lines.append(line)
            report.append(Submission(name, True, f"cosigned at {found[verifier]}"))
    cosigned = note + "".join(lines).encode()
    try:
        policy.check(cosigned)  # raises CosignatureError when the quorum is not met
    except CosignatureError as e:
        e.report = report  # what each witness answered, for the caller to say
        raise
    return cosigned, report


class NotPublished(Exception):
    """A checkpoint the log did not publish: why, and what each witness answered."""

    def __init__(self, reason: str, report: list[Submission], stale: bool = False):
        super().__init__(reason)
        self.report, self.stale = report, stale


def publish(store, signer, policy: Policy | None, timeout: float = 10.0) -> tuple[bytes, list[Submission]]:
    """Sign a checkpoint of ``store``'s current log with the log key ``signer`` and store it:
    with a ``policy``, only once the witnesses' cosignatures meet its quorum (the one way
    ``reledger checkpoint --policy`` and ``reledger serve``'s checkpointer publish). Returns the
    published note and the witnesses' answers; raises NotPublished (nothing stored) when the
    quorum is not met, and when the log has not grown since a stored checkpoint of its size
    that does not meet the policy (``stale``)."""
    if policy is None:
        return store.checkpoint(signer), []
    if not policy.lists_log(signer):
        raise ValueError(f"the witness policy does not list this log's checkpoint key ({signer.name})")
    report: list[Submission] = []
    latest = store.latest_checkpoint()
    guess = latest[0] if latest else 0

    def with_witnesses(note: bytes, size: int) -> bytes:
        cosigned, answers = cosign(note, policy, lambda old: store.consistency_proof(old, size), guess, timeout)
        report.extend(answers)
        return cosigned

    try:
        note = store.checkpoint(signer, cosign=with_witnesses)
    except CosignatureError as e:
        raise NotPublished(str(e), report or getattr(e, "report", [])) from None
    try:
        policy.check(note)  # a checkpoint of this size stored before, without the quorum
    except CosignatureError as e:
        raise NotPublished(f"the log has not grown since the checkpoint of its size was stored, and that one does "
                           f"not meet the policy ({e}); append, then checkpoint again", report, stale=True) from None
    return note, report


def _key_id_of(b64: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(b64, validate=True)[:4]
    except binascii.Error:
        return b""


__all__ = ["Answer", "CosignatureError", "Submission", "Witness", "WitnessError", "WitnessState",
           "add_checkpoint_request", "cosign", "make_server", "parse_add_checkpoint", "read_key_file", "submit",
           "write_key_file"]
