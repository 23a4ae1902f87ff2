"""The main job: the demo at small scale on both backends finds exactly the seeded violations,
and the ledger verifies afterwards; `reledger demo --json` gives what scripts need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reledger.demo.run import SEEDED, Demo
from reledger.demo.summary import summarize
from reledger.storage.verify import verify_database

ROOT = Path(__file__).resolve().parents[1]


def test_demo_small_finds_the_seeded_violations_and_nothing_else(db_url, tmp_path):
    demo = Demo(db_url, tmp_path, 2024, "small", log=lambda m: None)
    try:
        stats = demo.run()
        result = summarize(demo, db_url, tmp_path, stats)
    finally:
        demo.projections.close()
        demo.store.close()
    assert result["entries"] == stats["entries"] > 900
    assert set(result["seeded"]) == set(SEEDED)
    for key, s in result["seeded"].items():
        assert s["found"], f"seeded violation {key} not found"
        codes = {f["code"] for f in s["findings"]}
        assert codes == SEEDED[key]["codes"], (key, codes)
        for f in s["findings"]:
            assert f["party"] == s["where"]["party"]
            assert f["evidence"] and all(len(e["hash"]) == 64 for e in f["evidence"])
    assert result["unexpected_findings"] == []
    assert result["verified"] is True
    assert verify_database(db_url).ok
    # the enforcement loop: the penalty's cut shows in the next year's quota
    from reledger.projections import queries
    from reledger.projections.store import ProjectionStore

    plant = result["seeded"]["over_separation_quota"]["where"]["party"]
    ps = ProjectionStore(db_url)
    try:
        q = queries.quota(ps, 2025)
        row = [e for e in q["enterprises"] if e["party"] == plant and e["category"] == "SEPARATION"][0]
        assert row["reduced_t"] == result["seeded"]["over_separation_quota"]["where"]["penalty_cut_t"]
        assert [c["kind"] for c in queries.credit(ps, plant)["records"]] == ["VIOLATION", "PENALTY"]
    finally:
        ps.close()
    assert Path(result["files"]["investigation_reports"][plant]).exists()


def test_demo_json_for_scripts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "reledger", "demo", "--json", "--seed", "7"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["verified"] is True and doc["entries"] > 900
    assert {"id", "roles"} <= set(doc["parties"][0])
    assert doc["findings"] and {"rule", "party", "evidence"} <= set(doc["findings"][0])
    assert doc["seeded_all_found"] and not doc["unexpected_findings"]
    assert (tmp_path / "reledger-demo" / "ledger.db").exists()
    assert sorted(p.name for p in (tmp_path / "reledger-demo" / "keys").iterdir())[-1] == "operator.key"


def test_the_same_seed_gives_the_same_ledger_on_both_backends(pg_url, tmp_path):
    """Keys, command ids and record times derive from --seed: two runs with one seed, one on
    SQLite and one on PostgreSQL, give the same entries, so the same Merkle root and checkpoints
    (the same texts and Ed25519 signatures; the log's ML-DSA-44 line, randomized, verifies in
    each); another seed gives other keys."""
    from reledger.demo.run import seeded_bytes
    from reledger.ledger.cosignature import check_log_pq, signature_lines

    def same_parts(note: bytes, signer) -> tuple:
        v = signer.verifier()
        check_log_pq(note, [v], [v])  # the post-quantum line is there and verifies
        text, lines = signature_lines(note)
        assert len(lines) == 2
        return text, [ln for ln in lines if ln[1] == signer.key_id]

    runs = []
    for url, out in ((f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a"), (pg_url, tmp_path / "b")):
        demo = Demo(url, out, 11, "small", log=lambda m: None)
        try:
            demo.run()
            n = demo.store.size()
            runs.append((n, demo.store.root(n), [(c[1], same_parts(c[2], demo.signer))
                                                 for c in demo.store.checkpoints()]))
        finally:
            demo.projections.close()
            demo.store.close()
    assert runs[0][0] > 900
    assert runs[0] == runs[1]
    keys_a = {p.name: p.read_bytes() for p in (tmp_path / "a" / "keys").iterdir()}
    keys_b = {p.name: p.read_bytes() for p in (tmp_path / "b" / "keys").iterdir()}
    assert keys_a == keys_b and len(keys_a) > 10
    assert seeded_bytes(11, "key MIIT") != seeded_bytes(12, "key MIIT")


def test_demo_writes_its_summary_and_refuses_to_run_over_it(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": ""}
    first = subprocess.run([sys.executable, "-m", "reledger", "demo", "--seed", "3"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "reledger-demo" / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["verified"] is True
    db = tmp_path / "reledger-demo" / "ledger.db"
    before = db.read_bytes()
    again = subprocess.run([sys.executable, "-m", "reledger", "demo", "--seed", "4"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 2 and "never deletes or overwrites" in again.stderr
    assert "Traceback" not in again.stderr and db.read_bytes() == before
