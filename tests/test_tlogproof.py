"""An entry's proof in C2SP tlog-proof form (ledger/tlogproof.py; docs/FORMAT.md 7c): written by
`reledger prove --entry X --tlog-proof`, parsed strictly, and refused by `verify-proof` when any
part of it is changed (both backends)."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from helpers import new_ledger
from reledger.ledger import encoding
from reledger.ledger.checkpoint import NoteSigner
from reledger.ledger.cosignature import COSIG_ED25519, CosignatureSigner, Policy
from reledger.ledger.tlogproof import ProofFormatError, TlogProof, verify


def reledger(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reledger", *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def proved(db_url, tmp_path):
    led = new_ledger(db_url)
    mine = "91110000MINE0001"
    led.register(mine)
    led.add(mine, 3)
    led.checkpoint()
    out = reledger("prove", "--db", db_url, "--entry", f"{mine}:2", "--tlog-proof")
    assert out.returncode == 0, out.stderr
    vkey = led.note_signer.verifier().vkey()
    yield out.stdout.encode(), vkey, led, tmp_path
    led.close()


def test_prove_writes_a_tlog_proof_that_verifies(proved):
    data, vkey, led, tmp = proved
    p = TlogProof.parse(data)
    assert data.startswith(b"c2sp.org/tlog-proof@v1\nextra ") and p.index == led.store.entry("91110000MINE0001", 2).index
    v = verify(data, [led.note_signer.verifier()])
    assert (v.entry.entry.chain, v.entry.entry.seq) == ("91110000MINE0001", 2) and v.checkpoint.size == led.store.size()
    (tmp / "p").write_bytes(data)
    ok = reledger("verify-proof", str(tmp / "p"), "--checkpoint-key", vkey, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def mutations(data: bytes) -> dict[str, bytes]:
    p = TlogProof.parse(data)
    env = bytearray(p.envelope)
    env[-1] ^= 1
    out = {
        "index-changed": TlogProof(p.envelope, p.recorded_at, p.index + 1, p.proof, p.note).text(),
        "proof-hash-flipped": TlogProof(p.envelope, p.recorded_at, p.index,
                                        (bytes([p.proof[0][0] ^ 1]) + p.proof[0][1:],) + p.proof[1:], p.note).text(),
        "proof-hash-dropped": TlogProof(p.envelope, p.recorded_at, p.index, p.proof[1:], p.note).text(),
        "envelope-changed": TlogProof(bytes(env), p.recorded_at, p.index, p.proof, p.note).text(),
        "recorded-at-changed": TlogProof(p.envelope, "2031-01-01T00:00:00Z", p.index, p.proof, p.note).text(),
        "checkpoint-root-changed": data.replace(data.split(b"\n\n", 1)[1].split(b"\n")[2],
                                                base64.b64encode(bytes(32))),
        "header-changed": data.replace(b"c2sp.org/tlog-proof@v1", b"c2sp.org/tlog-proof@v2", 1),
        "extra-missing": b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"extra ")),
        "extra-not-canonical": data.replace(data.split(b"\n")[1], b"extra " + base64.b64encode(
            encoding.canonical({"envelope": p.envelope, "recorded_at": p.recorded_at}) + b"\x00")),
        "leading-zero-index": data.replace(f"index {p.index}".encode(), f"index 0{p.index}".encode()),
        "not-ascii": data.replace(b"index", b"\xc3\xafndex", 1),
    }
    return out


def test_every_changed_part_is_refused(proved):
    data, vkey, led, tmp = proved
    for name, bad in mutations(data).items():
        with pytest.raises(ProofFormatError):
            verify(bad, [led.note_signer.verifier()])
        (tmp / name).write_bytes(bad)
        out = reledger("verify-proof", str(tmp / name), "--checkpoint-key", vkey)
        assert out.returncode == 1 and "FAILED" in out.stdout, (name, out.stdout, out.stderr)


def test_the_wrong_key_or_a_missing_quorum_is_refused(proved):
    data, vkey, led, tmp = proved
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = NoteSigner(led.note_signer.name, Ed25519PrivateKey.generate())  # another key, the same name
    with pytest.raises(ProofFormatError):
        verify(data, [stranger.verifier()])
    w = CosignatureSigner("w.example", COSIG_ED25519, bytes(range(32)))
    policy = Policy.parse(f"log {vkey}\nwitness w {w.verifier().vkey()}\nquorum w\n".encode())
    with pytest.raises(ProofFormatError, match="quorum"):
        verify(data, [led.note_signer.verifier()], policy)
    (tmp / "p").write_bytes(data)
    assert reledger("verify-proof", str(tmp / "p")).returncode == 2  # no key to judge it by
    assert reledger("verify-proof", str(tmp / "missing")).returncode == 2
