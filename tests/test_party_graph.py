"""The party graph (``flowgraph.party_graph``) holds memory bounded by its answer: the database
sums the flow rows per (source, destination, kind), the drill-down by month reads a party's rows
a page at a time through the ``(src_party, idx)`` and ``(dst_party, idx)`` indexes.

The reference is the naive aggregation it replaced (every row read into a list and summed in
Python, below): the answers must be byte-identical JSON, on the demo ledger and on random flow
tables (several rows per log index, months cut at the CST month's first microsecond, sums past
2**53), the whole graph, ``touching=`` and ``party=``, as of log sizes and valid at times, with
pages of 1, 2, 3 rows (a log index split across pages) and the default.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from projection_helpers import copy_cut, flow_rows
from reledger.projections import flowgraph
from reledger.projections.model import kg_text
from reledger.projections.queries import Point
from reledger.projections.store import P, ProjectionStore
from reledger.storage.store import LedgerStore


def reference_party_graph(ps, point: Point = Point(), party: str | None = None, touching: str | None = None) -> dict:
    """The party graph as it was computed before: every matching row in a list, summed here."""
    rows = [e for e in flow_rows(ps, point, touching if party is None else party)
            if e["kind"] not in flowgraph.TRANSFORM_KINDS]
    if party is not None:
        rows = [e for e in rows if party in (e["src_party"], e["dst_party"])]
    agg: dict[tuple, list] = {}
    folded: dict[str, set[str]] = {}
    for e in rows:
        src, dst = flowgraph._party(e["src_party"]), flowgraph._party(e["dst_party"])
        if e["kind"] == "PRODUCTION":
            src = f"mine-site:{e['src_party']}"
        elif party is None and e["kind"] in ("IMPORT", "SCRAP"):
            kind = "customs" if e["kind"] == "IMPORT" else "scrap"
            grouped = f"{kind}-all:{e['dst_party']}"
            folded.setdefault(grouped, set()).add(src)
            src = grouped
        month = flowgraph._month(e["occurred_us"]) if party is not None else None
        v = agg.setdefault((src, dst, e["kind"], month), [0, 0, 0])
        v[0] += e["g"]
        v[1] += e["reo_g"]
        v[2] += 1
    names = flowgraph._names(ps, point)
    nodes = []
    for n in sorted({n for s, d, _k, _m in agg for n in (s, d)}):
        if n in folded:
            kind = n.split("-all:", 1)[0]
            members = sorted(m.partition(":")[2] for m in folded[n])
            what = "customs declaration" if kind == "customs" else "scrap source"
            label = members[0] if len(members) == 1 else f"{len(members)} {what}s"
            nodes.append({"id": n, "kind": kind, "label": label, "members": members})
        else:
            nodes.append(flowgraph._node(n))
    for nd in nodes:
        if nd["kind"] in ("party", "mine-site"):
            nd["name"] = names.get(nd["label"], "")
    edges = []
    for (s, d, k, m), v in sorted(agg.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "")):
        e = {"src": s, "dst": d, "kind": k, "kg": kg_text(v[0]), "reo_kg": kg_text(v[1]), "count": v[2]}
        if m is not None:
            e["month"] = m
        edges.append(e)
    return {"point": point.to_dict(), "party": party, "nodes": nodes, "edges": edges, "parties": names}


def assert_same_graphs(ps, points: list[Point], parties: list[str], monkeypatch, pages=(1, 2, 3, flowgraph.PAGE)):
    """The whole graph, and ``touching=`` and ``party=`` each party, at each point, equal the
    reference's as JSON text; the drill-down with each page size."""
    checked = 0
    for point in points:
        assert json.dumps(flowgraph.party_graph(ps, point)) == json.dumps(reference_party_graph(ps, point)), point
        for p in parties:
            want = json.dumps(reference_party_graph(ps, point, touching=p))
            assert json.dumps(flowgraph.party_graph(ps, point, touching=p)) == want, (point, p)
            want = json.dumps(reference_party_graph(ps, point, party=p))
            for page in pages:
                monkeypatch.setattr(flowgraph, "PAGE", page)
                assert json.dumps(flowgraph.party_graph(ps, point, party=p)) == want, (point, p, page)
            checked += want.count('"month"')
    assert checked > 0, "the drill-downs had edges to compare"


# --- the demo ledger, on each backend ------------------------------------------------------------

