"""Smoke test of the benchmark (bench/run.py): it runs at --quick sizes and its JSON document
carries every figure and ratio. Figures only: no timing is asserted here, ever."""

from __future__ import annotations

import json
import math

import pytest

from reledger.bench import run


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
    # the batched append timed in steady state leaves out each window's first batch; cold counts all
    d, rounds, batch = b["detail"], doc["params"]["rounds"], doc["params"]["batch"]
    for leg in ("append_small", "append_large"):
        assert d[leg + "_cold"]["n"] - d[leg]["n"] == rounds * batch, (leg, d[leg]["n"], d[leg + "_cold"]["n"])
        assert d[leg]["seconds"] < d[leg + "_cold"]["seconds"]


def test_bench_quick_sqlite_json(capsys):
    doc = _run(capsys, "--suite", "core", "--backend", "sqlite")
    assert doc["quick"] is True and doc["schema"] == run.SCHEMA_VERSION
    assert set(doc["backends"]) == {"sqlite"}
    assert doc["workload"]["mean_envelope_bytes"] > 0
    _check_backend(doc, "sqlite")


@pytest.mark.postgres
def test_bench_quick_postgres_json(capsys, pg_url):
    doc = _run(capsys, "--suite", "core", "--backend", "postgres", "--pg", pg_url)
    assert set(doc["backends"]) == {"postgres"}
    _check_backend(doc, "postgres")
    # its temporary schemas are gone
    import psycopg

    from reledger.storage.reader import DatabaseURL

    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo()) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (doc["backends"]["postgres"]["info"]["schemas"].replace("*", "%"),)).fetchall()
    assert left == []


def test_bench_table_output(capsys):
    assert run.main(["--quick", "--suite", "core", "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    assert "append batched" in out and "verify" in out and ">= 0.8" in out


def test_bench_bad_usage():
    assert run.main(["--backend", "nosuch"]) == 2
    assert run.main(["--suite", "nosuch"]) == 2


# --- the http and projections suites -------------------------------------------------------

def _finite(value, positive: bool) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), value
    assert value > 0 if positive else value >= 0, value


def _check_suite(doc: dict, suite: str, name: str, figures, ratios, targets: dict, limits: dict,
                 may_be_zero=()) -> dict:
    assert doc["suites_run"] == [suite] and doc["backends"] == {}
    b = doc["suites"][suite][name]
    assert "skipped" not in b, b
    assert b["problems"] == [], b["problems"]
    for key in figures:
        _finite(b["figures"][key], positive=key not in may_be_zero)
    for key in ratios:
        r = b["ratios"][key]
        _finite(r["value"], positive=True)
        assert r["target"] == targets.get(key)
        assert r["met"] is (None if r["target"] is None else r["value"] >= r["target"])
    for key, (op, target) in limits.items():
        lm = b["limits"][key]
        assert (lm["op"], lm["target"]) == (op, target) and lm["value"] == b["figures"][key]
        assert lm["met"] is (lm["value"] < target if op == "<" else lm["value"] >= target)
    return b


def _check_http(doc: dict, name: str) -> None:
    from reledger.bench import http_suite as hs

    b = _check_suite(doc, "http", name, hs.FIGURES(), hs.RATIOS(), hs.TARGETS, hs.LIMITS)
    f = b["figures"]
    for n in hs.CLIENTS:  # one entry per request: entries/s are requests/s; a batch carries more
        assert f[f"http_single_c{n}"] == pytest.approx(f[f"http_single_c{n}_rps"])
        assert f[f"http_batch_c{n}"] > f[f"http_batch_c{n}_rps"]
        assert f[f"http_single_c{n}_p50_ms"] <= f[f"http_single_c{n}_p99_ms"]
        assert b["ratios"][f"http_single_c{n}/trivial_c{n}"]["value"] == pytest.approx(
            f[f"http_single_c{n}_rps"] / f[f"trivial_c{n}_rps"])
        assert b["ratios"][f"http_batch_c{n}/inproc_batch"]["value"] == pytest.approx(
            f[f"http_batch_c{n}"] / f["inproc_batch"])
    for key in hs.CPU_FIGURES():
        _finite(f[key], positive=False)
    if name == "postgres":
        for n in hs.CLIENTS:
            _finite(f[f"http_single_c{n}_cpu_db_us"], positive=False)
    # every entry the clients were answered for is in the server's log, and nothing else
    sent = sum(d["entries"] for k, d in b["detail"].items() if k.startswith("http_"))
    assert sent > 0 and b["sizes"]["log_size"] > sent
    # single and trivial alternate in rounds, each one's figures summed over its slices (a
    # request sent twice would be a duplicate: answered 200, a problem above)
    assert b["sizes"]["rounds"] == 2
    for n in hs.CLIENTS:
        for kind in ("trivial", "http_single"):
            d = b["detail"][f"{kind}_c{n}"]
            assert d["requests"] == d["entries"] > 0 and d["seconds"] > 0


def _check_projections(doc: dict, name: str) -> None:
    from reledger.bench import projections_suite as ps

    b = _check_suite(doc, "projections", name, ps.FIGURES, ps.RATIOS, ps.TARGETS, ps.LIMITS,
                     may_be_zero=("lag_entries_p50", "lag_entries_p99", "lag_seconds_p50", "lag_seconds_p99"))
    f, sz = b["figures"], b["sizes"]
    assert f["large_entries"] == sz["large_log"] >= sz["large"]  # --quick: 2 * 10^4
    assert sz["large"] == 20_000 and b["limits"]["quota_query_ms"]["at_entries"] == sz["large_log"]
    assert b["ratios"]["rebuild/read_raw"]["value"] == pytest.approx(f["rebuild"] / f["read_raw"])
    assert 0 < b["ratios"]["quota_query/large_replay"]["value"]
    assert b["detail"]["lag"]["appended"] > 0
    # the realistic log breaks no rule but quota (its mines outproduce their allocation on long runs)
    assert set(b["detail"]["findings_by_code"]) <= {"OVER_QUOTA"}


def test_bench_http_quick_sqlite_json(capsys):
    doc = _run(capsys, "--suite", "http", "--backend", "sqlite")
    _check_http(doc, "sqlite")


def test_bench_projections_quick_sqlite_json(capsys):
    doc = _run(capsys, "--suite", "projections", "--backend", "sqlite")
    _check_projections(doc, "sqlite")


def _left_schemas(pg_url: str, pattern: str) -> list:
    import psycopg

    from reledger.storage.reader import DatabaseURL

    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo()) as conn:
        return conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (pattern.replace("*", "%"),)).fetchall()


