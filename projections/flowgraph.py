"""The flow graph: parties and lots as nodes, material movements as edges; tracing a lot
upstream to its mines, customs declarations or scrap sources and downstream to where it went;
output as JSON, Graphviz DOT and SVG.

One connected graph. A lot is drawn where it is held: a lot that moved from party A to party B
is two nodes, ``lot:L`` at the party that made (or first held) it and ``lot:L@B`` at B, joined by
the transfer edge; every lot node sits inside its holder's box (a Graphviz cluster labelled with
the party's name), so the parties and the lots are one picture. Every edge says what moved and
how much: the kind, the business day, kg and kg REO with thousands separators.

Year scale: a national year's trace has hundreds of lots. :func:`aggregate` folds the lots of one
holder, product and month (CST) into one node ("24 lots, 2024-03") and sums the edges between
such groups (kg, kg REO, number of movements), so that the picture fits a screen; the detail is
one level down, :func:`drill_down` (``reledger flow --party P``): the lots one party held, each
with its own edges. :func:`party_graph` is the same idea for the whole ledger: one edge per
pair of parties and kind, customs declarations and scrap sources folded per receiving party;
``party=P`` gives P's flows month by month with each origin on its own.

Layout is Graphviz's ``dot`` (a real layered layout engine: it places the edge labels so that no
two overlap), called as a subprocess; :class:`GraphvizMissing` says so clearly when it is not
installed. JSON and DOT need no Graphviz.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator

from .model import kg_text
from .queries import Point, parties
from .store import P, ProjectionStore

ORIGIN_KINDS = ("PRODUCTION", "IMPORT", "SCRAP")
TRANSFORM_KINDS = ("SEPARATION", "SMELTING")

#: Above this many edges, ``reledger flow`` draws the aggregated graph (unless ``--detail lot``).
MAX_EDGES = 60

_CST = timezone(timedelta(hours=8))


class GraphvizMissing(RuntimeError):
    """Graphviz's ``dot`` is not installed: SVG needs it (JSON and DOT do not)."""


class GraphvizFailed(RuntimeError):
    """``dot`` refused the graph or did not finish."""


def _month(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=_CST).strftime("%Y-%m")


def _day(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=_CST).strftime("%Y-%m-%d")


#: Flow rows read at a time by the party drill-down (``party_graph(party=P)``).
PAGE = 5_000

_FLOW_COLUMNS = "idx, occurred_us, kind, src_party, src_lot, dst_party, dst_lot, product, g, reo_g, ref"


def _flow_dicts(rows: list[tuple]) -> list[dict[str, Any]]:
    return [{"index": int(i), "occurred_us": int(o), "kind": k, "src_party": sp, "src_lot": sl, "dst_party": dp,
             "dst_lot": dl, "product": pr, "g": int(g), "reo_g": int(r), "ref": ref}
            for i, o, k, sp, sl, dp, dl, pr, g, r, ref in rows]


def _lot_rows(ps: ProjectionStore, point: Point, lot: str, direction: str) -> list[dict[str, Any]]:
    """The flow rows a trace of ``lot`` needs (what :func:`trace_rows` reads of the whole table):
    every row from or to each lot the trace reaches, read lot by lot through the lot indexes, so
    that a trace costs the lots it reaches, not the table."""
    n, t = point.bounds(ps)
    counts: dict[tuple, int] = {}  # a row -> how many times the table holds it (as the first read gave it)
    seen, frontier = {lot}, [lot]
    while frontier:
        cur = frontier.pop()
        got: dict[tuple, int] = {}
        for r in ps.execute(f"SELECT {_FLOW_COLUMNS} FROM {P}flow WHERE idx < ? AND occurred_us <= ? "
                            "AND (dst_lot = ? OR src_lot = ?)", (n, t, cur, cur)):
            r = tuple(r)
            got[r] = got.get(r, 0) + 1
        for r, k in got.items():
            counts.setdefault(r, k)
            kind, sl, dl = r[2], r[4], r[6]
            nxt = (sl if dl == cur else None) if direction == "up" else (dl if sl == cur else None)
            if kind in TRANSFORM_KINDS and nxt and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    rows = sorted((r for r, k in counts.items() for _ in range(k)), key=lambda r: int(r[0]))
    return _flow_dicts(rows)


