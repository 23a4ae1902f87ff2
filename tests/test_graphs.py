"""Graphs a person can read (issue 19, item 3).

* A lot's trace is ONE connected graph of lots and parties (each lot inside its holder's box),
  every edge carries kg and kg REO with thousands separators.
* A year-scale trace (a synthetic year: 10 mines, 12 months, 4 lots a month each, separated
  monthly and smelted into one metal lot: over 1,400 movements) folds to at most
  ``flowgraph.MAX_EDGES`` edges without losing a kilogram, and the drill-down gives one mine's
  lots one by one.
* Graphviz lays them out: no two text boxes overlap, measured from dot's own coordinates
  (``-Tjson``: every text's position and width) and again in headless Chromium's DOM
  (``getBoundingClientRect`` of every ``<text>``), on the demo's trace, its party graph and
  the synthetic year.
* The investigation report renders in headless Chromium with its sections, its charts and no
  overlapping chart labels; screenshots go to ``RELEDGER_SCREENSHOT_DIR`` when it is set.

Tests that need Graphviz or Chromium skip with the reason where they are not installed (CI
installs both: .ci/run).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from reledger.commands.cli import EXIT_OK, EXIT_USAGE, main
from reledger.projections import flowgraph, queries
from reledger.projections.store import ProjectionStore
from reledger.replay.report import write_report

from projection_helpers import flow_rows

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (CI installs Debian's graphviz)")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs Debian's chromium)")
DAY = 86_400_000_000
JAN_1_2024 = 1_704_067_200_000_000


# --- a realistic ledger (the small demo) and a synthetic year ---------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("graphs") / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RELEDGER_DB"}
    proc = subprocess.run([sys.executable, "-m", "reledger", "demo", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert (out / "ledger.db").exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    url = f"sqlite:///{out / 'ledger.db'}"
    ps = ProjectionStore(url)
    try:
        ps.catch_up()
        export_lot = queries.last_export(ps)
        plant = next(f["party"] for f in queries.findings(ps)["findings"] if f["code"] == "OVER_QUOTA")
    finally:
        ps.close()
    return {"url": url, "dir": out, "lot": export_lot, "plant": plant}


def year_rows(mines: int = 10, months: int = 12, per_month: int = 4) -> list[dict]:
    """Flow rows (the projection's flow table) of a synthetic year: every mine makes
    ``per_month`` concentrate lots a month and ships them to one separation plant, which
    separates each month's lots into one oxide lot; a smelter makes one metal lot of them all."""
    rows, idx = [], 0

    def row(t, kind, sp, sl, dp, dl, product, g, reo_g, ref=None):
        nonlocal idx
        idx += 1
        rows.append({"index": idx, "occurred_us": t, "kind": kind, "src_party": sp, "src_lot": sl, "dst_party": dp,
                     "dst_lot": dl, "product": product, "g": g, "reo_g": reo_g, "ref": ref})

    oxides = []
    for m in range(months):
        t = JAN_1_2024 + m * 31 * DAY
        made = []
        for k in range(mines):
            mine = f"91000000{k:02d}MINE"
            for j in range(per_month):
                lot = f"C-{k:02d}-{m:02d}-{j}"
                g, reo = 1_234_567_000 + 1000 * j, 654_321_000 + 1000 * k
                row(t + j * DAY, "PRODUCTION", mine, None, mine, lot, "RE_CONCENTRATE", g, reo)
                row(t + j * DAY + DAY // 2, "TRANSFER", mine, lot, "9100000099SEP", lot, "RE_CONCENTRATE", g, reo,
                    f"T-{lot}")
                made.append((lot, reo))
        oxide = f"OX-{m:02d}"
        for lot, reo in made:
            row(t + 20 * DAY, "SEPARATION", "9100000099SEP", lot, "9100000099SEP", oxide, "PrNd_OXIDE", reo * 9 // 10,
                reo * 9 // 10)
        row(t + 21 * DAY, "TRANSFER", "9100000099SEP", oxide, "9100000077SMELT", oxide, "PrNd_OXIDE", 10**9, 10**9,
            f"T-{oxide}")
        oxides.append(oxide)
    for oxide in oxides:
        row(JAN_1_2024 + 370 * DAY, "SMELTING", "9100000077SMELT", oxide, "9100000077SMELT", "METAL-2024",
            "PrNd_METAL", 10**9, 10**9)
    return rows


@pytest.fixture(scope="module")
def year() -> dict:
    rows = year_rows()
    full = flowgraph.trace_rows(rows, "METAL-2024", "up")
    full["parties"] = {f"91000000{k:02d}MINE": f"Mine number {k} of the north-western rare earth province"
                       for k in range(10)} | {"9100000099SEP": "Separation plant", "9100000077SMELT": "Metal smelter"}
    return {"rows": rows, "full": full, "folded": flowgraph.aggregate(full)}


def _connected(graph: dict) -> bool:
    adj: dict[str, set[str]] = {n["id"]: set() for n in graph["nodes"]}
    for e in graph["edges"]:
        adj[e["src"]].add(e["dst"])
        adj[e["dst"]].add(e["src"])
    start = next(iter(adj))
    seen, todo = {start}, [start]
    while todo:
        for n in adj[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen == set(adj)


def _totals(graph: dict) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for e in graph["edges"]:
        out[e["kind"]] = out.get(e["kind"], Decimal(0)) + Decimal(e["reo_kg"])
    return out


# --- the graph itself --------------------------------------------------------------------------

def test_trace_is_one_connected_graph_with_units(demo):
    ps = ProjectionStore(demo["url"])
    try:
        g = flowgraph.trace(ps, demo["lot"], "up")
        party = flowgraph.party_graph(ps)
    finally:
        ps.close()
    assert g["traceable"] and g["ends"]
    assert {e["kind"] for e in g["edges"]} >= {"PRODUCTION", "TRANSFER", "SEPARATION"}
    assert _connected(g), "lots and parties are one graph"
    lots = [n for n in g["nodes"] if n["kind"] == "lot"]
    assert lots and all(n["party"] for n in lots), "every lot is drawn at its holder"
    # a transfer joins the lot at the seller to the same lot at the buyer
    for e in (e for e in g["edges"] if e["kind"] == "TRANSFER"):
        assert e["src"].split("@")[0] == e["dst"].split("@")[0] == f"lot:{e['lot']}"
    dot = flowgraph.to_dot(g, "trace")
    assert dot.count("subgraph \"cluster_") == len({n["party"] for n in g["nodes"] if n.get("party")})
    for e in g["edges"]:
        kg, reo = Decimal(e["kg"]), Decimal(e["reo_kg"])
        assert f"{kg:,} kg\\n{reo:,} kg REO" in dot
        if reo >= 1000:
            assert "," in f"{reo:,}"
    # the party graph: parties named, customs declarations folded per importer
    assert _connected({"nodes": party["nodes"], "edges": party["edges"]}) or len(party["nodes"]) > 1
    folded = [n for n in party["nodes"] if n.get("members")]
    assert all(n["id"].startswith(("customs-all:", "scrap-all:")) for n in folded)
    named = [n for n in party["nodes"] if n["kind"] == "party"]
    assert named and all(n["name"] for n in named)


def test_year_scale_trace_folds_to_a_screen_and_drills_down(year):
    full, folded = year["full"], year["folded"]
    assert len(full["edges"]) > 1400
    assert len(folded["edges"]) <= flowgraph.MAX_EDGES < len(full["edges"])
    assert folded["aggregated"] in ("month", "quarter", "year") and folded["detail_edges"] == len(full["edges"])
    assert _totals(folded) == _totals(full), "folding loses no kilogram"
    assert sum(e["count"] for e in folded["edges"]) == len(full["edges"])
    assert _connected(folded)
    # every lot of the detail is in exactly one place of the folded graph
    placed: list[str] = []
    for n in folded["nodes"]:
        if n["kind"] == "lots":
            placed += [f"{m}@{n['party']}" for m in n["members"]]
        elif n["kind"] == "lot":
            placed.append(f"{n['lot']}@{n['party']}")
    assert sorted(placed) == sorted(f"{n['lot']}@{n['party']}" for n in full["nodes"] if n["kind"] == "lot")
    assert flowgraph.aggregate(folded) is folded or len(flowgraph.aggregate(folded)["edges"]) <= flowgraph.MAX_EDGES
    # one level down: one mine's lots, lot by lot
    mine = "9100000003MINE"
    down = flowgraph.drill_down(full, mine)
    held = [n for n in down["nodes"] if n.get("party") == mine and n["kind"] == "lot"]
    assert len(held) == 12 * 4
    assert all(e["src"] in {n["id"] for n in held} | {f"mine:{mine}"} or e["dst"] in {n["id"] for n in held}
               for e in down["edges"])
    assert _totals(down)["PRODUCTION"] == sum(Decimal(e["reo_kg"]) for e in full["edges"]
                                              if e["kind"] == "PRODUCTION" and e["src"] == f"mine:{mine}")
    # a small trace is left as it is
    small = flowgraph.trace_rows(year["rows"], "C-00-00-0", "down")
    assert flowgraph.aggregate(small) is small


def test_flow_cli_formats_and_drill_down(demo, tmp_path, capsys):
    url, lot = demo["url"], demo["lot"]
    assert main(["flow", "--db", url, "--lot", lot, "--format", "json"]) == EXIT_OK
    g = json.loads(capsys.readouterr().out)
    assert g["lot"] == lot and g["edges"]
    assert main(["flow", "--db", url, "--lot", lot, "--format", "dot", "--out", str(tmp_path / "t.dot")]) == EXIT_OK
    assert (tmp_path / "t.dot").read_text().startswith("digraph ")
    holder = next(n["party"] for n in g["nodes"] if n["kind"] == "lot" and n["party"] != g["nodes"][0]["party"])
    assert main(["flow", "--db", url, "--lot", lot, "--party", holder, "--format", "json"]) == EXIT_OK
    down = json.loads(capsys.readouterr().out)
    mine = {n["id"] for n in down["nodes"] if n.get("party") == holder}
    assert down["drill_down"] == holder and mine == {n["id"] for n in g["nodes"] if n.get("party") == holder}
    assert down["edges"] and all(e["src"] in mine or e["dst"] in mine for e in down["edges"])
    assert main(["flow", "--db", url, "--party", demo["plant"], "--format", "json"]) == EXIT_OK
    monthly = json.loads(capsys.readouterr().out)
    assert monthly["edges"] and all(re.fullmatch(r"\d{4}-\d\d", e["month"]) for e in monthly["edges"])
    capsys.readouterr()
    assert main(["flow", "--db", url, "--lot", lot, "--party", "NO-SUCH-PARTY"]) == EXIT_USAGE
    assert "NO-SUCH-PARTY" in capsys.readouterr().err
    assert main(["flow", "--db", url, "--party", "NO-SUCH-PARTY"]) == EXIT_USAGE


def test_svg_without_graphviz_is_a_clear_error(demo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on this PATH
    out = tmp_path / "t.svg"
    assert main(["flow", "--db", demo["url"], "--lot", demo["lot"], "--format", "svg", "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(flowgraph.GraphvizMissing):
        flowgraph.to_svg({"nodes": [], "edges": []})


# --- layout: no two labels overlap ----------------------------------------------------------

def _text_boxes(dot_text: str) -> list[tuple[str, float, float, float, float]]:
    """Every text Graphviz draws, as (text, x0, y0, x1, y1) in points, from ``dot -Tjson``."""
    layout = json.loads(subprocess.run(["dot", "-Tjson"], input=dot_text.encode(), capture_output=True,
                                       check=True, timeout=300).stdout)
    boxes = []
    for obj in [layout, *layout.get("objects", []), *layout.get("edges", [])]:
        size = 14.0
        for op in obj.get("_ldraw_", []):
            if op["op"] == "F":
                size = op["size"]
            elif op["op"] == "T":
                x, y, w = op["pt"][0], op["pt"][1], op["width"]
                x0 = {"l": x, "c": x - w / 2, "r": x - w}[op["align"]]
                boxes.append((op["text"], x0, y - 0.2 * size, x0 + w, y + 0.8 * size))
    return boxes


def _overlaps(boxes: list[tuple], tolerance: float = 0.5) -> list[tuple[str, str]]:
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if (min(a[3], b[3]) - max(a[1], b[1]) > tolerance) and (min(a[4], b[4]) - max(a[2], b[2]) > tolerance):
                bad.append((a[0], b[0]))
    return bad


@needs_dot
def test_graphviz_places_every_label_apart(demo, year):
    ps = ProjectionStore(demo["url"])
    try:
        graphs = {"demo trace": flowgraph.trace(ps, demo["lot"], "up"), "demo party graph": flowgraph.party_graph(ps),
                  "demo plant by month": flowgraph.party_graph(ps, party=demo["plant"])}
    finally:
        ps.close()
    graphs["year, folded"] = year["folded"]
    graphs["year, one mine lot by lot"] = flowgraph.drill_down(year["full"], "9100000003MINE")
    for name, g in graphs.items():
        boxes = _text_boxes(flowgraph.to_dot(g, name))
        assert len(boxes) >= 3 * len(g["edges"]), name  # every edge label is drawn (kind and day, kg, kg REO)
        assert _overlaps(boxes) == [], name
        assert _overlaps([("a", 0, 0, 10, 10), ("b", 5, 5, 15, 15)]), "the check itself finds an overlap"


# --- in a real browser ------------------------------------------------------------------------

_MEASURE = """<script>
(function () {
  var out = {sections: [], svgs: [], overlaps: [], texts: 0, width: window.innerWidth};
  document.querySelectorAll('h2').forEach(function (h) { out.sections.push(h.textContent); });
  document.querySelectorAll('svg').forEach(function (svg, k) {
    var r = svg.getBoundingClientRect();
    out.svgs.push({w: r.width, h: r.height, x: r.left});
    var boxes = [], groups = [];
    svg.querySelectorAll('text').forEach(function (t) {
      if (!t.textContent.trim()) return;
      var b = t.getBoundingClientRect();
      boxes.push([t.textContent, b.left, b.top, b.right, b.bottom]);
      // the lines of one label (one Graphviz node, edge or cluster) sit in one <g>: their line
      // boxes may touch; labels of different things must not
      groups.push(t.closest('g') || t);
    });
    out.texts += boxes.length;
    for (var i = 0; i < boxes.length; i++) for (var j = i + 1; j < boxes.length; j++) {
      var a = boxes[i], c = boxes[j];
      if (groups[i] === groups[j]) continue;
      if (Math.min(a[3], c[3]) - Math.max(a[1], c[1]) > 1 && Math.min(a[4], c[4]) - Math.max(a[2], c[2]) > 1)
        out.overlaps.push([k, a[0], c[0]]);
    }
  });
  var pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _chromium(page: Path, tmp_path: Path, *, shot: Path | None = None, size: str = "1400,1000") -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={size}"]
    cmd += [f"--screenshot={shot}"] if shot else ["--dump-dom"]
    proc = subprocess.run(cmd + [page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    if shot:
        assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    return proc.stdout


def _measure(page: Path, tmp_path: Path, size: str = "1400,1000") -> dict:
    """The page with the measuring script added (a copy: the report itself has no script)."""
    text = page.read_text(encoding="utf-8")
    probe = page.with_name(page.stem + "-measured.html")
    probe.write_text(text.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dom = _chromium(probe, tmp_path, size=size)
    m = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    return json.loads(html.unescape(m.group(1)))


def _keep(*files: Path) -> None:
    keep = os.environ.get("RELEDGER_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, Path(keep) / f.name)


@needs_dot
@needs_chromium
def test_year_trace_fits_a_screen_in_chromium(year, demo, tmp_path):
    ps = ProjectionStore(demo["url"])
    try:
        party = flowgraph.party_graph(ps)
    finally:
        ps.close()
    for name, g, title in (("year-trace", year["folded"], "lot METAL-2024 upstream"),
                           ("demo-flows", party, "flows")):
        svg = flowgraph.to_svg(g, title)
        page = tmp_path / f"{name}.html"
        page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:8px}'
                        "svg{max-width:100%;height:auto}</style></head><body>" + svg + "</body></html>",
                        encoding="utf-8")
        shot = tmp_path / f"{name}.png"
        _chromium(page, tmp_path, shot=shot, size="1600,1000")
        _keep(shot, page)
        m = _measure(page, tmp_path, size="1600,1000")
        assert len(m["svgs"]) == 1 and m["texts"] >= 3 * len(g["edges"])
        assert m["overlaps"] == [], (name, m["overlaps"][:5])
        w, h = m["svgs"][0]["w"], m["svgs"][0]["h"]
        assert w <= m["width"], "the drawing fits the window's width"
        if name == "year-trace":
            assert h <= 1000, f"the folded year ({w:.0f} x {h:.0f} px) fits one 1600 x 1000 screen"


@needs_chromium
def test_report_renders_with_its_sections_in_chromium(demo, tmp_path):
    page = tmp_path / "investigation.html"
    write_report(demo["url"], demo["plant"], page)
    shot = tmp_path / "investigation.png"
    _chromium(page, tmp_path, shot=shot, size="1300,7000")
    _keep(shot, page)
    m = _measure(page, tmp_path, size="1300,1000")
    for section in ("Findings and evidence", "Quota burn-down", "Stock over time", "Flows", "Credit record",
                    "Timeline"):
        assert section in m["sections"]
    charts = m["svgs"]
    assert len(charts) >= 4  # burn-down, stock panels, flows, trace
    assert all(c["x"] >= 0 and c["x"] + c["w"] <= m["width"] for c in charts), "no chart runs off the page"
    assert m["overlaps"] == [], m["overlaps"][:5]
    text = page.read_text(encoding="utf-8")
    evidence = text[text.index("<h2>Findings and evidence</h2>"):text.index("<h2>Quota burn-down</h2>")]
    assert re.search(r"in [\d,.]+ kg REO from \d+ lot", evidence), "the batch's REO in and out"
    assert re.search(r"[\d,.]+ t REO of SEPARATION sub-allocated", evidence), "the tonnes sub-allocated"


def test_a_trace_reads_only_the_lots_it_reaches_and_gives_the_whole_tables_graph(demo):
    """``trace`` reads the flow rows of the lots it reaches (through the lot indexes), the party
    graph ``touching`` a party reads that party's rows: the same graphs as over the whole table
    (the reference, ``trace_rows`` over every row), for every lot and both directions."""
    ps = ProjectionStore(demo["url"])
    try:
        point = queries.Point()
        every = flow_rows(ps, point)
        lots = sorted({e["dst_lot"] for e in every if e["dst_lot"]} | {e["src_lot"] for e in every if e["src_lot"]})
        assert len(lots) > 50

        def norm(g):
            return {**g, "point": None, "parties": None,
                    "edges": sorted(g["edges"], key=lambda e: json.dumps(e, sort_keys=True))}

        for lot in lots:
            for direction in ("up", "down"):
                want = flowgraph.trace_rows(every, lot, direction)
                got = flowgraph.trace(ps, lot, direction, point)
                assert norm(got) == norm(want), (lot, direction)
        whole = flowgraph.party_graph(ps, point)
        for party in sorted({e["src_party"] for e in every} | {e["dst_party"] for e in every}):
            mine = {f"party:{party}", f"mine-site:{party}"}
            want = [e for e in whole["edges"] if e["src"] in mine or e["dst"] in mine]
            got = [e for e in flowgraph.party_graph(ps, point, touching=party)["edges"]
                   if e["src"] in mine or e["dst"] in mine]
            assert got == want, party
    finally:
        ps.close()
