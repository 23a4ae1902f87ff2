"""``reledger investigate``: one self-contained HTML report on a party.

A demo ledger (``reledger demo``, small scale) gives parties with seeded violations. The report
must need nothing from the network, name every finding with its evidence, print inclusion
proofs that verify against the checkpoint it names (entries after that checkpoint marked "not
yet checkpointed"), escape what it prints, and render in a real browser (headless Chromium; the
test skips with the reason when no Chromium is installed).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reledger.commands.cli import EXIT_OK, EXIT_USAGE, main
from reledger.ledger import merkle
from reledger.ledger.entry import leaf_bytes
from reledger.storage.store import LedgerStore
from reledger.projections import queries
from reledger.projections.store import ProjectionStore
from reledger.replay.report import REGULATIONS, gather, render_html, write_report


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A small demo ledger, the parties with findings, and the party that went over quota."""
    out = tmp_path_factory.mktemp("investigate") / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RELEDGER_DB"}
    proc = subprocess.run([sys.executable, "-m", "reledger", "demo", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    db = out / "ledger.db"
    assert db.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    url = f"sqlite:///{db}"
    ps = ProjectionStore(url)
    try:
        ps.catch_up()
        found = queries.findings(ps)["findings"]
    finally:
        ps.close()
    assert found, "the demo seeds violations: there must be findings"
    over = [f["party"] for f in found if f["code"] == "OVER_QUOTA"]
    by_party: dict[str, list[dict]] = {}
    for f in found:
        by_party.setdefault(f["party"], []).append(f)
    return {"url": url, "dir": out, "findings": found, "by_party": by_party,
            "party": over[0] if over else found[0]["party"]}


class _Refs(HTMLParser):
    """Every attribute and style text that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.bad: list[str] = []
        self.tags: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            value = value or ""
            if name in ("src", "href", "xlink:href", "action", "poster", "data", "srcset", "background") and \
                    re.match(r"\s*(?:[a-z][a-z0-9+.-]*:|//)", value, re.I) and not value.startswith("#"):
                self.bad.append(f"<{tag} {name}={value}>")
            if name == "style" and re.search(r"url\(|@import", value, re.I):
                self.bad.append(f"<{tag} style={value}>")
        if tag == "script" and any(n == "src" for n, _ in attrs):
            self.bad.append("<script src>")
        if tag == "link":
            self.bad.append(f"<link {attrs}>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style and re.search(r"url\(|@import", data, re.I):
            self.bad.append(f"<style>{data[:80]}")


def _external_refs(text: str) -> list[str]:
    """Anything that would make a browser fetch: src/href to a URL (any scheme, or
    protocol-relative), <script src>, <link>, CSS url() or @import."""
    p = _Refs()
    p.feed(text)
    p.close()
    return p.bad


def _tags(text: str) -> set[str]:
    p = _Refs()
    p.feed(text)
    return set(p.tags)


def _report(demo: dict, tmp_path: Path, party: str, *extra: str) -> str:
    out = tmp_path / f"{party}.html"
    rc = main(["investigate", "--db", demo["url"], "--party", party, "--out", str(out), *extra])
    assert rc == EXIT_OK
    return out.read_text(encoding="utf-8")


def test_report_is_self_contained_and_proves_every_finding(demo, tmp_path):
    party = demo["party"]
    text = _report(demo, tmp_path, party)
    assert text.startswith("<!DOCTYPE html>")
    for fetching in ('<img src="https://x.example/a.png">', '<a href="//x.example/">', "<script src=a.js></script>",
                     '<link rel="stylesheet" href="a.css">', "<style>@import 'a.css';</style>",
                     '<div style="background:url(http://x.example/a.png)">'):
        assert _external_refs(fetching), fetching  # the checker itself catches each kind
    assert _external_refs(text) == []
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert "<script" not in text.lower()
    # header: party, checkpoint
    with LedgerStore(demo["url"], create=False) as store:
        size, root, _note = store.latest_checkpoint()
        assert party in text and root.hex() in text and f"<td>{size}</td>" in text
        # every finding, its code, its regulation, and every evidence entry proven
        mine = demo["by_party"][party]
        for f in mine:
            assert html.escape(f["code"]) in text
            assert html.escape(f["message"]) in text
            for art in {a for _src, a, _t in REGULATIONS[f["code"]]["provisions"]}:
                assert html.escape(art) in text
            for ev in f["evidence"]:
                assert ev["hash"] in text
                assert f"{ev['chain']}:{ev['seq']}" in text
                rec = store.record(ev["index"])
                assert rec.entry_hash.hex() == ev["hash"]
                assert ev["index"] < size  # the demo checkpoints its whole log at the end
                proof = store.inclusion_proof(ev["index"], size)
                leaf = merkle.leaf_hash(leaf_bytes(rec.entry_hash, rec.index, rec.recorded_at))
                merkle.verify_inclusion(leaf, ev["index"], size, proof, root)
                listed = "".join(f"<li>{h.hex()}</li>" for h in proof)
                assert listed in text, "the proof is printed, sibling by sibling, in order"
        section = text[text.index("<h2>Findings and evidence</h2>"):text.index("<h2>Quota burn-down</h2>")]
        assert section.count("inclusion proof verified against the checkpoint") == \
            sum(len(f["evidence"]) for f in mine)
    assert "FAILED" not in text and "DOES NOT" not in text
    # the rest of the report
    for heading in ("Timeline", "Quota burn-down", "Stock over time", "Flows", "Credit record",
                    "Findings and evidence"):
        assert f"<h2>{heading}</h2>" in text
    if any(f["code"] == "OVER_QUOTA" for f in demo["by_party"][party]):
        assert "Art. 21" in text and "5–10x" in text and "CNY 1–5 m" in text
        assert "over quota from" in text  # marked on the burn-down chart
    assert text.count("<svg") >= 3  # quota, stock, flows


def test_quota_burn_down_matches_the_projections(demo):
    d = gather(demo["url"], demo["party"])
    assert d["quota"] and d["quota_agrees"]
    ps = ProjectionStore(demo["url"])
    try:
        for c in d["quota"]:
            q = queries.quota(ps, c["year"])
            row = next(e for e in q["enterprises"] if e["party"] == demo["party"] and e["category"] == c["category"])
            assert abs(c["allocated_t"] - float(row["allocated_t"])) < 1e-6
            assert abs(c["used_t"] - float(row["used_t"])) < 1e-6
            # cumulative series: the used line never decreases; it ends at the total
            assert all(a[1] <= b[1] for a, b in zip(c["used"], c["used"][1:]))
            if row["over"]:  # over at the end: the chart marks when it first went over
                assert c["over"] is not None
    finally:
        ps.close()


def test_every_party_with_findings(demo, tmp_path):
    assert demo["by_party"] and all(demo["by_party"].values())  # the demo's seeded findings, never none
    traced = False
    for party, found in demo["by_party"].items():
        text = _report(demo, tmp_path, party)
        assert _external_refs(text) == []
        for f in found:
            assert html.escape(f["code"]) in text
            for ev in f["evidence"]:
                assert ev["hash"] in text
            if f["code"] == "RECYCLER_MINERAL_FEED":  # the concentrate's lot, traced to its mine
                assert "traced upstream" in text and "origins reached: mine:" in text
                traced = True
    assert traced  # the demo seeds a recycler taking concentrate: its trace was checked


def test_as_of_before_a_checkpoint_marks_evidence_not_yet_checkpointed(demo, tmp_path):
    with LedgerStore(demo["url"], create=False) as store:
        sizes = {c[0] for c in store.checkpoints()}
    # a finding with evidence after the last checkpoint at or before the entry that raised it

    def cp_at(f: dict) -> int:
        return max((s for s in sizes if s <= f["index"] + 1), default=0)

    f = next(f for f in demo["findings"] if cp_at(f) and any(ev["index"] >= cp_at(f) for ev in f["evidence"]))
    cp = cp_at(f)
    late = next(ev for ev in f["evidence"] if ev["index"] >= cp)
    s = write_report(demo["url"], f["party"], tmp_path / "early.html", as_of=f["index"] + 1)
    text = (tmp_path / "early.html").read_text()
    assert s["as_of_size"] == f["index"] + 1 and s["checkpoint"]["size"] == cp
    assert s["not_yet_checkpointed"] >= 1 and s["proofs_failed"] == 0
    assert f"not yet checkpointed (log index {late['index']} is after the checkpoint of size {cp})" in text
    assert html.escape(f["code"]) in text
    # the CLI takes the same --as-of
    assert main(["investigate", "--db", demo["url"], "--party", f["party"], "--out", str(tmp_path / "cli.html"),
                 "--as-of", str(f["index"] + 1)]) == EXIT_OK


def test_usage_errors_exit_2(demo, tmp_path, capsys):
    out = str(tmp_path / "x.html")
    assert main(["investigate", "--db", demo["url"], "--party", "NO-SUCH-PARTY", "--out", out]) == EXIT_USAGE
    assert "NO-SUCH-PARTY" in capsys.readouterr().err
    assert main(["investigate", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--party", "X1", "--out", out]) \
        == EXIT_USAGE
    assert main(["investigate", "--db", demo["url"], "--party", demo["party"], "--out", out,
                 "--as-of", "not-a-time"]) == EXIT_USAGE
    assert main(["investigate", "--db", demo["url"], "--out", out]) == EXIT_USAGE  # --party missing
    assert not Path(out).exists()


def test_text_from_the_ledger_is_escaped_and_credit_is_shown(demo):
    d = gather(demo["url"], demo["party"])
    evil = '<script>alert("x")</script>&<img src=http://evil.example/x.png>'
    d["party"] = {**d["party"], "name": evil, "province": evil}
    d["names"] = {k: evil for k in d["names"]}
    d["replay"].credit = [
        {"index": 1, "kind": "VIOLATION", "article": "Decree 785 Art. 21", "fine_cny": None, "next_year_cut_t": "0",
         "detail": f"quota: {evil}"},
        {"index": 2, "kind": "PENALTY", "article": "Decree 785 Art. 21", "fine_cny": "1500000.00",
         "next_year_cut_t": "25", "detail": "PD-2025-001"}]
    text = render_html(d)
    assert "<script" not in text and "<img" not in text
    assert html.escape(evil) in text  # as text, never as a tag or attribute
    assert _external_refs(text) == []
    assert not {"script", "img"} & _tags(text)
    credit = text[text.index("<h2>Credit record</h2>"):text.index("<h2>Timeline</h2>")]
    for s in ("VIOLATION", "PENALTY", "1500000.00", "PD-2025-001", "Decree 785 Art. 21", "25"):
        assert s in credit


def test_demo_credit_record_when_the_demo_enforces(demo, tmp_path):
    """The demo's regulator records a violation and a penalty (demo/run.py): the report lists
    them, each with the regulator's entry proven."""
    ps = ProjectionStore(demo["url"])
    try:
        records = queries.credit(ps)["records"]
    finally:
        ps.close()
    assert records, "the demo records a ViolationFound and a PenaltyImposed: the credit record cannot be empty"
    party = records[0]["party"]
    text = _report(demo, tmp_path, party)
    credit = text[text.index("<h2>Credit record</h2>"):text.index("<h2>Timeline</h2>")]
    with LedgerStore(demo["url"], create=False) as store:
        for r in (r for r in records if r["party"] == party):
            assert html.escape(r["kind"]) in credit
            if r["article"]:
                assert html.escape(r["article"]) in credit
            assert store.record(r["index"]).entry_hash.hex() in credit  # the regulator's entry, proven


# --- rendering in a real browser ------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_stats(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[: 4 * 1024 * 1024]))


def test_renders_in_headless_chromium(demo, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true and no chromium on PATH: .ci/run installs Debian's chromium", pytrace=False)
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium; locally: apt-get install chromium)")
    page = tmp_path / "report.html"
    write_report(demo["url"], demo["party"], page)
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,3000",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    keep = os.environ.get("RELEDGER_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "investigate.png")
        shutil.copy(page, Path(keep) / "investigate.html")
    data = shot.read_bytes()
    width, height, distinct = _png_stats(data)
    assert (width, height) == (1400, 3000)
    assert len(data) > 50_000, "a report with tables and charts compresses to more than a blank page"
    assert distinct > 32, "the screenshot is not a blank or single-colour page"


def test_it_says_what_it_is_doing(demo, tmp_path):
    """The progress line of `investigate` (its heartbeat) says which step the report is at: the
    replay, the evidence proven so far out of how many, the traces, the drawing."""
    said: list[str] = []
    s = write_report(demo["url"], demo["party"], tmp_path / "p.html", progress=said.append)
    assert said[0].startswith("replaying the party's history up to log size ")
    proving = [x for x in said if x.startswith("proving the evidence: ")]
    assert s["findings"] and len(proving) == s["findings"]  # one line as each finding's evidence is proven
    assert proving[0].startswith("proving the evidence: log index ") and \
        proving[0].endswith(" 0 findings and 0 evidence entries proven so far")
    at = [int(x.split("log index ")[1].split(" of ")[0].replace(",", "")) for x in proving]
    assert at == sorted(at)  # in log order, as the replay reaches them
    assert "reading the quota, stock and flows" in said
    assert said[-1] == "drawing and writing the report"


# --- the streamed series against the whole series (the reference) ----------------------------

def _reference_quota(ps, party: str, n: int, is_group: bool) -> dict:
    """The burn-down as the report first drew it: every row in memory, every point kept."""
    rows = ps.execute("SELECT idx, occurred_us, year, party, category, kind, g, grp FROM reledger_p_quota "
                      "WHERE idx < ? AND (party = ? OR grp = ?) ORDER BY occurred_us, idx, party, kind, g, grp", (n, party, party))
    charts: dict = {}
    for idx, occ, year, p, cat, kind, g, grp in rows:
        c = charts.setdefault((int(year), cat), {"alloc": [], "used": [], "out": []})
        occ, g = int(occ), int(g)
        if p == party and kind in ("ISSUED", "SUBALLOCATED_IN", "REDUCED"):
            c["alloc"].append((occ, -g if kind == "REDUCED" else g))
        elif kind == "USED" and ((not is_group and p == party) or (is_group and grp == party)):
            c["used"].append((occ, g))
        elif p == party and kind == "SUBALLOCATED_OUT":
            c["out"].append((occ, g))
    out = {}
    for key, c in sorted(charts.items()):
        for k in ("alloc", "used", "out"):
            acc, pts = 0, []
            for t, g in c[k]:
                acc += g
                pts.append((t, acc / 1_000_000))
            c[k] = pts

        def value_at(series, t):
            v = 0.0
            for x, y in series:
                if x > t:
                    break
                v = y
            return v
        c["over"] = next(((t, y) for t, y in c["used"] if y > value_at(c["alloc"], t) + 1e-9), None)
        out[key] = c
    return out


def _reference_stock(ps, party: str, n: int) -> dict:
    rows = ps.execute("SELECT occurred_us, product, reo_g FROM reledger_p_stock WHERE party = ? AND idx < ? "
                      "ORDER BY occurred_us, idx, product, reo_g", (party, n))
    acc: dict = {}
    series: dict = {}
    for occ, product, reo in rows:
        product = product or "?"
        acc[product] = acc.get(product, 0) + int(reo)
        s = series.setdefault(product, [])
        if s and s[-1][0] == int(occ):
            s[-1] = (int(occ), acc[product] / 1000)
        else:
            s.append((int(occ), acc[product] / 1000))
    return series


def _series_parties(url: str) -> list[tuple[str, bool]]:
    ps = ProjectionStore(url)
    try:
        everyone = queries.parties(ps)
    finally:
        ps.close()
    return [(p["party"], "GROUP" in p["roles"]) for p in everyone]


def _check_series(url: str) -> int:
    """Every party's streamed quota and stock series against the reference, at two log sizes."""
    from reledger.projections.store import ProjectionReader
    from reledger.replay import report

    ps = ProjectionReader(url)
    try:
        n = ps.position()
        checked = 0
        for party, is_group in _series_parties(url):
            for as_of in (n, n // 2):
                ref = _reference_quota(ps, party, as_of, is_group)
                got = {(c["year"], c["category"]): c for c in report._quota_series(ps, party, as_of, is_group)}
                assert set(got) == set(ref), party
                for key, c in ref.items():
                    for k in ("alloc", "used", "out"):
                        assert got[key][k] == c[k], (party, key, k)
                    assert got[key]["over"] == c["over"], (party, key)
                    assert got[key]["used_t"] == (c["used"][-1][1] if c["used"] else 0.0)
                    assert got[key]["allocated_t"] == (c["alloc"][-1][1] if c["alloc"] else 0.0)
                    checked += 1
                sref = _reference_stock(ps, party, as_of)
                sgot = report._stock_series(ps, party, as_of)
                assert set(sgot) == set(sref)
                for prod, pts in sref.items():
                    s = sgot[prod]
                    assert s.points == pts, (party, prod)
                    assert s.now == pts[-1][1] and s.peak == max(v for _, v in pts)
                    assert s.largest == max(abs(v) for _, v in pts)
                    assert s.below_zero == next(((t, v) for t, v in pts if v < 0), None)
                    checked += 1
        return checked
    finally:
        ps.close()


@pytest.mark.parametrize("page", [3, 5000])
def test_series_read_a_page_at_a_time_equal_the_whole_series(demo, monkeypatch, page):
    """With more time buckets than points, the streamed series are the reference's, point for
    point, whatever the page size (3: many keyset pages, several rows of one entry across a
    page's end)."""
    from reledger.replay import report

    monkeypatch.setattr(report, "SERIES_PAGE", page)
    monkeypatch.setattr(report, "CHART_BUCKETS", 10 ** 12)
    assert _check_series(demo["url"]) > 50


def test_series_on_both_backends(db_url, demo_ledger, monkeypatch):
    from projection_helpers import copy_cut, project

    from reledger.replay import report

    monkeypatch.setattr(report, "SERIES_PAGE", 4)
    monkeypatch.setattr(report, "CHART_BUCKETS", 10 ** 12)
    with LedgerStore(demo_ledger, create=False) as src:
        copy_cut(src, src.size(), db_url).close()
    project(db_url).close()
    assert _check_series(db_url) > 50


def test_over_quota_is_found_exactly_when_reduced(demo, monkeypatch):
    """With few buckets the drawn points are fewer, but the totals and the first point over
    quota are still the reference's."""
    from reledger.projections.store import ProjectionReader
    from reledger.replay import report

    monkeypatch.setattr(report, "CHART_BUCKETS", 4)
    ps = ProjectionReader(demo["url"])
    try:
        n = ps.position()
        over = 0
        for party, is_group in _series_parties(demo["url"]):
            ref = _reference_quota(ps, party, n, is_group)
            for c in report._quota_series(ps, party, n, is_group):
                r = ref[(c["year"], c["category"])]
                assert c["over"] == r["over"]
                over += c["over"] is not None
                assert len(c["used"]) <= 4 * 4 + 4
                assert set(c["used"]) <= set(r["used"]) and c["used"][-1:] == r["used"][-1:]
        assert over, "the demo seeds a party over quota"
    finally:
        ps.close()


def test_a_reduced_series_keeps_what_is_drawn():
    """_Reduced keeps, in each time bucket, the first, lowest, highest and last point, in order:
    a subsequence with the same ends and extremes, never more than four points a bucket."""
    import random

    from reledger.replay.report import _Reduced

    rng = random.Random(7)
    for trial in range(300):
        n = rng.randint(1, 400)
        ts = sorted(rng.randint(0, 10_000) for _ in range(n))
        pts = [(t, float(rng.randint(-50, 50))) for t in ts]
        buckets = rng.choice([1, 2, 3, 10, 64, 100_000])
        red = _Reduced(ts[0], ts[-1], buckets)
        for t, v in pts:
            red.add(t, v)
        got = red.done()
        it = iter(pts)
        assert all(any(p == q for q in it) for p in got), "a subsequence, in order"
        assert got[0] == pts[0] and got[-1] == pts[-1]
        width = max(1, -(-(ts[-1] - ts[0] + 1) // buckets))
        by: dict = {}
        for p in pts:
            by.setdefault((p[0] - ts[0]) // width, []).append(p)
        kept: dict = {}
        for p in got:
            kept.setdefault((p[0] - ts[0]) // width, []).append(p)
        assert set(kept) == set(by)
        for b, ps_ in by.items():
            k = kept[b]
            assert len(k) <= 4 and k[0] == ps_[0] and k[-1] == ps_[-1]
            assert min(v for _, v in k) == min(v for _, v in ps_) and max(v for _, v in k) == max(v for _, v in ps_)
            if len(ps_) <= 4:
                assert k == ps_