def _names(ps: ProjectionStore, point: Point) -> dict[str, str]:
    return {p["party"]: p["name"] or "" for p in parties(ps, point)}


def _party(p: str) -> str:
    if p.startswith(("customs:", "scrap:", "export:")):
        return p
    return f"party:{p}"


def _lot(lot: str) -> str:
    return f"lot:{lot}"


def _node(n: str, **extra: Any) -> dict[str, Any]:
    kind, _, label = n.partition(":")
    return {"id": n, "kind": kind, "label": label, **extra}


# --- the party graph ----------------------------------------------------------------------------

def _sides(party: str | None) -> list[tuple[str, tuple]]:
    """The conditions that select the flow rows from or to ``party`` (all rows: None), one per
    index read: its rows from it (``flow_src_party``), then its rows to it from elsewhere
    (``flow_dst_party``), so that each row is read once."""
    if party is None:
        return [("", ())]
    return [(" AND src_party = ?", (party,)),
            (" AND dst_party = ? AND (src_party IS NULL OR src_party <> ?)", (party, party))]


def _paged(ps: ProjectionStore, columns: str, where: str, params: tuple) -> Iterator[tuple]:
    """The flow rows ``WHERE where``, in log order, PAGE at a time (keyset pagination on ``idx``,
    the first of ``columns``): several rows share a log index, so a full page's last index is
    read again on its own, whole, and the next page starts after it."""
    after = -1
    while True:
        rows = ps.execute(f"SELECT {columns} FROM {P}flow WHERE {where} AND idx > ? ORDER BY idx LIMIT ?",
                          params + (after, PAGE))
        if len(rows) < PAGE:
            yield from rows
            return
        after = rows[-1][0]
        yield from (r for r in rows if r[0] != after)
        yield from ps.execute(f"SELECT {columns} FROM {P}flow WHERE {where} AND idx = ?", params + (after,))


def party_graph(ps: ProjectionStore, point: Point = Point(), party: str | None = None,
                touching: str | None = None) -> dict[str, Any]:
    """All movements between parties (and origins and destinations), one edge per (source,
    destination, kind) with kg, kg REO and the number of movements. Customs declarations and
    scrap sources are folded into one node per receiving party ("customs: 12 declarations").

    ``party``: the drill-down, only the edges that touch that party, one per month (CST), with
    every customs declaration and scrap source on its own.

    ``touching``: the edges of the whole graph that touch that party only (the same edges as
    the whole graph has there; only its rows are read).

    Memory is the answer's: the database sums the rows per (source, destination, kind); the
    drill-down's months (:func:`_month`) are summed here as its rows come, a page at a time."""
    n, t = point.bounds(ps)
    where = f"idx < ? AND occurred_us <= ? AND kind NOT IN ({', '.join('?' * len(TRANSFORM_KINDS))})"
    params = (n, t, *TRANSFORM_KINDS)
    agg: dict[tuple, list] = {}
    folded: dict[str, set[str]] = {}

    def add(sp: str, dp: str, kind: str, month: str | None, g: int, reo_g: int, count: int) -> None:
        src, dst = _party(sp), _party(dp)
        if kind == "PRODUCTION":
            src = f"mine-site:{sp}"
        elif party is None and kind in ("IMPORT", "SCRAP"):
            grouped = f"{'customs' if kind == 'IMPORT' else 'scrap'}-all:{dp}"
            folded.setdefault(grouped, set()).add(src)
            src = grouped
        v = agg.setdefault((src, dst, kind, month), [0, 0, 0])
        v[0] += g
        v[1] += reo_g
        v[2] += count

    for side, side_params in _sides(touching if party is None else party):
        if party is None:  # PostgreSQL's SUM of BIGINT is NUMERIC: int() is exact
            for sp, dp, kind, g, reo_g, count in ps.execute(
                    f"SELECT src_party, dst_party, kind, SUM(g), SUM(reo_g), COUNT(*) FROM {P}flow "
                    f"WHERE {where}{side} GROUP BY src_party, dst_party, kind", params + side_params):
                add(sp, dp, kind, None, int(g), int(reo_g), int(count))
        else:
            for _i, sp, dp, kind, occurred_us, g, reo_g in _paged(
                    ps, "idx, src_party, dst_party, kind, occurred_us, g, reo_g", where + side, params + side_params):
                add(sp, dp, kind, _month(int(occurred_us)), int(g), int(reo_g), 1)
    names = _names(ps, point)
    node_ids = sorted({n for s, d, _k, _m in agg for n in (s, d)})
    nodes = []
    for n in node_ids:
        if n in folded:
            kind = n.split("-all:", 1)[0]
            members = sorted(m.partition(":")[2] for m in folded[n])
            what = "customs declaration" if kind == "customs" else "scrap source"
            label = members[0] if len(members) == 1 else f"{len(members)} {what}s"
            nodes.append({"id": n, "kind": kind, "label": label, "members": members})
        else:
            nodes.append(_node(n))
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


