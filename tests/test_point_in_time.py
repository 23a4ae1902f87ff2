"""Projections in time, on SQLite and PostgreSQL: valid_at (business time) against as_of (log
size or record time) on a late entry; restarts resume exactly from tracking, with and without
snapshots; racing followers are refused by tracking; the flow graph traced up and down, and its
DOT and SVG output well-formed."""

from __future__ import annotations

import re
import shutil
import threading
import xml.etree.ElementTree as ET

import pytest

import reledger.projections.model as pmodel
import reledger.projections.store as pstore
from projection_helpers import DAY, HOUR, World, assert_rebuild_equals, dt_us, dump, ev, flow_rows, summary, ts
from reledger.projections import flowgraph, queries
from reledger.projections.follow import follow
from reledger.projections.queries import Point, parse_point
from reledger.projections.store import P, ProjectionStore, TrackingError

Y = 2024


@pytest.fixture
def w(db_url):
    w = World(db_url, now=dt_us(Y, 1, 1))
    w.now = dt_us(Y, 1, 2, 9)
    w.ok("MIIT", "QuotaBatchIssued", {"year": Y, "batch_no": 1, "document_no": "Q-1", "holder": "GRP01",
                                      "mining_rock_t_reo": "10", "mining_ionic_t_reo": "10", "separation_t_reo": "10"})
    for member, cat in (("MINE01", "MINING_ROCK"), ("MINE02", "MINING_IONIC"), ("SEP01", "SEPARATION")):
        w.ok("GRP01", "QuotaSubAllocated", {"batch": {"year": Y, "batch_no": 1}, "enterprise": member,
                                            "category": cat, "t_reo": "5"})
    yield w
    w.close()


def stock_of(ps, party, point=Point()):
    return {r["lot"]: r["kg"] for r in queries.stock(ps, party, point)["lots"]}


def used(ps, party, cat, point=Point()):
    for r in queries.quota(ps, Y, point)["enterprises"]:
        if r["party"] == party and r["category"] == cat:
            return r["used_t"]
    return "0"


# --- valid_at against as_of -------------------------------------------------------------------------

def test_late_entry_valid_at_versus_as_of(w):
    w.now = dt_us(Y, 1, 10, 8)
    w.produce("MINE01", "L1", 1_000_000)                       # 2000 kg, 1 t REO
    w.now = dt_us(Y, 2, 5, 8)
    w.report("MINE01", "2024-01", 1, 1)
    before_late = w.store.size()
    w.now = dt_us(Y, 2, 20, 8)
    late = w.produce("MINE01", "L2", 2_000_000, at=dt_us(Y, 1, 15, 8))  # recorded 36 days after it happened
    now = w.store.size()
    ps = ProjectionStore(w.url)
    try:
        ps.catch_up()
        # what the ledger knew before the late entry (by log size and by record time)
        assert stock_of(ps, "MINE01", Point(before_late)) == {"L1": "2000"}
        p = parse_point(w.url, "2024-02-10T00:00:00Z", None)
        assert p.as_of == before_late
        assert stock_of(ps, "MINE01", p) == {"L1": "2000"}
        assert used(ps, "MINE01", "MINING_ROCK", p) == "1"
        # the state on 31 January as known now: the late entry included
        jan31 = parse_point(w.url, None, "2024-01-31")
        assert jan31.valid_at_us == dt_us(Y, 2, 1) - 1
        assert stock_of(ps, "MINE01", jan31) == {"L1": "2000", "L2": "4000"}
        assert used(ps, "MINE01", "MINING_ROCK", jan31) == "3"
        # both axes: on 31 January as known on 10 February
        both = parse_point(w.url, "2024-02-10T00:00:00Z", "2024-01-31")
        assert stock_of(ps, "MINE01", both) == {"L1": "2000"}
        # before the late entry's business time, even as known now
        assert stock_of(ps, "MINE01", parse_point(w.url, None, "2024-01-12")) == {"L1": "2000"}
        # the backdating finding: known now, not before; dated by its business time
        fs = queries.findings(ps, point=Point(now))["findings"]
        assert [summary(f) for f in fs] == [("BACKDATED", "MINE01", ev(late))]
        assert queries.findings(ps, point=Point(before_late))["findings"] == []
        assert queries.findings(ps, point=parse_point(w.url, None, "2024-01-14"))["findings"] == []
        assert len(queries.findings(ps, point=parse_point(w.url, None, "2024-01-15"))["findings"]) == 1
        # an as_of beyond the log is the whole log
        assert stock_of(ps, "MINE01", Point(10**9)) == stock_of(ps, "MINE01")
        # flow edges at a point
        assert {e["dst_lot"] for e in flow_rows(ps, Point(before_late))} == {"L1"}
    finally:
        ps.close()
    with pytest.raises(ValueError):
        parse_point(w.url, "yesterday", None)


