"""Generate docs/vectors/pq-v1/: a small ledger's post-quantum, witnessed evidence (FORMAT.md 5.4,
7a, 7b, 7c and V.9), for an independent verifier.

    python tests/vectors/make_pq_vectors.py           # (re)write docs/vectors/pq-v1/

ML-DSA-44 signatures are hedged (randomized, FIPS 204), so the files are generated once and
committed: regenerating changes the ML-DSA-44 signature bytes (and the bundle's bytes that hold
them), nothing else. Every key comes from a fixed seed and every time is fixed, so everything
else (keys, key IDs, vkeys, entries, roots, proofs, Ed25519 signatures, the signed messages) is
reproducible. tests/test_pq_vectors.py checks the files: that they verify as
docs/vectors/pq-v1/expected.json says, and that a change to any byte of the cosigned note, the
proof or the bundle is refused.

Files:
  log.key          the log's checkpoint key file (reledger-key-v1, with its ML-DSA-44 half)
  cosigned.note    the checkpoint of size 7: the log's Ed25519 (0x01) and ML-DSA-44 (0x06)
                   lines, then the witness's Ed25519 (0x04) and ML-DSA-44 (0x06) cosignatures
  policy           a C2SP tlog-policy requiring the log's ML-DSA-44 signature and the witness
  trust.json       an auditor's trust file (reledger-trust/1) pinning genesis, both log vkeys
                   and the policy
  mine.bundle      the mine's bundle (FORMAT.md 7b) against cosigned.note
  entry.tlog-proof the mine's first entry as a C2SP tlog-proof (FORMAT.md 7c)
  expected.json    keys, key IDs, vkeys, the signed messages, the checkpoint, and what must
                   verify
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reledger.ledger.checkpoint import Checkpoint  # noqa: E402
from reledger.ledger.cosignature import (COSIG_ED25519, COSIG_MLDSA44, CosignatureSigner, ed25519_message,  # noqa: E402
                                         log_signer, mldsa_message, signature_lines)
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body  # noqa: E402
from reledger.ledger.keys import SigningKey  # noqa: E402
from reledger.ledger.tlogproof import TlogProof  # noqa: E402
from reledger.ledger.trust import Trust  # noqa: E402

OUT = ROOT / "docs" / "vectors" / "pq-v1"
ORIGIN = "reledger.example/pq-log"
WITNESS = "witness.example/w1"
MINE = "91150200MA0N8XY12K"
AT = "2026-01-01T00:00:00Z"
CLOCK_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: every record time, and the log's ML-DSA-44 time
WITNESS_TIME = 1_767_225_660  # the witness cosigns a minute later


def keys() -> dict:
    return {
        "regulator": SigningKey.from_seed("MIIT", bytes([0x11]) * 32),
        "log": SigningKey.from_seed("MIIT", bytes([0x12]) * 32, "checkpoint", ORIGIN, bytes([0x13]) * 32),
        "mine": SigningKey.from_seed(MINE, bytes([0x14]) * 32),
        "witness_ed25519": CosignatureSigner(WITNESS, COSIG_ED25519, bytes([0x15]) * 32),
        "witness_mldsa44": CosignatureSigner(WITNESS, COSIG_MLDSA44, bytes([0x16]) * 32),
    }


def build(out: Path) -> None:
    from reledger.replay.export import build_bundle
    from reledger.storage.store import LedgerStore

    k = keys()
    signer = log_signer(k["log"])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/pq.db"
        store = LedgerStore(url, clock=lambda: CLOCK_US, processes=False)
        try:
            reg = ChainSigner(k["regulator"])
            store.append(genesis_entries(reg, k["log"], name="Ministry of Industry and Information Technology",
                                         origin=ORIGIN, at=AT))
            store.append([reg.sign("PartyRegistered", {"party": MINE, "name": "Bayan Obo mine", "roles": ["MINE"],
                                                       "province": "Inner Mongolia", "valid_from": AT}, AT,
                                   "00000000-0000-4000-8000-000000000001"),
                          reg.sign("KeyAuthorized", key_authorized_body(k["mine"], AT), AT, "00000000-0000-4000-8000-000000000002")])
            mine = ChainSigner(k["mine"])
            store.append([mine.sign("MineralProductProduced", {"lot": "BO-2026-001", "ore_type": "ROCK",
                                                               "wet_kg": "12000", "dry_kg": "10500.5",
                                                               "treo_pct": "55.2", "reo_kg": "5796.276"}, AT,
                                    "00000000-0000-4000-8000-000000000003"),
                          mine.sign("StockCounted", {"product": "ORE_ROCK", "counted_kg": "10500.5"}, AT,
                                    "00000000-0000-4000-8000-000000000004")])

            def witnessed(note: bytes, size: int) -> bytes:
                cp = Checkpoint.parse(signature_lines(note)[0])
                return note + (k["witness_ed25519"].cosign(cp, WITNESS_TIME)
                               + k["witness_mldsa44"].cosign(cp, WITNESS_TIME)).encode()

            note = store.checkpoint(signer, cosign=witnessed)
            genesis = store.record(0).entry_hash.hex()
            size = store.size()
            rec = store.record(5)
            proof = TlogProof(rec.envelope, rec.recorded_at, 5, tuple(store.inclusion_proof(5, size)), note).text()
        finally:
            store.close()
        bundle, _ = build_bundle(url, MINE)

    log_vkey = signer.verifier().vkey()
    log_pq_vkey = signer.mldsa.verifier().vkey()
    w_ed, w_pq = k["witness_ed25519"].verifier().vkey(), k["witness_mldsa44"].verifier().vkey()
    policy = (f"# the log, by its Ed25519 key (0x01)\nlog {log_vkey}\n"
              f"# the log's own ML-DSA-44 signature (0x06), required through the quorum\n"
              f"witness log-pq {log_pq_vkey}\n"
              f"witness w1-ed25519 {w_ed}\nwitness w1-mldsa44 {w_pq}\n"
              f"group w1 all w1-ed25519 w1-mldsa44\n"
              f"group required all log-pq w1\nquorum required\n")
    trust = Trust(genesis, log_vkey, policy, None, log_pq_vkey)
    cp = Checkpoint.parse(signature_lines(note)[0])
    log_ts = CLOCK_US // 1_000_000

    k["log"].write(out / "log.key", overwrite=True)
    (out / "cosigned.note").write_bytes(note)
    (out / "policy").write_text(policy)
    (out / "trust.json").write_text(trust.text())
    (out / "mine.bundle").write_bytes(bundle)
    (out / "entry.tlog-proof").write_bytes(proof)
    expected = {
        "origin": ORIGIN, "size": size, "root": cp.root.hex(), "genesis": genesis,
        "log": {"ed25519_seed": (bytes([0x12]) * 32).hex(), "mldsa44_seed": (bytes([0x13]) * 32).hex(),
                "ed25519_public_key": k["log"].public_key.hex(), "mldsa44_public_key": k["log"].mldsa_public_key.hex(),
                "vkey": log_vkey, "mldsa44_vkey": log_pq_vkey,
                "ed25519_key_id": signer.key_id.hex(), "mldsa44_key_id": signer.mldsa.key_id.hex(),
                "mldsa44_timestamp": log_ts,
                "mldsa44_signed_message": mldsa_message(ORIGIN, log_ts, cp).hex()},
        "witness": {"name": WITNESS, "ed25519_seed": (bytes([0x15]) * 32).hex(),
                    "mldsa44_seed": (bytes([0x16]) * 32).hex(), "ed25519_vkey": w_ed, "mldsa44_vkey": w_pq,
                    "timestamp": WITNESS_TIME,
                    "ed25519_signed_message": ed25519_message(cp.body(), WITNESS_TIME).hex(),
                    "mldsa44_signed_message": mldsa_message(WITNESS, WITNESS_TIME, cp).hex()},
        "signature_lines": [{"name": n, "key_id": kid.hex(), "signature_bytes": len(sig)}
                            for n, kid, sig in signature_lines(note)[1]],
        "must_verify": {
            "cosigned.note": "under policy (quorum 'required': the log's ML-DSA-44 line and both witness lines)",
            "mine.bundle": "verify-bundle --trust trust.json: ok, anchored, chain complete, 7 entries",
            "entry.tlog-proof": "verify-proof --trust trust.json: entry 5 of the log (the mine's seq 1)"},
        "must_fail": {
            "cosigned.note without its ML-DSA-44 log line": "no ML-DSA-44 signature of the log key",
            "any byte of cosigned.note, entry.tlog-proof or mine.bundle changed": "refused"},
        "note_base64": base64.b64encode(note).decode(),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    build(OUT)
    print(f"wrote {OUT}")