# --- tracing a lot ---------------------------------------------------------------------------

def trace(ps: ProjectionStore, lot: str, direction: str = "up", point: Point = Point()) -> dict[str, Any]:
    """The lot's history upstream (to mines, customs, scrap) or downstream (to exports,
    holders), lot by lot, as one connected graph (see the module's docstring)."""
    if direction not in ("up", "down"):
        raise ValueError("direction must be 'up' or 'down'")
    g = trace_rows(_lot_rows(ps, point, lot, direction), lot, direction)
    g["point"] = point.to_dict()
    g["parties"] = _names(ps, point)
    return g


def trace_rows(rows: list[dict[str, Any]], lot: str, direction: str = "up") -> dict[str, Any]:
    """:func:`trace` over flow rows (dicts of the flow table's columns, ``index`` for ``idx``),
    without a database."""
    if direction not in ("up", "down"):
        raise ValueError("direction must be 'up' or 'down'")
    by_dst: dict[str, list[dict]] = {}
    by_src: dict[str, list[dict]] = {}
    maker: dict[str, str] = {}  # lot -> the party that made it (its first node is lot:L)
    for e in rows:
        if e["dst_lot"]:
            by_dst.setdefault(e["dst_lot"], []).append(e)
            if e["kind"] in ORIGIN_KINDS + TRANSFORM_KINDS:
                maker.setdefault(e["dst_lot"], e["dst_party"])
        if e["src_lot"]:
            by_src.setdefault(e["src_lot"], []).append(e)
    for e in rows:  # a lot whose making is not in view: its first holder seen
        for lt, p in ((e["src_lot"], e["src_party"]), (e["dst_lot"], e["dst_party"])):
            if lt:
                maker.setdefault(lt, p)
    nodes: dict[str, dict[str, Any]] = {}

    def at(lt: str, holder: str | None, e: dict | None) -> str:
        """The node of lot ``lt`` as held by ``holder``."""
        holder = holder or maker.get(lt)
        nid = _lot(lt) if holder is None or holder == maker.get(lt) else f"lot:{lt}@{holder}"
        if nid not in nodes:
            nodes[nid] = {"id": nid, "kind": "lot", "label": lt, "lot": lt, "party": holder,
                          "product": None, "month": None}
        n = nodes[nid]
        if e is not None:
            n["product"] = n["product"] or e.get("product")
            if n["month"] is None or e["occurred_us"] < n["_t"]:
                n["month"], n["_t"] = _month(e["occurred_us"]), e["occurred_us"]
        return nid

    def other(nid: str, party: str | None = None) -> str:
        if nid not in nodes:
            nodes[nid] = {**_node(nid), "party": party}
        return nid

    seen, frontier = {lot}, [lot]
    out_edges: list[dict[str, Any]] = []
    ends: set[str] = set()
    done: set[tuple[int, str, str]] = set()

    def add(src: str, dst: str, e: dict, lt: str | None = None) -> None:
        key = (e["index"], src, dst)
        if key not in done:
            done.add(key)
            out_edges.append(_edge(src, dst, e, lt))

    at(lot, None, None)
    while frontier:
        cur = frontier.pop()
        if direction == "up":
            for e in by_dst.get(cur, []):
                if e["kind"] in ORIGIN_KINDS:
                    if e["kind"] == "PRODUCTION":
                        src = other(f"mine:{e['src_party']}", e["src_party"])
                    else:
                        src = other(e["src_party"])
                    ends.add(src)
                    add(src, at(cur, e["dst_party"], e), e)
                elif e["kind"] in TRANSFORM_KINDS:
                    add(at(e["src_lot"], e["src_party"], None), at(cur, e["dst_party"], e), e)
                    if e["src_lot"] not in seen:
                        seen.add(e["src_lot"])
                        frontier.append(e["src_lot"])
                elif e["kind"] == "TRANSFER":
                    add(at(cur, e["src_party"], None), at(cur, e["dst_party"], e), e, cur)
        else:
            for e in by_src.get(cur, []):
                if e["kind"] in TRANSFORM_KINDS:
                    add(at(cur, e["src_party"], None), at(e["dst_lot"], e["dst_party"], e), e)
                    if e["dst_lot"] not in seen:
                        seen.add(e["dst_lot"])
                        frontier.append(e["dst_lot"])
                elif e["kind"] == "TRANSFER":
                    add(at(cur, e["src_party"], None), at(cur, e["dst_party"], e), e, cur)
                elif e["kind"] == "EXPORT":
                    dst = other(e["dst_party"])
                    ends.add(dst)
                    add(at(cur, e["src_party"], None), dst, e)
    for n in nodes.values():
        n.pop("_t", None)
    return {"lot": lot, "direction": direction, "nodes": [nodes[k] for k in sorted(nodes)],
            "edges": out_edges, "ends": sorted(ends), "traceable": bool(ends) or direction == "down"}


