"""Smoke test of the benchmark (bench/run.py): it runs at --quick sizes and its JSON document
carries every figure and ratio. Figures only: no timing is asserted here, ever."""

from __future__ import annotations

import json
import math

import pytest

from bench import run


def _run(capsys, *args: str) -> dict:
    status = run.main(["--quick", "--json", *args])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


def _check_backend(doc: dict, name: str) -> None:
    b = doc["backends"][name]
    assert "skipped" not in b, b
    for key in run.FIGURES:
        value = b["figures"][key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    for key in run.RATIOS:
        ratio = b["ratios"][key]
        assert math.isfinite(ratio["value"]) and ratio["value"] > 0, (key, ratio)
        assert ratio["target"] == run.TARGETS.get(key)
        assert ratio["met"] is (None if ratio["target"] is None else ratio["value"] >= ratio["target"])
    f = b["figures"]
    assert f["c"] == doc["c"] and f["cV"] == pytest.approx(f["c"] * f["V"])
    assert f["L_batch"] == pytest.approx(1 / (1 / f["P_batch"] + 1 / f["cV"]))
    assert f["L_single"] == pytest.approx(1 / (1 / f["P_single"] + 1 / f["cV"]))
    # The ledger the benchmark built verified clean, with every entry and the checkpoint.
    rep = b["verify_report"]
    assert rep["ok"] and rep["entries"] == b["sizes"]["large_log_after"] and rep["checkpoints"] == 1
    assert b["problems"] == []
    assert b["sizes"]["large_log"] > b["sizes"]["small_log"]


def test_bench_quick_sqlite_json(capsys):
    doc = _run(capsys, "--backend", "sqlite")
    assert doc["quick"] is True and doc["schema"] == run.SCHEMA_VERSION
    assert set(doc["backends"]) == {"sqlite"}
    assert doc["workload"]["mean_envelope_bytes"] > 0
    _check_backend(doc, "sqlite")


@pytest.mark.postgres
def test_bench_quick_postgres_json(capsys, pg_url):
    doc = _run(capsys, "--backend", "postgres", "--pg", pg_url)
    assert set(doc["backends"]) == {"postgres"}
    _check_backend(doc, "postgres")
    # its temporary schemas are gone
    import psycopg

    from ledger.reader import DatabaseURL

    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo()) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (doc["backends"]["postgres"]["info"]["schemas"].replace("*", "%"),)).fetchall()
    assert left == []


def test_bench_table_output(capsys):
    assert run.main(["--quick", "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    assert "append batched" in out and "verify" in out and ">= 0.8" in out


def test_bench_bad_usage():
    assert run.main(["--backend", "nosuch"]) == 2
