"""What the demo prints: a narrative, quota and stock tables, the findings against the
seeded violations, verification, and where the flow graph and reports were written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from reledger.storage.verify import verify_database
from reledger.projections import flowgraph, queries
from reledger.replay.history import grouped
from reledger.replay.report import write_report


def summarize(demo, url: str, out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """The demo's result: ``demo`` (a :class:`reledger.demo.run.Demo` that has run) gives the
    year, the seeded violations and where it seeded them."""
    ps = demo.projections
    demo.log("  bringing the projections up to date ...")
    ps.catch_up()
    demo.log(f"  verifying the whole log ({demo.store.size():,} entries) ...")
    report = verify_database(url)
    quota = queries.quota(ps, demo.year)
    stock = queries.stock(ps)
    found = queries.findings(ps)["findings"]
    seeded, matched = {}, set()
    for key, spec in demo.seeded.items():
        where = demo.seeded_where.get(key, {})
        hits = [f for f in found if f["code"] in spec["codes"] and f["party"] == where.get("party")]
        for f in hits:
            matched.add((f["index"], f["code"], f["party"]))
        seeded[key] = {"what": spec["what"], "where": where, "found": bool(hits) and {f["code"] for f in hits} ==
                       spec["codes"], "findings": hits}
    unexpected = [f for f in found if (f["index"], f["code"], f["party"]) not in matched]
    # a flow graph: an exported lot traced upstream to its mines
    export_lot = queries.last_export(ps)
    graph_files = {}
    if export_lot is not None:
        lot = export_lot
        g = flowgraph.trace(ps, lot, "up")
        g = flowgraph.aggregate(g)
        drawings = [("dot", flowgraph.to_dot(g, f"lot {lot} upstream"))]
        try:  # SVG is laid out by Graphviz's dot; without it, the DOT file alone
            drawings.append(("svg", flowgraph.to_svg(g, f"lot {lot} upstream")))
        except (flowgraph.GraphvizMissing, flowgraph.GraphvizFailed) as e:
            graph_files["svg_error"] = str(e)
        for ext, text in drawings:
            path = out / f"flow-{lot}.{ext}"
            path.write_text(text)
            graph_files[ext] = str(path)
    reports = {}
    plant = demo.seeded_where.get("over_separation_quota", {}).get("party")
    if plant:
        demo.log(f"  writing the investigation report on {plant} ...")
        path = out / f"investigation-{plant}.html"
        write_report(url, plant, str(path))
        reports[plant] = str(path)
    parties = [{"id": p.id, "name": p.name, "roles": p.roles, "province": p.province, "group": p.group}
               for p in [demo.reg] + demo.cast_list]
    return {
        "db": url, "year": demo.year, "scale": demo.scale, "seed": demo.seed, "entries": stats["entries"],
        "seconds": stats["seconds"], "parties": parties,
        "findings": [{"rule": f["rule"], "code": f["code"], "party": f["party"], "message": f["message"],
                      "index": f["index"], "evidence": f["evidence"]} for f in found],
        "seeded": seeded, "seeded_all_found": all(v["found"] for v in seeded.values()),
        "unexpected_findings": unexpected,
        "verified": report.ok, "verify": {k: v for k, v in report.to_dict().items() if k != "problems"},
        "checkpoints": len(demo.store.checkpoints()),
        "quota": quota, "stock_by_product": stock["by_product"],
        "files": {"flow_graph": graph_files, "keys": str(out / "keys"), "investigation_reports": reports},
        "export_lot": export_lot,
    }


def print_summary(con, r: dict[str, Any]) -> None:
    con.print(f"\n[bold]What happened[/bold] ({r['seconds']} s): {r['entries']} signed entries from "
              f"{len(r['parties'])} parties in {r['year']}: the regulator registered the cast and their keys, "
              "approved the annual totals and issued two quota batches; the groups sub-allocated them; mines "
              "produced and shipped concentrate; plants separated it (and imported monazite); a smelter made "
              "metal; an exporter exported; a recycler took scrap; everyone counted stock and reported monthly. "
              f"The operator signed {r['checkpoints']} checkpoints.")
    t = Table(title=f"Quota {r['year']}: enterprises (t REO)")
    for c in ("party", "category", "allocated", "used", "remaining", "% used"):
        t.add_column(c, justify="right" if c not in ("party", "category") else "left",
                     overflow="fold")
    names = {p["id"]: p["name"] for p in r["parties"]}
    for e in r["quota"]["enterprises"]:
        pct = e["percent_used"] or "-"
        style = "red" if e["over"] else None
        t.add_row(names.get(e["party"], e["party"]), e["category"], grouped(e["allocated_t"]), grouped(e["used_t"]),
                  grouped(e["remaining_t"]), pct, style=style)
    con.print(t)
    t = Table(title="Quota: groups and nation (t REO)")
    for c in ("holder", "category", "issued", "used", "remaining", "% used"):
        t.add_column(c, justify="right" if c not in ("holder", "category") else "left")
    for g in r["quota"]["groups"]:
        t.add_row(g["group"], g["category"], grouped(g["issued_t"]), grouped(g["used_t"]), grouped(g["remaining_t"]),
                  g["percent_used"] or "-")
    for n in r["quota"]["nation"]:
        t.add_row("nation", n["category"], grouped(n["issued_t"]), grouped(n["used_t"]), grouped(n["remaining_t"]),
                  n["percent_used"] or "-")
    con.print(t)
    t = Table(title="Stock at year end (by party and product)")
    for c in ("party", "product", "kg", "kg REO"):
        t.add_column(c, justify="right" if c.startswith("kg") else "left", overflow="fold")
    for s in r["stock_by_product"][:25]:
        t.add_row(names.get(s["party"], s["party"]), s["product"], grouped(s["kg"]), grouped(s["reo_kg"]))
    con.print(t)
    con.print("\n[bold]Seeded violations[/bold]")
    for key, s in r["seeded"].items():
        mark = "[green]found[/green]" if s["found"] else "[red]NOT FOUND[/red]"
        con.print(f"  {mark}  {s['what']}")
        for f in s["findings"]:
            ev = ", ".join(f"{e['chain']}:{e['seq']} ({e['hash'][:12]}…)" for e in f["evidence"][:3])
            con.print(f"         {f['code']}: {f['message']}\n         evidence: {ev}")
    if r["unexpected_findings"]:
        con.print(f"[red]{len(r['unexpected_findings'])} findings nobody seeded:[/red]")
        for f in r["unexpected_findings"][:10]:
            con.print(f"  {f['code']} {f['party']}: {f['message']}")
    v = r["verify"]
    status = "[green]verified[/green]" if r["verified"] else "[red]VERIFICATION FAILED[/red]"
    con.print(f"\n{status}: {v['entries']} entries, {v['chains']} chains, {v['keys']} keys, {v['checkpoints']} "
              f"checkpoints; root {v['root']}")
    for kind, path in r["files"]["flow_graph"].items():
        con.print(f"flow graph ({kind}): {path}")
    for party, path in r["files"]["investigation_reports"].items():
        con.print(f"investigation report on {names.get(party, party)}: {path}")
    con.print(f"key files of every party: {r['files']['keys']}")
    if r["files"].get("summary"):
        con.print(f"this summary as JSON: {r['files']['summary']}")
    con.print(f"ledger: {r['db']}   (try: reledger verify --db {r['db']}; reledger show MIIT:1 --db {r['db']})")