def _edge(src: str, dst: str, e: dict, lot: str | None = None) -> dict[str, Any]:
    return {"src": src, "dst": dst, "kind": e["kind"], "kg": kg_text(e["g"]), "reo_kg": kg_text(e["reo_g"]),
            "index": e["index"], "lot": lot, "ref": e["ref"], "date": _day(e["occurred_us"]), "count": 1}


# --- year scale: fold lots by holder, product and month; the detail one level down ------------

def _period(month: str | None, level: str) -> str | None:
    if month is None or level == "month":
        return month
    if level == "quarter":
        return f"{month[:4]}-Q{(int(month[5:7]) - 1) // 3 + 1}"
    return month[:4]


def aggregate(graph: dict[str, Any], max_edges: int = MAX_EDGES) -> dict[str, Any]:
    """A trace folded for a screen: the lots of one holder, product and month (CST) become one
    node, edges between folded nodes are summed (kg, kg REO, movements); where that still leaves
    more than ``max_edges`` edges, by quarter, then by year. The traced lot itself stays on its
    own. A graph with at most ``max_edges`` edges comes back unchanged."""
    if len(graph["edges"]) <= max_edges or "lot" not in graph:
        return graph
    for level in ("month", "quarter", "year"):
        folded = _fold(graph, level)
        if len(folded["edges"]) <= max_edges:
            break
    return folded


def _fold(graph: dict[str, Any], level: str) -> dict[str, Any]:
    root = _lot(graph["lot"])
    group_of: dict[str, str] = {}
    groups: dict[str, dict[str, Any]] = {}
    for n in graph["nodes"]:
        if n["kind"] != "lot" or n["id"] == root:
            continue
        period = _period(n.get("month"), level)
        gid = f"lots:{n.get('party')}|{n.get('product')}|{period}"
        group_of[n["id"]] = gid
        g = groups.setdefault(gid, {"id": gid, "kind": "lots", "party": n.get("party"), "product": n.get("product"),
                                    "month": period, "members": []})
        g["members"].append(n["lot"])
    single = {gid for gid, g in groups.items() if len(g["members"]) == 1}
    nodes = [n for n in graph["nodes"] if n["id"] not in group_of or group_of[n["id"]] in single]
    for gid, g in sorted(groups.items()):
        if gid not in single:
            g["label"] = f"{len(g['members'])} lots {g['product'] or ''}, {g['month']}".replace("  ", " ")
            nodes.append(g)

    def where(nid: str) -> str:
        gid = group_of.get(nid)
        return nid if gid is None or gid in single else gid

    agg: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in graph["edges"]:
        s, d = where(e["src"]), where(e["dst"])
        k = (s, d, e["kind"])
        a = agg.get(k)
        if a is None:
            agg[k] = {"src": s, "dst": d, "kind": e["kind"], "g": _grams(e["kg"]), "reo_g": _grams(e["reo_kg"]),
                      "count": e.get("count", 1), "dates": [e.get("date")], "indexes": [e["index"]]}
        else:
            a["g"] += _grams(e["kg"])
            a["reo_g"] += _grams(e["reo_kg"])
            a["count"] += e.get("count", 1)
            a["dates"].append(e.get("date"))
            a["indexes"].append(e["index"])
    edges = []
    for a in agg.values():
        dates = sorted(x for x in a["dates"] if x)
        date = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else None
        edges.append({"src": a["src"], "dst": a["dst"], "kind": a["kind"], "kg": kg_text(a["g"]),
                      "reo_kg": kg_text(a["reo_g"]), "count": a["count"], "date": date, "indexes": a["indexes"]})
    return {**graph, "nodes": nodes, "edges": edges, "aggregated": level,
            "detail_edges": len(graph["edges"]), "detail_nodes": len(graph["nodes"])}


