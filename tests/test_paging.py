"""The stock and findings answers a keyset page at a time, against the whole-table answers of
before (kept here as the naive reference), on SQLite and PostgreSQL.

The projection tables are filled with random rows (many lots held and emptied, findings several
to a log index, RESOLVED rows naming findings of other pages, other parties, other rules, the
``*`` code) and read at random points (as of a log size, valid at a business time): every page
concatenated equals the reference, at page sizes 1, 2 and 7; without a limit the answer is the
reference itself. The HTTP surface (limits, cursors, refusals, the group reader's pages) runs over
the demo's ledger behind ``reledger serve``.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.parse
from decimal import Decimal
from typing import Any

import pytest

from http_helpers import Server, assert_problem, signed_get
from reledger.ledger import encoding
from reledger.ledger.keys import SigningKey
from reledger.projections import queries
from reledger.projections.model import RESOLVED, RULES
from reledger.projections.queries import Point, reflects
from reledger.projections.store import P, ProjectionStore
from reledger.storage.store import LedgerStore

SIZE = 400  # the log size the random rows stand for
T0 = 1_704_067_200_000_000  # 2024-01-01


# --- the naive reference: the whole-table queries of before, verbatim -----------------------------

def ref_stock(ps, party: str | None = None, point: Point = Point(), include_empty: bool = False) -> dict[str, Any]:
    n, t = point.bounds(ps)
    sql = (f"SELECT party, lot, MAX(product), SUM(g), SUM(reo_g), COUNT(*) FROM {P}stock WHERE idx < ? AND occurred_us <= ?"
           + (" AND party = ?" if party else "") + " GROUP BY party, lot ORDER BY party, lot")
    params: tuple = (n, t, party) if party else (n, t)
    lots = []
    first: dict[tuple[str, str], list[int]] = {}
    for p, lot, idx in ps.execute(
            f"SELECT party, lot, idx FROM (SELECT party, lot, idx, ROW_NUMBER() OVER (PARTITION BY party, lot "
            f"ORDER BY idx) AS rn FROM {P}stock WHERE idx < ? AND occurred_us <= ?" + (" AND party = ?" if party else "")
            + ") m WHERE rn <= 20 ORDER BY party, lot, idx", params):
        first.setdefault((p, lot), []).append(int(idx))
    for p, lot, product, g, reo, moves in ps.execute(sql, params):
        g, reo = int(g), int(reo)
        if g == 0 and reo == 0 and not include_empty:
            continue
        moved_by = first.get((p, lot), [])
        lots.append({"party": p, "lot": lot, "product": product, "kg": queries._kg(g), "reo_kg": queries._kg(reo),
                     "negative": g < 0 or reo < 0, "moved_by": moved_by, "moves": int(moves)})
    by_product: dict[tuple[str, str], list[int]] = {}
    for row in lots:
        k = (row["party"], row["product"] or "?")
        v = by_product.setdefault(k, [0, 0])
        v[0] += int(Decimal(row["kg"]) * 1000)
        v[1] += int(Decimal(row["reo_kg"]) * 1000)
    return {"party": party, "point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps), "lots": lots,
            "by_product": [{"party": p, "product": pr, "kg": queries._kg(v[0]), "reo_kg": queries._kg(v[1])}
                           for (p, pr), v in sorted(by_product.items())]}


def ref_findings(ps, party: str | None = None, rule: str | None = None, point: Point = Point()) -> dict[str, Any]:
    n, t = point.bounds(ps)
    sql = f"SELECT idx, occurred_us, rule, code, party, message, evidence, params FROM {P}findings WHERE idx < ? " \
          "AND occurred_us <= ?"
    params: list[Any] = [n, t]
    if party:
        sql += " AND party = ?"
        params.append(party)
    if rule:
        sql += " AND rule = ?"
        params.append(rule)
    out = []
    resolutions = []
    for idx, occ, r, code, p, msg, ev, prm in ps.execute(sql + " ORDER BY idx, party, rule, code, message", params):
        f = {"index": int(idx), "occurred_at": encoding.micros_to_time_text(int(occ)), "rule": r,
             "rule_text": RULES.get(r, r), "code": code, "party": p, "message": msg,
             "evidence": json.loads(ev), "params": json.loads(prm)}
        (resolutions if code == RESOLVED else out).append(f)
    for res in resolutions:
        what = res["params"].get("resolves") or {}
        for f in out:
            if f["index"] == what.get("index") and "resolved" not in f and (
                    (what.get("code") == "*" and "fact" not in f["params"]) or (f["code"] == what.get("code")
                                                and f["params"].get("fact") == what.get("fact"))):
                f["resolved"] = {"index": res["index"], "occurred_at": res["occurred_at"], "message": res["message"],
                                 "evidence": res["evidence"]}
    return {"point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps), "findings": out}


def ref_group_findings(ps, me: str, members: list[str], rule: str | None, point: Point) -> list[dict[str, Any]]:
    """The server's group read of before: its own findings, then each member's (one question
    a party), sorted by log index."""
    out = ref_findings(ps, me, rule, point)["findings"]
    for m in sorted(set(members) - {me}):
        out += ref_findings(ps, m, rule, point)["findings"]
    out.sort(key=lambda f: f["index"])
    return out


def canon(findings: list[dict[str, Any]]) -> list[str]:
    """Findings in log order, as a multiset (the order of one log index's findings is the
    database's: PostgreSQL's sort may differ between two plans)."""
    assert [f["index"] for f in findings] == sorted(f["index"] for f in findings)
    return sorted(json.dumps(f, sort_keys=True) for f in findings)


# --- random projection rows ---------------------------------------------------------------------

PARTIES = ["GRP1", "MINE1", "MINE2", "PLANT1", "PLANT2"]
PRODUCTS = ["RE_CONCENTRATE", "MIXED_OXIDE", None, ""]
RULE_NAMES = ["quota", "stock", "flow", "reporting"]


def fill(ps: ProjectionStore, rng: random.Random) -> None:
    """Random stock and findings rows (and the tracking position SIZE)."""
    stock, findings = [], []
    for k in range(120):
        party, lot, product = rng.choice(PARTIES), f"L{k % 90:03d}", rng.choice(PRODUCTS)
        moves = rng.choice([1, 1, 2, 3, 5, 25])  # some lots with more than 20 moves
        total = [0, 0]
        for m in range(moves):
            idx, occ = rng.randrange(SIZE), T0 + rng.randrange(10**12)
            if m == moves - 1 and rng.random() < 0.5:  # emptied: the moves sum to zero
                g, reo = -total[0], -total[1]
            else:
                g, reo = rng.choice([0, 1500, -700, 2_000_000]), rng.choice([0, 300, -200])
            total[0] += g
            total[1] += reo
            stock.append((idx, occ, party, lot, product, g, reo))
    open_findings = []
    for k in range(160):
        idx = rng.randrange(SIZE)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # several findings of one log index
            party, rule = rng.choice(PARTIES), rng.choice(RULE_NAMES)
            code = rng.choice(["OVER_QUOTA", "NEGATIVE_STOCK", "REPORT_MISSING"])
            params: dict[str, Any] = {"year": 2024, "level": rng.choice(["enterprise", "group"]), "holder": "GRP1"}
            if rng.random() < 0.6:
                params["fact"] = f"{code}/{party}/{k}"
            ev = [{"chain": party, "seq": k, "hash": f"{k:064x}", "index": idx}]
            findings.append((idx, T0 + rng.randrange(10**12), rule, code, party, f"{code} {k}", json.dumps(ev),
                             json.dumps(params)))
            open_findings.append((idx, code, party, rule, params.get("fact")))
    used = set()
    for k in range(90):  # RESOLVED rows: most of the finding's party and rule, some not; some of code *
        idx0, code, party, rule, fact = rng.choice(open_findings)
        idx = rng.randrange(idx0, SIZE)
        if (idx, idx0) in used:
            continue
        used.add((idx, idx0))
        if rng.random() < 0.2:
            party = rng.choice(PARTIES)
        if rng.random() < 0.2:
            rule = rng.choice(RULE_NAMES)
        what = ({"index": idx0, "code": "*", "fact": ""} if rng.random() < 0.25 else
                {"index": idx0, "code": code, "fact": fact if rng.random() < 0.85 else "other"})
        ev = [{"chain": party, "seq": 1000 + k, "hash": f"{k:064x}", "index": idx}]
        findings.append((idx, T0 + rng.randrange(10**12), rule, RESOLVED, party, f"resolved {k}", json.dumps(ev),
                         json.dumps({"resolves": what})))
    rng.shuffle(stock)
    rng.shuffle(findings)
    with ps._transaction() as cur:
        ps._insert(cur, "stock", stock, copy=False)
        ps._insert(cur, "findings", findings, copy=False)
        cur.execute(ps.q(f"UPDATE {P}tracking SET position = ? WHERE name = ?"), (SIZE, ps.name))


@pytest.fixture
def tables(db_url):
    LedgerStore(db_url).close()  # an empty ledger (the answers' "reflects" read its log)
    ps = ProjectionStore(db_url)
    fill(ps, random.Random(20240601))
    yield ps
    ps.close()


def points(rng: random.Random, k: int) -> list[Point]:
    out = [Point(), Point(SIZE // 2)]
    for _ in range(k):
        out.append(Point(rng.choice([None, rng.randrange(SIZE + 50)]),
                         rng.choice([None, T0 + rng.randrange(10**12)])))
    return out


def stock_pages(ps, party, point, limit):
    pages, after = [], None
    while True:
        page = queries.stock(ps, party, point, limit=limit, after=after)
        assert len(page["lots"]) <= limit
        pages.append(page)
        if page["next"] is None:
            return pages
        assert len(pages) < 2000, "the pages do not move on"
        assert page["next"] == queries.stock_cursor(page["lots"][-1]["party"], page["lots"][-1]["lot"])
        after = queries.parse_stock_after(page["next"])


def findings_pages(ps, point, limit, **kw):
    pages, after = [], None
    while True:
        page = queries.findings(ps, point=point, limit=limit, after=after, **kw)
        pages.append(page)
        if page["next"] is None:
            return pages
        assert len(pages) < 2000, "the pages do not move on"
        assert page["findings"] and page["next"] == page["findings"][-1]["index"]
        after = page["next"]


# --- the queries ---------------------------------------------------------------------------------

def test_stock_pages_equal_the_whole_table_answer(tables):
    ps, rng = tables, random.Random(7)
    held = 0
    for point in points(rng, 4):
        for party in (None, "MINE1", "PLANT2", "NOBODY"):
            want = ref_stock(ps, party, point)
            assert queries.stock(ps, party, point) == want  # no limit: the answer of before, unchanged
            assert json.dumps(queries.stock(ps, party, point)) == json.dumps(want)
            assert queries.stock(ps, party, point, include_empty=True) == ref_stock(ps, party, point, True)
            held += len(want["lots"])
            for limit in (1, 2, 7):
                pages = stock_pages(ps, party, point, limit)
                assert [x for p in pages for x in p["lots"]] == want["lots"], (point, party, limit)
                assert pages[0]["by_product"] == want["by_product"]  # the whole answer's, on the first page
                assert all("by_product" not in p for p in pages[1:])
                assert all({k: p[k] for k in ("party", "point", "as_of_size")}
                           == {k: want[k] for k in ("party", "point", "as_of_size")} for p in pages)
                if len(want["lots"]) > limit:
                    assert len(pages) > 1
    assert held > 100  # the random rows hold lots (and empty ones, and more than 20 moves: below)
    lots = ref_stock(ps, None, Point(), include_empty=True)["lots"]
    assert any(x["kg"] == "0" and x["reo_kg"] == "0" for x in lots) and any(x["moves"] > 20 for x in lots)


def test_findings_pages_equal_the_whole_table_answer(tables):
    ps, rng = tables, random.Random(11)
    across = 0
    for point in points(rng, 4):
        for party, rule in ((None, None), ("MINE1", None), (None, "quota"), ("PLANT1", "stock")):
            want = ref_findings(ps, party, rule, point)
            got = queries.findings(ps, party, rule, point)
            assert canon(got["findings"]) == canon(want["findings"])
            assert {k: got[k] for k in ("point", "as_of_size")} == {k: want[k] for k in ("point", "as_of_size")}
            for limit in (1, 2, 7):
                pages = findings_pages(ps, point, limit, party=party, rule=rule)
                assert canon([f for p in pages for f in p["findings"]]) == canon(want["findings"]), (point, limit)
                # a page ends with all of its last log index's findings (never split)
                for a, b in zip(pages, pages[1:]):
                    assert b["findings"] == [] or b["findings"][0]["index"] > a["next"]
                    assert len(a["findings"]) >= limit or a["findings"][-1]["index"] == a["next"]
                # a finding resolved by a row the page's own question never saw: on a later page
                across += sum(1 for p in pages for f in p["findings"]
                              if "resolved" in f and p["next"] is not None and f["resolved"]["index"] > p["next"])
    assert across > 0
    everything = ref_findings(ps)["findings"]
    assert any("resolved" in f for f in everything) and any("resolved" not in f for f in everything)


def test_the_group_readers_pages_equal_its_questions_a_party(tables):
    """The server's group read (its own findings and each member's, resolutions matched within
    a party) as one keyset-paged question over the parties."""
    ps, rng = tables, random.Random(13)
    for point in points(rng, 3):
        for rule in (None, "quota"):
            want = ref_group_findings(ps, "GRP1", ["MINE1", "PLANT2", "GRP1"], rule, point)
            parties = ["GRP1", "MINE1", "PLANT2"]
            assert canon(queries.findings(ps, None, rule, point, parties=parties)["findings"]) == canon(want)
            for limit in (1, 2, 7):
                pages = findings_pages(ps, point, limit, rule=rule, parties=parties)
                assert canon([f for p in pages for f in p["findings"]]) == canon(want), (point, limit)
    # resolutions are matched within a party: a RESOLVED row of another party cures nothing here
    whole = ref_findings(ps)["findings"]
    per_party = ref_group_findings(ps, "GRP1", PARTIES, None, Point())
    assert canon(queries.findings(ps, None, None, Point(), parties=["GRP1", *PARTIES[1:]])["findings"]) == \
        canon(per_party)
    assert canon(whole) != canon(per_party)  # the random rows do hold such a row (the test can fail)


def test_the_pages_read_what_the_answer_needs(tables):
    """The resolutions are looked up by the indices of the page (the index on
    params.resolves.index), and a group's members through the quota table's (grp, idx) index."""
    ps = tables
    if ps.pg:
        ps.execute("SET enable_seqscan = off")
        try:
            plan = " ".join(r[0] for r in ps.execute(
                "EXPLAIN SELECT idx FROM reledger_p_findings WHERE code = 'RESOLVED' AND "
                "(params::jsonb #>> '{resolves,index}') IN ('1', '2')"))
            grp = " ".join(r[0] for r in ps.execute(
                "EXPLAIN SELECT year FROM reledger_p_quota WHERE grp = 'G' AND idx < 5"))
        finally:
            ps.execute("SET enable_seqscan = on")
        assert "reledger_p_findings_resolves" in plan and "reledger_p_quota_grp" in grp
    else:
        plan = " ".join(str(r) for r in ps.execute(
            "EXPLAIN QUERY PLAN SELECT idx FROM reledger_p_findings WHERE code = 'RESOLVED' AND "
            "json_extract(params, '$.resolves.index') IN (1, 2)"))
        grp = " ".join(str(r) for r in ps.execute(
            "EXPLAIN QUERY PLAN SELECT year FROM reledger_p_quota WHERE grp = 'G' AND idx < 5"))
        assert "reledger_p_findings_resolves" in plan and "reledger_p_quota_grp" in grp


def test_cursors_are_refused_when_malformed():
    for bad in ("", "MINE1", ":L1"):
        with pytest.raises(ValueError, match="PARTY:LOT"):
            queries.parse_stock_after(bad)
    assert queries.parse_stock_after("MINE1:L:1/2") == ("MINE1", "L:1/2")  # a lot may hold ':'
    # a lot may be empty (written past the command API): the server's own next is taken back
    assert queries.parse_stock_after("MINE1:") == ("MINE1", "")


def test_a_partys_stock_pages_only_after_its_own_lots(tables):
    with pytest.raises(ValueError, match="not a lot of MINE1"):
        queries.stock(tables, "MINE1", limit=2, after=("MINE2", "L001"))


# --- the command line streams the pages -----------------------------------------------------------

def test_the_json_stream_writes_what_json_dump_writes():
    import io

    from reledger.commands.cli import stream_json

    rng = random.Random(3)
    for n in (0, 1, 2, 5):
        items = [{"a": rng.random(), "b": [1, {"c": None}], "d": "ü\n"} for _ in range(n)]
        head = {"party": None, "point": {"as_of": 3, "valid_at": None}, "reflects": {"x": []}}
        for tail in ({}, {"by_product": []}, {"by_product": [{"k": Decimal("1.5")}]}):
            out = io.StringIO()
            stream_json(out, head, "lots", iter(items), lambda: tail)
            assert out.getvalue() == json.dumps({**head, "lots": items, **tail}, indent=2, default=str) + "\n"


# --- over HTTP ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory):
    """A copy of the demo's ledger (test_replay's, per backend) behind ``reledger serve``."""
    from test_replay import demo_ledger

    src = demo_ledger("sqlite", request)
    if request.param == "sqlite":
        tmp = tmp_path_factory.mktemp("paging")
        shutil.copy(src["url"].removeprefix("sqlite:///"), tmp / "ledger.db")
        demo = {**src, "url": f"sqlite:///{tmp / 'ledger.db'}"}
    else:
        from test_replay import clone_ledger, new_pg_url

        demo = {**src, "url": clone_ledger(src, new_pg_url(request.config))}
    server = Server(demo["url"])
    try:
        yield server, demo
    finally:
        server.stop()


def _key(demo, party: str) -> SigningKey:
    return SigningKey.read(demo["keys"] / f"{party}.key")


def http_pages(base, key, path: str, limit: int, as_of: int) -> list[dict[str, Any]]:
    pages, after = [], None
    while True:
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}limit={limit}&as_of={as_of}" + ("" if after is None else
                                                        f"&after={urllib.parse.quote(str(after), safe='')}")
        r = signed_get(base, key, q)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        assert pages[-1]["next"] is None or (pages[-1]["next"] != after and len(pages) < 2000), "the pages do not move on"
        after = pages[-1]["next"]
        if after is None:
            return pages


def test_stock_and_findings_pages_over_http(served):
    server, demo = served
    reg = _key(demo, "MIIT")
    size = signed_get(server.base, reg, "/v1/stock?limit=1").json()["as_of_size"]
    whole = signed_get(server.base, reg, f"/v1/stock?limit=10000&as_of={size}").json()
    ps = ProjectionStore(demo["url"])
    try:
        want = ref_stock(ps, None, Point(size))
        wantf = ref_findings(ps, None, None, Point(size))
    finally:
        ps.close()
    assert whole["lots"] == want["lots"] and whole["by_product"] == want["by_product"] and whole["next"] is None
    for limit in (7, 150):
        pages = http_pages(server.base, reg, "/v1/stock", limit, size)
        assert [x for p in pages for x in p["lots"]] == want["lots"]
        assert pages[0]["by_product"] == want["by_product"]
    default = signed_get(server.base, reg, f"/v1/stock?as_of={size}").json()
    assert len(default["lots"]) == min(len(want["lots"]), queries.PAGE_DEFAULT)
    for limit in (1, 2, 7):
        pages = http_pages(server.base, reg, "/v1/findings", limit, size)
        assert canon([f for p in pages for f in p["findings"]]) == canon(wantf["findings"])
    # a finding resolved by an entry of a later page (the demo's late report)
    pages = http_pages(server.base, reg, "/v1/findings", 1, size)
    assert any("resolved" in f and f["resolved"]["index"] > p["next"] for p in pages for f in p["findings"]
               if p["next"] is not None)


def test_a_groups_pages_over_http(served):
    """A group's findings (its own and its members' quota findings) a page at a time equal its
    one-page answer."""
    server, demo = served
    groups = [p for p, kind in demo["parties"].items() if kind == "group"]
    assert groups
    seen = 0
    for grp in groups:
        key = _key(demo, grp)
        size = signed_get(server.base, key, "/v1/findings?limit=1").json()["as_of_size"]
        whole = signed_get(server.base, key, f"/v1/findings?limit=10000&as_of={size}").json()
        assert whole["next"] is None
        seen += sum(1 for f in whole["findings"] if f["party"] != grp)
        for limit in (1, 2, 7):
            pages = http_pages(server.base, key, "/v1/findings", limit, size)
            assert [f for p in pages for f in p["findings"]] == whole["findings"]
    assert seen  # a member's quota finding, read by its group


@pytest.mark.parametrize("query, field", [
    ("/v1/stock?limit=0", "limit"), ("/v1/stock?limit=10001", "limit"), ("/v1/stock?limit=x", "limit"),
    ("/v1/stock?limit=-1", "limit"), ("/v1/stock?after=NOPARTY", "after"), ("/v1/stock?after=%3AL1", "after"),
    ("/v1/stock?after=mine%3AL1", "after"), ("/v1/stock?after=A%00B%3AL", "after"),
    ("/v1/stock?party=MIIT&after=AB%3AL1", "after"),
    ("/v1/findings?limit=0", "limit"), ("/v1/findings?limit=100000", "limit"), ("/v1/findings?after=x", "after"),
    ("/v1/findings?after=-1", "after"), ("/v1/findings?after=99999999999999999999", "after"),
])
def test_bad_limits_and_cursors_are_refused(served, query, field):
    server, demo = served
    p = assert_problem(signed_get(server.base, _key(demo, "MIIT"), query), 400, "invalid_request")
    assert field in p["detail"] and field in (p.get("field") or "")


def test_the_published_api_names_the_paging_parameters(served):
    import httpx

    server, _ = served
    doc = httpx.get(server.base + "/openapi.json", timeout=30).json()
    for path in ("/v1/stock", "/v1/findings"):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert {"limit", "after"} <= set(params)
        lim = params["limit"]["schema"]
        assert lim["minimum"] == 1 and lim["maximum"] == queries.PAGE_MAX and lim["default"] == queries.PAGE_DEFAULT
        assert "next" in params["limit"]["description"] and params["after"].get("description")


def test_the_command_line_streams_every_page(capsys, monkeypatch, request):
    """``reledger stock`` and ``reledger findings`` read a page at a time (7 lots, 7 findings here)
    and write what the whole-table answer wrote: the same JSON, the same CSV rows; exit 1 when
    there are findings."""
    import csv
    import io

    from reledger.cli import main
    from test_replay import demo_ledger

    url = demo_ledger("sqlite", request)["url"]
    ps = ProjectionStore(url)
    try:
        stock, found = ref_stock(ps), ref_findings(ps)
        mine = ref_findings(ps, "NAO-AUDIT")
    finally:
        ps.close()
    assert len(stock["lots"]) > 7 and len(found["findings"]) > 7
    monkeypatch.setattr(queries, "PAGE_DEFAULT", 7)
    calls = []
    real = queries.stock
    monkeypatch.setattr(queries, "stock", lambda *a, **kw: calls.append(kw.get("limit")) or real(*a, **kw))

    def run(*argv):
        code = main(list(argv))
        return code, capsys.readouterr().out

    code, out = run("stock", "--db", url, "--json")
    assert code == 0 and json.loads(out) == stock
    assert out == json.dumps(stock, indent=2, default=str) + "\n"
    assert len(calls) == -(-len(stock["lots"]) // 7) and set(calls) == {7}  # a page at a time
    code, out = run("findings", "--db", url, "--json")
    assert code == 1 and out == json.dumps(found, indent=2, default=str) + "\n"
    code, out = run("findings", "--party", "NAO-AUDIT", "--db", url, "--json")
    assert code == 0 and json.loads(out) == mine and mine["findings"] == []
    code, out = run("stock", "--db", url, "--format", "csv")
    head, _, rest = out.partition("\n")
    assert code == 0 and head == "# Stock of every party by lot"
    rows = list(csv.DictReader(io.StringIO(rest.split("\n# ")[0])))
    assert [(r["party"], r["lot"], r["kg"].removesuffix(" NEGATIVE")) for r in rows] == \
        [(x["party"], x["lot"], x["kg"]) for x in stock["lots"]]
    assert "\n# by product\n" in out
    code, out = run("findings", "--db", url)
    assert code == 1 and f"{len(found['findings'])} findings" in out