# --- restarts ------------------------------------------------------------------------------------

def _activity(w, k: int, start: int = 0) -> None:
    """k entries of ordinary activity that the rule state depends on."""
    for i in range(start, start + k):
        lot = f"L{i}"
        w.produce("MINE01", lot, 600_000)
        w.now += HOUR
        w.ship("MINE01", "SEP01", f"T{i}", [(lot, "BASTNAESITE_CONCENTRATE", 1_200_000, 600_000)])
        w.now += HOUR


def _rows(ps) -> int:
    return sum(len(v) for v in dump(ps).values())


def test_restart_resumes_from_tracking(w):
    _activity(w, 6)
    size = w.store.size()
    a = ProjectionStore(w.url)
    assert a.catch_up(limit=size - 5) == size - 5
    assert a.position() == size - 5
    a.close()
    b = ProjectionStore(w.url)
    assert b.position() == size - 5
    assert b.catch_up() == 5
    assert b.catch_up() == 0
    got = dump(b)
    b.close()
    assert_rebuild_equals(w, got)  # no row twice, none missing


def test_restart_reads_the_state_rows_and_folds_nothing(w, monkeypatch):
    """A restart folds no entry to get its rule state back: it is the rows (projections/state.py),
    read on demand; the state carries over (open shipments, quota, stock)."""
    monkeypatch.setattr(pstore, "PAGE", 3)
    _activity(w, 5)                                     # shipments open at the restart
    a = ProjectionStore(w.url)
    a.catch_up()
    pos = a.position()
    a.close()

    applied = []
    real_apply = pmodel.Projector.apply

    def counting(self, index, recorded_us, signed):
        applied.append(index)
        return real_apply(self, index, recorded_us, signed)

    monkeypatch.setattr(pmodel.Projector, "apply", counting)
    b = ProjectionStore(w.url)
    proj = b._load_projector(_reader(w.url))
    assert applied == [] and proj.position == pos       # nothing folded, nothing loaded
    # the state carries over: overdue shipments, over quota and stock counts after the restart
    w.now += 70 * DAY   # past the report deadline of the month in which the 30 days ran out (business times)
    _activity(w, 6, start=10)                           # 3 t + 3.6 t: over MINE01's 5 t
    w.ok("SEP01", "StockCounted", {"lot": "L3", "counted_kg": "700"})
    b.catch_up()
    got = dump(b)
    codes = sorted(r[3] for r in got["findings"])
    assert codes.count("SHIPMENT_NOT_RECEIVED") == 5    # the five shipped before the restart
    assert "OVER_QUOTA" in codes and "STOCK_COUNT_DIFFERENCE" in codes
    b.close()
    monkeypatch.setattr(pmodel.Projector, "apply", real_apply)
    assert_rebuild_equals(w, got)


# --- quota totals kept at positions ---------------------------------------------------------------

def _quota_from_rows(ps, monkeypatch, point):
    """The quota answer from the delta rows alone (no kept totals)."""
    with monkeypatch.context() as m:
        m.setattr(ps, "quota_base", lambda n, t: 0)
        return queries.quota(ps, Y, point)