def drill_down(graph: dict[str, Any], party: str) -> dict[str, Any]:
    """One level down from :func:`aggregate`: the lots ``party`` held, lot by lot, with every edge
    that touches them (and the nodes at the other end)."""
    keep = {n["id"] for n in graph["nodes"] if n.get("party") == party}
    edges = [e for e in graph["edges"] if e["src"] in keep or e["dst"] in keep]
    ids = keep | {x for e in edges for x in (e["src"], e["dst"])}
    return {**graph, "nodes": [n for n in graph["nodes"] if n["id"] in ids], "edges": edges, "drill_down": party}


def _grams(kg: str) -> int:
    return int(Decimal(kg) * 1000)


# --- rendering ---------------------------------------------------------------------------------

def thousands(kg: str | Decimal) -> str:
    """``"1234567.5"`` -> ``"1,234,567.5"``."""
    return f"{Decimal(kg):,}"


_SHAPES = {"lot": "box", "lots": "box3d", "party": "box", "mine": "house", "mine-site": "house", "customs": "cds",
           "scrap": "folder", "export": "invhouse"}
_FILLS = {"lot": "#eef5ff", "lots": "#dde9fb", "party": "#fff7e6", "mine": "#e8f7e8", "mine-site": "#e8f7e8",
          "customs": "#f3e8ff", "scrap": "#f0f0f0", "export": "#ffecec"}
_EDGE_COLORS = {"TRANSFER": "#1f77b4", "PRODUCTION": "#2ca02c", "IMPORT": "#9467bd", "SCRAP": "#7f7f7f",
                "EXPORT": "#d62728", "SEPARATION": "#8c564b", "SMELTING": "#e377c2"}
_KIND_WORDS = {"mine": "mine", "mine-site": "mine site", "customs": "customs declaration", "scrap": "scrap source",
               "export": "export to", "lot": "lot", "lots": "lots", "party": "party"}
FONT = "DejaVu Sans"