def test_the_party_graph_equals_the_naive_aggregation_on_the_demo(demo_ledger, db_url, monkeypatch):
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, db_url).close()
    ps = ProjectionStore(db_url)
    try:
        ps.catch_up()
        rows = flow_rows(ps)
        parties = sorted({e["src_party"] for e in rows} | {e["dst_party"] for e in rows}) + ["NOBODY"]
        times = sorted(e["occurred_us"] for e in rows)
        mid = times[len(times) // 2]
        points = [Point(), Point(size // 2), Point(None, mid), Point(size * 3 // 4, times[len(times) // 4])]
        assert len(rows) > 100 and len(parties) > 10
        assert_same_graphs(ps, points, parties, monkeypatch, pages=(2, flowgraph.PAGE))
    finally:
        ps.close()


# --- random flow tables, on each backend ---------------------------------------------------------

CST = timezone(timedelta(hours=8))
PARTIES = ["MINE01", "MINE02", "SEP01", "SMELT01", "TRADER", "Händler 贸易"]
CUSTOMS = [f"customs:D-{i}" for i in range(4)]
SCRAP = [f"scrap:S-{i}" for i in range(3)]
EXPORTS = ["export:JP", "export:US"]
MONTH_STARTS = [int(datetime(2024, m, 1, tzinfo=CST).timestamp()) * 1_000_000 for m in range(1, 13)]


def random_flow(rnd: random.Random) -> tuple[list[tuple], list[tuple]]:
    """Flow rows (store.COLUMNS order) and a few parties' names: several rows per log index,
    business times at and around CST month boundaries, amounts past 2**53 (at most 250 rows of
    less than 2**54 each: every sum stays below 2**63)."""
    rows, idx = [], 0
    for _ in range(rnd.randrange(60, 250)):
        idx += rnd.choice([0, 0, 1, 1, 3])
        kind = rnd.choice(["PRODUCTION", "IMPORT", "SCRAP", "TRANSFER", "TRANSFER", "EXPORT", "SEPARATION", "SMELTING"])
        p, q = rnd.choice(PARTIES), rnd.choice(PARTIES)
        src, dst = {"PRODUCTION": (p, p), "IMPORT": (rnd.choice(CUSTOMS), p), "SCRAP": (rnd.choice(SCRAP), p),
                    "TRANSFER": (p, q), "EXPORT": (p, rnd.choice(EXPORTS))}.get(kind, (p, p))
        t = rnd.choice(MONTH_STARTS) + rnd.choice([-1, 0, 1, -rnd.randrange(1, 10**11), rnd.randrange(1, 10**11)])
        g = rnd.choice([rnd.randrange(1, 10**7), rnd.randrange(2**53, 2**54)])
        rows.append((idx, t, kind, src, f"L{rnd.randrange(30)}", dst, f"L{rnd.randrange(30)}", "RE_CONCENTRATE",
                     g, rnd.randrange(0, g + 1), None))
    names = [(0, p, f"Name of {p}", "MINE", None, None, None, None) for p in PARTIES[::2]]
    return rows, names


def load(ps: ProjectionStore, rows: list[tuple], names: list[tuple]) -> None:
    cur = ps.conn.cursor()
    for table in ("flow", "parties"):
        cur.execute(f"DELETE FROM {P}{table}")
    cur.executemany(ps.q(f"INSERT INTO {P}flow VALUES ({','.join('?' * 11)})"), rows)
    cur.executemany(ps.q(f"INSERT INTO {P}parties VALUES ({','.join('?' * 8)})"), names)
    cur.execute(ps.q(f"UPDATE {P}tracking SET position = ? WHERE name = ?"), (rows[-1][0] + 1, ps.name))


@pytest.mark.parametrize("seed", range(4))
def test_the_party_graph_equals_the_naive_aggregation_on_random_flows(db_url, seed, monkeypatch):
    rnd = random.Random(seed)
    rows, names = random_flow(rnd)
    LedgerStore(db_url).close()  # the database (and PostgreSQL's schema)
    # a party has several rows at one log index: a page of 1, 2 or 3 rows splits them
    assert any(a[0] == b[0] and a[3] == b[3] for a, b in zip(rows, rows[1:]))
    assert any(r[8] > 2**53 for r in rows)  # a sum through a float would lose grams
    ps = ProjectionStore(db_url)
    try:
        load(ps, rows, names)
        assert len(flow_rows(ps)) == len(rows)
        last = rows[-1][0]
        points = [Point(), Point(last // 2), Point(None, MONTH_STARTS[6]), Point(None, MONTH_STARTS[6] - 1),
                  Point(last * 2 // 3, MONTH_STARTS[9] + 1)]
        assert_same_graphs(ps, points, PARTIES + CUSTOMS[:1] + EXPORTS[:1] + ["NOBODY"], monkeypatch)
    finally:
        ps.close()


# --- the indexes ---------------------------------------------------------------------------------

def test_a_partys_flow_rows_are_read_through_its_indexes(db_url):
    """A ledger projected before the indexes existed gains them on a writing open; the party
    graph's reads of a party's rows (``touching=`` and ``party=``) go through them."""
    LedgerStore(db_url).close()
    ps = ProjectionStore(db_url)
    for name in ("flow_src_party", "flow_dst_party"):
        ps.conn.execute(f"DROP INDEX {P}{name}")
    assert ps._missing() == (0, 2)
    ps.close()
    ps = ProjectionStore(db_url)
    try:
        assert ps._missing() == (0, 0)
        load(ps, *random_flow(random.Random(1)))
        seen: list[tuple[str, tuple]] = []
        real = ps.execute

        def recording(sql, params=()):
            seen.append((sql, tuple(params)))
            return real(sql, params)

        ps.execute = recording
        flowgraph.party_graph(ps, touching="MINE01")
        flowgraph.party_graph(ps, party="MINE01")
        ps.execute = real
        reads = [(sql, params) for sql, params in seen if f"FROM {P}flow" in sql]
        assert len(reads) == 4  # touching: from it, to it; party: from it, to it (one page each)
        if ps.pg:
            ps.conn.execute("SET enable_seqscan = off")  # a table this small is otherwise scanned
        for sql, params in reads:
            plan = " ".join(str(r) for r in ps.execute(("EXPLAIN " if ps.pg else "EXPLAIN QUERY PLAN ") + sql, params))
            side = "src_party" if "src_party = ?" in sql else "dst_party"
            assert f"{P}flow_{side}" in plan, (sql, plan)
    finally:
        ps.close()