def test_quota_totals_kept_and_rolled_forward(w, monkeypatch):
    """A quota answer as of any log size and valid at any time (kept totals at the nearest
    position, rolled forward) equals the answer from the rows alone; the totals are kept at every
    multiple of QUOTA_SUMS_EVERY, the same followed page by page or rebuilt."""
    monkeypatch.setattr(pstore, "QUOTA_SUMS_EVERY", 3)
    monkeypatch.setattr(pstore, "PAGE", 2)
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 4)
    ps = ProjectionStore(w.url)
    try:
        ps.catch_up()
        _activity(w, 3)
        ps.catch_up()
        w.now += 45 * DAY
        w.produce("MINE01", "LATE", 400_000, at=w.now - 40 * DAY)  # backdated: an earlier business time
        _activity(w, 3, start=10)
        w.ok("MIIT", "QuotaBatchIssued", {"year": Y, "batch_no": 2, "document_no": "Q-2", "holder": "GRP01",
                                          "mining_rock_t_reo": "1", "mining_ionic_t_reo": "0",
                                          "separation_t_reo": "0"})
        w.produce("MINE02", "I1", 500_000, ore="IONIC")
        size = w.store.size()
        ps.catch_up(limit=5)
        ps.catch_up()
        marks = [int(r[0]) for r in ps.execute(f"SELECT position FROM {P}quota_marks ORDER BY position")]
        assert marks == list(range(3, size + 1, 3))
        times = sorted({int(r[0]) for r in ps.execute(f"SELECT occurred_us FROM {P}quota")})
        valid_ats = [None, times[0] - 1, *times, times[-1] + 1]
        based = 0
        for n in range(size + 1):
            for t in valid_ats:
                point = Point(n, t)
                base = ps.quota_base(n, pstore_far(t))
                assert base % 3 == 0 and base <= n
                based += base > 0
                assert queries.quota(ps, Y, point) == _quota_from_rows(ps, monkeypatch, point), (n, t)
        assert based  # the kept totals were used
        # the base: the latest kept position at or before n whose rows all occurred by t
        rows = [(int(i), int(o)) for i, o in ps.execute(f"SELECT idx, occurred_us FROM {P}quota")]
        for n in range(size + 1):
            for t in valid_ats:
                tt = pstore_far(t)
                expected = max((p for p in marks if p <= n and all(o <= tt for i, o in rows if i < p)), default=0)
                assert ps.quota_base(n, tt) == expected, (n, t)
        assert ps.quota_base(size, pstore_far(None)) == size - size % 3
        got = dump(ps)
        assert got["quota_sums"] and got["quota_marks"]
    finally:
        ps.close()
    assert_rebuild_equals(w, got)  # the same totals at the same positions


def pstore_far(t):
    return queries.FAR_FUTURE if t is None else t