@pytest.mark.postgres
def test_bench_http_quick_postgres_json(capsys, pg_url):
    doc = _run(capsys, "--suite", "http", "--backend", "postgres", "--pg", pg_url)
    _check_http(doc, "postgres")
    assert _left_schemas(pg_url, doc["suites"]["http"]["postgres"]["info"]["schemas"]) == []


@pytest.mark.postgres
def test_bench_projections_quick_postgres_json(capsys, pg_url):
    doc = _run(capsys, "--suite", "projections", "--backend", "postgres", "--pg", pg_url)
    _check_projections(doc, "postgres")
    assert _left_schemas(pg_url, doc["suites"]["projections"]["postgres"]["info"]["schemas"]) == []


def test_bench_suites_table_output(capsys):
    assert run.main(["--quick", "--suite", "http", "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    assert "trivial endpoint" in out and "entries/request" in out and "of trivial" in out


def test_alternating_rounds_go_on_where_they_stopped():
    """drive_alternating: two endpoints measured in turns; each one's requests are sent once
    each, in order, over the rounds (never again from the start), and each meter sums its own
    slices."""
    import asyncio
    import threading

    from reledger.bench import http_suite as hs

    seen: dict[int, list[bytes]] = {}

    def serve(port_box: list, ready: threading.Event, stop: threading.Event) -> None:
        async def handle(reader, writer):
            port = writer.get_extra_info("sockname")[1]
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    seen.setdefault(port, []).append(await reader.readexactly(length))
                    writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        async def main():
            servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(2)]
            port_box.extend(s.sockets[0].getsockname()[1] for s in servers)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            for s in servers:
                s.close()

        asyncio.run(main())

    ports: list[int] = []
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=serve, args=(ports, ready, stop), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        def reqs(tag: str) -> list[list[tuple[bytes, int]]]:
            return [[(hs.request_bytes(f"{tag}{c}-{k}".encode()), 1) for k in range(100_000)] for c in range(3)]

        a, b = reqs("a"), reqs("b")
        ra, rb = hs.drive_alternating([(ports[0], a, None, False), (ports[1], b, None, False)], 0.3, 3)
    finally:
        stop.set()
        t.join(10)
    for port, r, left in ((ports[0], ra, a), (ports[1], rb, b)):
        bodies = seen[port]
        assert r["requests"] == r["entries"] == len(bodies) > 0 and not r["errors"]
        assert len(set(bodies)) == len(bodies)  # nothing sent twice
        for c in range(3):  # each client's in order, and the lists lost exactly what was sent
            mine = [x for x in bodies if x.split(b"-")[0].endswith(str(c).encode())]
            assert mine == [x.split(b"\r\n\r\n")[1] for x, _ in reqs(chr(mine[0][0]))[c][:len(mine)]]
            assert len(left[c]) == 100_000 - len(mine)
        assert r["seconds"] >= 0.29  # three slices, each sending until its 0.1 s were up


# --- the scale suite (a national log grown step by step; the regulator's commands) -----------

def _check_scale(doc: dict, name: str) -> None:
    from reledger.bench import scale_suite as ss

    assert doc["suites_run"] == ["scale"] and doc["backends"] == {}
    b = doc["suites"]["scale"][name]
    assert "skipped" not in b, b
    assert b["problems"] == [], b["problems"]
    steps = b["steps"]
    assert [s["entries"] for s in steps] == list(b["sizes"]["sizes"]) == [1_000, 2_000]  # --quick
    for s in steps:
        assert s["timeouts"] == [] and s["problems"] == []
        f = s["figures"]
        for key in ss.FIGURES:  # every figure, at every size, present and positive
            _finite(f[key], positive=True)
        for key in ss.RATIOS:
            _finite(s["ratios"][key], positive=True)
        assert s["ratios"]["rebuild/read_raw"] == pytest.approx(f["rebuild_rate"] / f["read_raw_rate"])
        assert s["ratios"]["quota_p50/version"] == pytest.approx(f["quota_p50_s"] / f["version_s"])
        for q in ss.QUERIES:
            assert f[f"{q}_p50_s"] <= f[f"{q}_p99_s"]
            runs = s["detail"][q]
            assert len(runs) == doc["suite_params"]["scale"]["samples"]
            assert all(r["rc"] in ((0, 1) if q == "findings" else (0,)) for r in runs)
        # the points in time asked: now, then as of a log size (the quick run asks two)
        assert [("--as-of" in r["args"], "--valid-at" in r["args"]) for r in s["detail"]["quota"]] \
            == [(False, False), (True, False)]
        assert f["replay_first_line_s"] <= f["replay_s"] and s["detail"]["replay"]["lines"] > 0
        assert s["detail"]["investigate"]["bytes"] > 0
        for key, t in s["targets"].items():
            assert t["met"] is {"<": t["value"] < t["target"], "<=": t["value"] <= t["target"],
                                ">=": t["value"] >= t["target"]}[t["op"]], key
    assert steps[0]["ratios"]["append/append_first"] == 1.0
    assert steps[1]["grow"]["appended"] == 1_000  # the same log, extended


def test_bench_scale_quick_sqlite_json(capsys, tmp_path):
    doc = _run(capsys, "--suite", "scale", "--backend", "sqlite", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    _check_scale(doc, "sqlite")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("reledger-bench-")]  # removed afterwards


@pytest.mark.postgres
def test_bench_scale_quick_postgres_json(capsys, pg_url):
    doc = _run(capsys, "--suite", "scale", "--backend", "postgres", "--pg", pg_url)
    _check_scale(doc, "postgres")
    assert _left_schemas(pg_url, doc["suites"]["scale"]["postgres"]["info"]["schemas"]) == []


def test_bench_scale_options_belong_to_the_scale_suite():
    assert run.main(["--suite", "core", "--sizes", "1e5"]) == 2
    assert run.main(["--suite", "scale", "--sizes", "1e6,1e5"]) == 2  # not increasing
    assert run.main(["--suite", "scale", "--sizes", "1.5"]) == 2
    assert run.main(["--suite", "scale", "--per-year", "0"]) == 2
    assert run.main(["--suite", "scale", "--timeout", "-1"]) == 2


def test_national_log_is_valid_and_breaks_no_rule(tmp_path):
    """The national log the scale suite grows: every entry passes the command API, and the rule
    engine finds nothing in it (it is a clean baseline: what a query costs, not what a finding
    costs), across a year's turn (quota of the next year, monthly reports)."""
    from reledger.bench.national import NationalLog
    from reledger.commands.api import CommandAPI
    from reledger.projections import queries
    from reledger.projections.store import ProjectionStore
    from reledger.storage.store import LedgerStore

    url = f"sqlite:///{tmp_path / 'n.db'}"
    nl = NationalLog(per_year=2_000, workers=1)
    clock = [nl.t0 + 60_000_000]
    store = LedgerStore(url, clock=lambda: clock[0])
    api = CommandAPI(store)
    try:
        store.append(nl.genesis())
        for b in nl.take(8_000, batch=200):
            clock[0] = max(clock[0], b.record_us)
            for r in api.submit_groups([[e] for e in b.envelopes]):
                assert isinstance(r, list), r
        assert store.size() == 8_003
        assert nl.business_span()[1] > nl.t0 + 365 * 86_400_000_000  # past a year's turn
    finally:
        nl.close()
        api.close()
        store.close()
    ps = ProjectionStore(url)
    try:
        ps.rebuild()
        assert queries.findings(ps)["findings"] == []
        years = {int(y) for (y,) in ps.execute("SELECT DISTINCT year FROM reledger_p_quota")}
        assert {2016, 2017} <= years
    finally:
        ps.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "n.db") as conn:
        types = {t for (t,) in conn.execute("SELECT DISTINCT type FROM reledger_log")}
    assert {"MineralProductProduced", "TransferShipped", "TransferReceived", "SeparationBatchRecorded",
            "MetalSmelted", "ExportDeclared", "SecondaryFeedReceived", "MonthlyFlowReportSubmitted",
            "QuotaBatchIssued", "QuotaSubAllocated", "AnnualTotalApproved", "StockCounted"} <= types
