"""The auditor's pinned trust file (ledger/trust.py): pinned once, checked and advanced by every
verification, refusing a log that shows another origin, an unwitnessed, smaller or forked view."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reledger.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from reledger.ledger.cosignature import COSIG_ED25519, CosignatureSigner
from reledger.ledger.trust import FORMAT, Trust, TrustError

LOG = NoteSigner("reledger.test/log", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
GENESIS = hashlib.sha256(b"genesis").hexdigest()
WITNESSES = [CosignatureSigner(f"w{i}.example", COSIG_ED25519, bytes([i + 9]) * 32) for i in range(2)]


def note(size: int, root: bytes = b"", signer: NoteSigner = LOG, cosigners=()) -> bytes:
    cp = Checkpoint(signer.name, size, root or hashlib.sha256(b"%d" % size).digest())
    return sign_checkpoint(cp, signer) + "".join(w.cosign(cp, 100) for w in cosigners).encode()


def policy(k: str = "all") -> str:
    return (f"log {LOG.verifier().vkey()}\n" + "".join(f"witness w{i} {w.verifier().vkey()}\n"
                                                       for i, w in enumerate(WITNESSES))
            + f"group g {k} w0 w1\nquorum g\n")


def test_a_trust_file_round_trips_canonically(tmp_path):
    t = Trust(GENESIS, LOG.verifier().vkey(), policy(), note(3, cosigners=WITNESSES).decode())
    path = tmp_path / "trust.json"
    t.write(path, new=True)
    assert Trust.read(path) == t
    assert json.loads(path.read_text())["format"] == FORMAT and path.read_text() == t.text()
    with pytest.raises(TrustError, match="pinned once"):
        t.write(path, new=True)


@pytest.mark.parametrize("bad", [
    "not json", "[]", json.dumps({"format": "other"}),
    json.dumps({"format": FORMAT, "genesis": GENESIS, "log_vkey": "x", "policy": None, "checkpoint": None}),
    json.dumps({"format": FORMAT, "genesis": "ABC", "log_vkey": LOG.verifier().vkey(), "policy": None,
                "checkpoint": None}),
    json.dumps({"format": FORMAT, "genesis": GENESIS, "log_vkey": LOG.verifier().vkey(), "policy": None,
                "checkpoint": None, "extra": 1}),
    json.dumps({"format": FORMAT, "genesis": GENESIS, "log_vkey": LOG.verifier().vkey(), "policy": "quorum x\n",
                "checkpoint": None}),
])
def test_malformed_trust_files_are_refused(tmp_path, bad):
    (tmp_path / "t").write_text(bad)
    with pytest.raises(TrustError):
        Trust.read(tmp_path / "t")
    with pytest.raises(TrustError, match="cannot read"):
        Trust.read(tmp_path / "missing")


def test_a_checkpoint_is_checked_against_the_pinned_roots():
    t = Trust(GENESIS, LOG.verifier().vkey())
    assert t.check_note(note(4)).size == 4
    stranger = NoteSigner("reledger.test/log", Ed25519PrivateKey.generate())
    with pytest.raises(TrustError, match="pinned log key"):
        t.check_note(note(4, signer=stranger))
    renamed = NoteSigner("other.example/log", LOG.private_key)  # the log's key, another origin
    with pytest.raises(TrustError):
        t.check_note(note(4, signer=renamed))
    witnessed = Trust(GENESIS, LOG.verifier().vkey(), policy("all"))
    with pytest.raises(TrustError, match="witness policy"):
        witnessed.check_note(note(4, cosigners=WITNESSES[:1]))
    assert witnessed.check_note(note(4, cosigners=WITNESSES)).size == 4


def test_the_pinned_checkpoint_only_moves_forward():
    t = Trust(GENESIS, LOG.verifier().vkey()).advanced(note(10))
    assert t.pinned.size == 10
    assert t.advanced(note(12)).pinned.size == 12
    assert t.advanced(note(10)).pinned.size == 10  # the same checkpoint again
    with pytest.raises(TrustError, match="below"):
        t.advanced(note(9))
    with pytest.raises(TrustError, match="split view"):
        t.advanced(note(10, root=hashlib.sha256(b"fork").digest()))
    with pytest.raises(TrustError, match="does not list"):
        Trust(GENESIS, NoteSigner("x.example/log", Ed25519PrivateKey.generate()).verifier().vkey(), policy())