def _q(text: Any) -> str:
    """A DOT quoted string: ids and labels come from entries (a customs declaration number or a
    scrap source may hold quotes or backslashes)."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _party_title(pid: str, names: dict[str, str]) -> str:
    name = names.get(pid) or ""
    return f"{name}\n{pid}" if name else pid


def _node_label(n: dict[str, Any], names: dict[str, str]) -> str:
    k = n["kind"]
    if n.get("members") and k in ("customs", "scrap"):
        return n["label"] if len(n["members"]) > 1 else f"{_KIND_WORDS[k]}\n{n['label']}"
    if k == "lots":
        return f"{len(n['members'])} lots, {n['month']}\n{n.get('product') or ''}".rstrip()
    if k == "lot":
        return f"lot {n['label']}" + (f"\n{n['product']}" if n.get("product") else "")
    if k in ("party", "mine-site"):
        title = _party_title(n["label"], names)
        return title if k == "party" else f"mine site\n{title}"
    if k == "mine":
        return f"mine\n{n['label']}"
    return f"{_KIND_WORDS.get(k, k)}\n{n['label']}"


def _edge_label(e: dict[str, Any]) -> str:
    head = e["kind"].lower()
    if e.get("count", 1) > 1:
        head += f" ×{e['count']:,}"
    when = e.get("month") or e.get("date")
    if when:
        a, sep, b = when.partition(" to ")
        if sep and a[:5] == b[:5]:  # one year: "2024-01-03 to 12-10"
            when = f"{a} to {b[5:]}"
        head += f", {when}"
    return "\n".join([head, f"{thousands(e['kg'])} kg", f"{thousands(e['reo_kg'])} kg REO"])


def to_dot(graph: dict[str, Any], title: str = "reledger flow") -> str:
    """Graphviz DOT: left to right, lots inside their holders' boxes (clusters), edges labelled
    with kind, day or month, kg and kg REO."""
    names = dict(graph.get("parties") or {})
    for n in graph["nodes"]:
        if n.get("name"):
            names.setdefault(n["label"], n["name"])
    note = ""
    if graph.get("aggregated"):
        note = (f"\n{graph['detail_edges']:,} movements folded by holder, product and {graph['aggregated']} (CST); "
                "lot by lot: reledger flow --lot L --party P")
    elif graph.get("drill_down"):
        note = f"\nlot by lot at {graph['drill_down']}"
    lines = [f"digraph {_q(title)} {{",
             f"  graph [rankdir=LR, fontname={_q(FONT)}, fontsize=13, label={_q(title + note)}, labelloc=t, "
             "labeljust=l, nodesep=0.18, ranksep=0.8];",
             f"  node [fontname={_q(FONT)}, fontsize=10, style=filled, penwidth=0.8];",
             f"  edge [fontname={_q(FONT)}, fontsize=9, arrowsize=0.7];"]
    clusters: dict[str, list[dict]] = {}
    loose: list[dict] = []
    for n in graph["nodes"]:
        # the mine (an origin) stands outside its party's box, like customs and scrap: edges with
        # labels inside a box can meet the box's own label in Graphviz's layout
        holder = n.get("party") if n["kind"] in ("lot", "lots") else None
        (clusters.setdefault(holder, []) if holder else loose).append(n)

    def node_line(n: dict[str, Any], indent: str) -> str:
        return (f"{indent}{_q(n['id'])} [label={_q(_node_label(n, names))}, shape={_SHAPES.get(n['kind'], 'box')}, "
                f"fillcolor={_q(_FILLS.get(n['kind'], '#ffffff'))}];")

    for i, (holder, members) in enumerate(sorted(clusters.items())):
        lines.append(f"  subgraph {_q(f'cluster_{i}')} {{")
        lines.append(f"    label={_q(_party_title(holder, names))}; style=\"rounded,filled\"; fillcolor=\"#fffaf0\"; "
                     "color=\"#c8b48a\"; fontsize=11;")
        for n in members:
            lines.append(node_line(n, "    "))
        lines.append("  }")
    for n in loose:
        lines.append(node_line(n, "  "))
    for e in graph["edges"]:
        color = _EDGE_COLORS.get(e["kind"], "#555555")
        lines.append(f"  {_q(e['src'])} -> {_q(e['dst'])} [label={_q(_edge_label(e))}, color={_q(color)}, "
                     f"fontcolor={_q(color)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_path() -> str:
    path = shutil.which("dot")
    if path is None:
        raise GraphvizMissing("drawing a graph as SVG needs Graphviz's dot, which is not installed "
                              "(Debian/Ubuntu: apt-get install graphviz); --format dot or json needs no Graphviz")
    return path


def render(dot_text: str, fmt: str = "svg", timeout: float = 300) -> str:
    """Lay out and draw DOT text with Graphviz's ``dot``."""
    try:
        proc = subprocess.run([dot_path(), f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise GraphvizFailed(f"Graphviz's dot did not finish in {timeout:.0f} s") from e
    except OSError as e:
        raise GraphvizMissing(f"cannot run Graphviz's dot: {e}") from e
    if proc.returncode != 0:
        raise GraphvizFailed(f"Graphviz's dot failed (exit {proc.returncode}): "
                             f"{proc.stderr.decode('utf-8', 'replace').strip()[:500]}")
    return proc.stdout.decode("utf-8")


_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->\n?", re.S)


def to_svg(graph: dict[str, Any], title: str = "reledger flow") -> str:
    """The graph laid out by Graphviz's dot, as a standalone SVG document (no XML prologue or
    DOCTYPE, so that it can also be put inline in HTML)."""
    svg = _COMMENT.sub("", _PROLOGUE.sub("", render(to_dot(graph, title), "svg"), count=1))
    if "xlink:" not in svg.replace("xmlns:xlink=", ""):  # no links are drawn: the namespace is unused
        svg = svg.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    return svg
