"""docs/vectors/pq-v1 (FORMAT.md V.9, made by tests/vectors/make_pq_vectors.py): the committed
post-quantum, witnessed evidence verifies as expected.json says, the reproducible parts are what
the code computes, and a change to any byte of the cosigned note, the tlog-proof or the bundle is
refused by a verifier holding the pinned trust file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from reledger.ledger.bundle import BundleError, decode_bundle, verify_bundle
from reledger.ledger.checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from reledger.ledger.cosignature import (CosignatureError, CosignatureVerifier, Policy, ed25519_message, mldsa_message,
                                         signature_lines)
from reledger.ledger.keys import SigningKey
from reledger.ledger.tlogproof import ProofFormatError, verify as verify_proof
from reledger.ledger.trust import Trust, TrustError

V = Path(__file__).resolve().parents[1] / "docs" / "vectors" / "pq-v1"
EXPECTED = json.loads((V / "expected.json").read_text())
TRUST = Trust.read(V / "trust.json")
POLICY = Policy.parse((V / "policy").read_bytes())
NOTE = (V / "cosigned.note").read_bytes()


def logs():
    from reledger.ledger import rules
    from reledger.ledger.registry import Registry

    return rules.checkpoint_verifiers(Registry(), 0, TRUST.vkeys)


def pinned_accepts_note(note: bytes) -> bool:
    try:
        TRUST.check_note(note)
        return True
    except (TrustError, NoteError, UnicodeDecodeError):
        return False


def test_the_reproducible_parts_are_what_the_code_computes():
    e = EXPECTED
    key = SigningKey.read(V / "log.key")
    assert key.seed.hex() == e["log"]["ed25519_seed"] and key.mldsa_seed.hex() == e["log"]["mldsa44_seed"]
    assert key.public_key.hex() == e["log"]["ed25519_public_key"]
    assert key.mldsa_public_key.hex() == e["log"]["mldsa44_public_key"]
    assert TRUST.log_vkey == e["log"]["vkey"] and TRUST.log_mldsa_vkey == e["log"]["mldsa44_vkey"]
    pq = CosignatureVerifier.from_vkey(e["log"]["mldsa44_vkey"])
    assert pq.key_id.hex() == e["log"]["mldsa44_key_id"] and pq.public_key.hex() == e["log"]["mldsa44_public_key"]
    assert NoteVerifier.from_vkey(e["log"]["vkey"]).key_id.hex() == e["log"]["ed25519_key_id"]
    text, lines = signature_lines(NOTE)
    cp = Checkpoint.parse(text)
    assert (cp.origin, cp.size, cp.root.hex()) == (e["origin"], e["size"], e["root"])
    assert [{"name": n, "key_id": k.hex(), "signature_bytes": len(s)} for n, k, s in lines] == e["signature_lines"]
    assert [x["signature_bytes"] for x in e["signature_lines"]] == [64, 2428, 72, 2428]
    assert mldsa_message(cp.origin, e["log"]["mldsa44_timestamp"], cp).hex() == e["log"]["mldsa44_signed_message"]
    w = e["witness"]
    assert ed25519_message(text, w["timestamp"]).hex() == w["ed25519_signed_message"]
    assert mldsa_message(w["name"], w["timestamp"], cp).hex() == w["mldsa44_signed_message"]
    assert base64.b64decode(e["note_base64"]) == NOTE


def test_the_vectors_verify_as_expected_json_says():
    checked = POLICY.check(NOTE)
    assert set(checked.cosigned_by) == {"log-pq", "w1-ed25519", "w1-mldsa44"}
    assert TRUST.check_note(NOTE).size == EXPECTED["size"]
    # an Ed25519-only signed-note verifier reads the note and ignores the three other lines
    assert open_note(NOTE, [NoteVerifier.from_vkey(EXPECTED["log"]["vkey"])])[0] == signature_lines(NOTE)[0]
    rep = verify_bundle((V / "mine.bundle").read_bytes(), trusted_checkpoint_keys=TRUST.vkeys,
                        trusted_genesis=TRUST.genesis)
    assert rep.ok and rep.complete and rep.entries == 7 and rep.size == EXPECTED["size"], rep.problems
    assert TRUST.check_note(decode_bundle((V / "mine.bundle").read_bytes())["checkpoint"])
    v = verify_proof((V / "entry.tlog-proof").read_bytes(), logs(), POLICY)
    assert v.index == 5 and v.entry.entry.seq == 1 and v.checkpoint.root.hex() == EXPECTED["root"]


def test_the_note_without_the_log_ml_dsa_line_is_refused():
    text, lines = signature_lines(NOTE)
    blocks = NOTE[len(text) + 1:].decode().splitlines(keepends=True)
    stripped = text + b"\n" + "".join(blocks[:1] + blocks[2:]).encode()
    with pytest.raises(TrustError, match="no ML-DSA-44 signature of the pinned log key"):
        TRUST.check_note(stripped)
    with pytest.raises(CosignatureError, match="log-pq"):
        POLICY.check(stripped)
    with pytest.raises(ProofFormatError, match="ML-DSA-44"):
        proof = (V / "entry.tlog-proof").read_bytes()
        verify_proof(proof.replace(NOTE, stripped), logs())
    # a repeated line: refused by reledger's checkpoint rule (5.2)
    from reledger.ledger import rules

    with pytest.raises(rules.Invalid, match="two signature lines"):
        rules.checkpoint(NOTE + blocks[1].encode(), logs())


def test_every_byte_of_the_cosigned_note_is_covered():
    for i in range(len(NOTE)):
        bad = bytearray(NOTE)
        bad[i] ^= 0x01
        assert not pinned_accepts_note(bytes(bad)), i


def positions(data: bytes):
    """Every byte of ``data`` but those of its copy of the note (which the test above covers
    byte by byte), of which every 97th."""
    at = data.find(NOTE)
    assert at >= 0
    return [i for i in range(len(data)) if not at <= i < at + len(NOTE) or (i - at) % 97 == 0]


def test_every_byte_of_the_tlog_proof_is_covered():
    proof = (V / "entry.tlog-proof").read_bytes()
    ls = logs()
    for i in positions(proof):
        bad = bytearray(proof)
        bad[i] ^= 0x01
        with pytest.raises((ProofFormatError, NoteError, UnicodeDecodeError)):
            v = verify_proof(bytes(bad), ls, POLICY)
            # (the envelope is in the extra line: its signature is the bundle's to check)
            if v.entry.hash != verify_proof(proof, ls, POLICY).entry.hash:
                raise ProofFormatError("another entry")


def test_every_byte_of_the_bundle_is_covered():
    data = (V / "mine.bundle").read_bytes()
    for i in positions(data):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            rep = verify_bundle(bytes(bad), trusted_checkpoint_keys=TRUST.vkeys, trusted_genesis=TRUST.genesis)
        except BundleError:
            continue
        assert not rep.ok or not pinned_accepts_note(decode_bundle(bytes(bad))["checkpoint"]), i


def test_each_bundle_entry_is_a_tlog_proof_that_verifies():
    from reledger.ledger.bundle import tlog_proofs

    data = (V / "mine.bundle").read_bytes()
    proofs = tlog_proofs(data)
    assert [i for i, _ in proofs] == [e["index"] for e in decode_bundle(data)["entries"]] == list(range(7))
    for index, proof in proofs:
        v = verify_proof(proof, logs(), POLICY)
        assert v.index == index and v.checkpoint.size == EXPECTED["size"]
    assert dict(proofs)[5] == (V / "entry.tlog-proof").read_bytes()  # the same bytes as `prove --tlog-proof`


def test_a_policy_not_met_names_the_missing_witnesses():
    from dataclasses import replace

    from reledger.ledger.cosignature import COSIG_ED25519, CosignatureSigner

    w9 = CosignatureSigner("w9.example", COSIG_ED25519, bytes([9]) * 32).verifier().vkey()
    policy = TRUST.policy.replace("group required all log-pq w1\n",
                                  f"witness w9 {w9}\ngroup required all log-pq w1 w9\n")
    with pytest.raises(TrustError, match="cosigned by log-pq, w1-ed25519, w1-mldsa44; no valid cosignature from w9"):
        replace(TRUST, policy=policy).check_note(NOTE)