class _Touch:
    """A pickle that, if unpickled, would create a file (what an attacker's row would run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_state_rows_are_plain_data_and_a_foreign_one_is_never_run_nor_used(w, monkeypatch, tmp_path):
    """The rule state's rows are canonical msgpack (plain data); a row holding a pickle (an
    attacker's) is never unpickled, and a state made by other rules is not used: the rule state
    is folded again from the start of the log, and the totals kept afterwards are right."""
    import pickle

    from reledger.ledger import encoding
    from reledger.projections import state as rowstate

    monkeypatch.setattr(pstore, "QUOTA_SUMS_EVERY", 5)
    _activity(w, 4)
    a = ProjectionStore(w.url)
    a.catch_up()
    rows = a.execute(f"SELECT ns, k, v FROM {P}state")
    assert rows
    for ns, k, v in rows:
        encoding.decode(bytes(v))  # canonical msgpack anyone can read
        assert rowstate.encode(rowstate.decode(v)) == bytes(v)
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Touch(str(marker)))
    a.execute(f"UPDATE {P}state SET v = ? WHERE ns <> ?", (evil, rowstate.META))
    a.close()
    _activity(w, 4, start=10)
    b = ProjectionStore(w.url)
    b.catch_up()
    assert not marker.exists()
    b.execute(f"UPDATE {P}state SET v = ? WHERE ns = ? AND k = ?",
              (rowstate.encode("0" * 32), rowstate.META, rowstate.encode("_rules")))
    b.close()
    _activity(w, 2, start=20)
    b = ProjectionStore(w.url)
    b.catch_up()
    assert not marker.exists()
    got = dump(b)
    for n in range(w.store.size() + 1):
        assert queries.quota(b, Y, Point(n)) == _quota_from_rows(b, monkeypatch, Point(n))
    b.close()
    assert_rebuild_equals(w, got)


def test_values_of_another_type_in_text_columns(w):
    """An entry written past the command API may put a number where a name belongs: it is
    projected as text (PostgreSQL's binary COPY refuses it, the page is written with INSERTs),
    the same on both backends, followed or rebuilt."""
    w.raw("MINE01", "MineralProductProduced", {"lot": "N1", "ore_type": "ROCK", "wet_kg": "11", "dry_kg": "10",
                                               "treo_pct": "50", "reo_kg": "5", "product": 123})
    _activity(w, 1)
    ps = ProjectionStore(w.url)
    try:
        ps.catch_up()
        assert ps.position() == w.store.size()
        got = dump(ps)
        assert [r[4] for r in got["stock"] if r[3] == "N1"] == ["123"]
        assert stock_of(ps, "MINE01")["N1"] == "10"
    finally:
        ps.close()
    assert_rebuild_equals(w, got)



def test_a_page_written_again_with_inserts_keeps_the_rule_state(w, monkeypatch):
    """A page whose rows binary COPY refuses is written again with INSERTs in a new transaction.
    Nothing that can be refused may be written after the rule state's flush (the retry would take
    the state's changes as written): the quota totals, written after it, always go by INSERTs.
    Followed page by page with the totals at every position, the state rows equal a rebuild's."""
    monkeypatch.setattr(pstore, "QUOTA_SUMS_EVERY", 1)
    real = ProjectionStore._insert

    def insert(self, cur, table, rows, copy=True):
        if table == "quota_sums" and copy and self.pg:
            raise TypeError("binary COPY refused a value (simulated)")
        return real(self, cur, table, rows, copy)

    monkeypatch.setattr(ProjectionStore, "_insert", insert)
    _activity(w, 2)
    ps = ProjectionStore(w.url)
    try:
        while ps.position() < w.store.size():
            ps.catch_up(limit=1)
        followed = sorted(ps.execute(f"SELECT ns, k, v FROM {P}state"))
        got = dump(ps)
    finally:
        ps.close()
    fresh = ProjectionStore(w.url)
    try:
        fresh.rebuild()
        assert sorted(fresh.execute(f"SELECT ns, k, v FROM {P}state")) == followed
        assert dump(fresh) == got
    finally:
        fresh.close()

def _reader(url):
    from reledger.storage.reader import LogReader

    return LogReader(url)


# --- followers racing --------------------------------------------------------------------------

def test_racing_followers_are_refused_by_tracking(w):
    _activity(w, 3)
    a, b = ProjectionStore(w.url), ProjectionStore(w.url)
    try:
        a.catch_up(limit=2)
        b.catch_up(limit=0)                               # both at the same position
        real = b._apply_page

        def slow_page(proj, page):                        # A moves on while B computes its page
            a.catch_up()
            return real(proj, page)

        b._apply_page = slow_page
        with pytest.raises(TrackingError):
            b.catch_up()
        b._apply_page = real
        assert b.catch_up() == 0                          # B reloads and finds nothing to do
        _activity(w, 1, start=50)
        assert b.catch_up() == 2 and a.catch_up() == 0
        got = dump(a)
        assert dump(b) == got
    finally:
        a.close()
        b.close()
    assert_rebuild_equals(w, got)


def test_concurrent_followers_end_consistent(w, monkeypatch):
    monkeypatch.setattr(pstore, "PAGE", 2)
    _activity(w, 8)
    stores = [ProjectionStore(w.url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(ps):
        for _ in range(20):
            try:
                ps.catch_up()
                return
            except TrackingError:
                continue
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=run, args=(ps,)) for ps in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    size = w.store.size()
    assert all(ps.position() == size for ps in stores)
    got = dump(stores[0])
    for ps in stores:
        ps.close()
    assert_rebuild_equals(w, got)


# --- the flow graph ----------------------------------------------------------------------------

def _flow_world(w):
    line = ("C1", "BASTNAESITE_CONCENTRATE", 2_000_000, 1_000_000)
    w.produce("MINE01", "C1", 1_000_000, product="BASTNAESITE_CONCENTRATE")
    w.ship("MINE01", "SEP01", "T1", [line])
    w.receive("SEP01", "MINE01", "T1", [line])
    w.ok("SEP01", "ImportReceived", {"lot": "IMP1", "customs_declaration_no": 'DECL "7" <&> \\x',
                                     "hs_code": "2612200000", "origin_country": "MM", "form": "MONAZITE",
                                     "product": "MONAZITE_CONCENTRATE", "dry_kg": "2000", "treo_pct": "50",
                                     "reo_kg": "1000"})
    w.ok("SEP01", "SeparationBatchRecorded", {
        "batch": "B1", "period_start": ts(w.now - DAY), "period_end": ts(w.now - HOUR),
        "inputs": [{"lot": "C1", "kg": "2000", "reo_kg": "1000"}, {"lot": "IMP1", "kg": "2000", "reo_kg": "1000"}],
        "outputs": [{"lot": "OX1", "product": "CeO2", "kg": "1000", "purity_pct": "99.5", "reo_kg": "990"},
                    {"lot": "OX2", "product": "La2O3", "kg": "1000", "purity_pct": "99.5", "reo_kg": "950"}],
        "losses_reo_kg": "60"})
    ox = ("OX1", "CeO2", 1_000_000, 990_000)
    w.ship("SEP01", "SMELT01", "T2", [ox])
    w.receive("SMELT01", "SEP01", "T2", [ox])
    w.ok("SMELT01", "MetalSmelted", {"batch": "S1", "inputs": [{"lot": "OX1", "kg": "1000", "reo_kg": "990"}],
                                     "outputs": [{"lot": "MET1", "product": "Ce_METAL", "kg": "790",
                                                  "factor": "1.2284", "reo_kg": "970.436"}]})
    met = ("MET1", "Ce_METAL", 790_000, 970_436)
    w.ship("SMELT01", "EXPO01", "T3", [met])
    w.receive("EXPO01", "SMELT01", "T3", [met])
    w.ok("EXPO01", "ExportDeclared", {"lot": "MET1", "product": "Ce_METAL", "kg": "790", "reo_kg": "970.436",
                                      "customs_declaration_no": "EXP-1", "export_licence_no": "EL-1",
                                      "destination_country": "JP"})


_STMT = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"(?: -> "((?:[^"\\]|\\.)*)")? \[label="((?:[^"\\]|\\.)*)"[^\]]*\];$')
_FRAME = re.compile(r'^\s*(?:(?:graph|node|edge) \[.*\];|subgraph "cluster_\d+" \{|label=.*;|\})$')


def check_dot(dot: str, graph: dict) -> None:
    lines = dot.rstrip("\n").split("\n")
    assert re.fullmatch(r'digraph "(?:[^"\\]|\\.)*" \{', lines[0]) and lines[-1] == "}"
    nodes, edges = set(), 0
    for line in lines[1:-1]:
        if _FRAME.match(line):
            continue
        m = _STMT.match(line)
        assert m, f"not a DOT statement: {line!r}"
        unq = [re.sub(r"\\(.)", r"\1", g) if g is not None else None for g in m.groups()]
        if unq[1] is None:
            nodes.add(unq[0])
        else:
            edges += 1
            assert unq[0] in nodes and unq[1] in nodes, line
    assert nodes == {n["id"] for n in graph["nodes"]} and edges == len(graph["edges"])


def check_svg(svg: str, graph: dict) -> None:
    """Graphviz's drawing: one group per node (titled with its id) and per edge."""
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    groups = list(root.iter(f"{ns}g"))
    assert sum(g.get("class") == "node" for g in groups) == len(graph["nodes"])
    assert sum(g.get("class") == "edge" for g in groups) == len(graph["edges"])
    texts = "".join(t.text or "" for t in root.iter(f"{ns}text"))
    for n in graph["nodes"]:
        assert n["label"] in texts


def test_flow_trace_and_rendering(w):
    _flow_world(w)
    ps = ProjectionStore(w.url)
    try:
        ps.catch_up()
        up = flowgraph.trace(ps, "MET1", "up")
        assert up["traceable"] is True
        assert up["ends"] == ['customs:DECL "7" <&> \\x', "mine:MINE01"]
        kinds = sorted(e["kind"] for e in up["edges"])
        assert kinds == ["IMPORT", "PRODUCTION", "SEPARATION", "SEPARATION", "SMELTING", "TRANSFER", "TRANSFER",
                         "TRANSFER"]
        assert {n["id"] for n in up["nodes"]} >= {"lot:MET1", "lot:OX1", "lot:C1", "lot:IMP1", "mine:MINE01"}
        down = flowgraph.trace(ps, "C1", "down")
        assert down["ends"] == ["export:JP"]
        assert {n["id"] for n in down["nodes"]} >= {"lot:C1", "lot:OX1", "lot:OX2", "lot:MET1", "export:JP"}
        # before the smelting: the metal lot does not exist yet, and the ore ends at the oxides
        at = Point(w.store.size() - 5)
        assert flowgraph.trace(ps, "MET1", "up", at)["traceable"] is False
        assert "export:JP" not in flowgraph.trace(ps, "C1", "down", at)["ends"]
        for graph in (up, down, flowgraph.party_graph(ps), flowgraph.trace(ps, "NOPE", "up")):
            check_dot(flowgraph.to_dot(graph, title='flow "of" MET1'), graph)
            if shutil.which("dot"):  # SVG is laid out by Graphviz (CI installs it)
                check_svg(flowgraph.to_svg(graph, title="flow <of> & MET1"), graph)
        with pytest.raises(ValueError):
            flowgraph.trace(ps, "MET1", "sideways")
    finally:
        ps.close()


def test_follow_keeps_up_and_stops(w):
    """The follower (LISTEN/NOTIFY on PostgreSQL, polling on SQLite) keeps up with appends and
    stops when told; no thread it starts dies with an error."""
    import time

    errors: list = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    ps = ProjectionStore(w.url)
    stop = threading.Event()
    seen: list = []
    t = threading.Thread(target=follow, args=(ps, stop), kwargs={"poll": 0.05, "on_findings": seen.extend})
    t.start()
    try:
        for i in range(3):
            _activity(w, 1, start=100 + i)
            w.ship("MINE01", "SEP01", f"GH{i}", [(f"GHOST{i}", "CeO2", 1000, 900)])  # untraceable: a finding
            deadline = time.time() + 10
            while ps.position() < w.store.size() and time.time() < deadline:
                time.sleep(0.05)
            assert ps.position() == w.store.size()
            time.sleep(0.3)  # let a waiter time out at least once
    finally:
        stop.set()
        t.join(10)
        threading.excepthook = old_hook
    assert not t.is_alive()
    assert {f.code for f in seen} >= {"UNTRACEABLE_LOT", "NEGATIVE_STOCK"}
    assert not errors, errors
    ps.close()
