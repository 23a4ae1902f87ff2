"""The flow graph: parties and lots as nodes, material movements as edges; tracing a lot
upstream to its mines, customs declarations or scrap sources and downstream to where it went;
output as JSON, Graphviz DOT and SVG (laid out here, no Graphviz needed)."""

from __future__ import annotations

from html import escape
from typing import Any

from .model import kg_text
from .queries import Point, flow_edges
from .store import ProjectionStore

ORIGIN_KINDS = ("PRODUCTION", "IMPORT", "SCRAP")
TRANSFORM_KINDS = ("SEPARATION", "SMELTING")


def _lot(lot: str) -> str:
    return f"lot:{lot}"


def _party(p: str) -> str:
    if p.startswith(("customs:", "scrap:", "export:")):
        return p
    return f"party:{p}"


def party_graph(ps: ProjectionStore, point: Point = Point()) -> dict[str, Any]:
    """All movements aggregated between parties (and origins/destinations)."""
    agg: dict[tuple[str, str, str], list[int]] = {}
    for e in flow_edges(ps, point):
        if e["kind"] in TRANSFORM_KINDS:
            continue
        src = _party(e["src_party"])
        dst = _party(e["dst_party"])
        if e["kind"] == "PRODUCTION":
            src = f"mine-site:{e['src_party']}"
        k = (src, dst, e["kind"])
        v = agg.setdefault(k, [0, 0, 0])
        v[0] += e["g"]
        v[1] += e["reo_g"]
        v[2] += 1
    nodes = {n for s, d, _ in agg for n in (s, d)}
    return {"point": point.to_dict(), "nodes": [_node(n) for n in sorted(nodes)],
            "edges": [{"src": s, "dst": d, "kind": k, "kg": kg_text(v[0]), "reo_kg": kg_text(v[1]), "count": v[2]}
                      for (s, d, k), v in sorted(agg.items())]}


def trace(ps: ProjectionStore, lot: str, direction: str = "up", point: Point = Point()) -> dict[str, Any]:
    """The lot's history upstream (to mines, customs, scrap) or downstream (to exports, holders)."""
    if direction not in ("up", "down"):
        raise ValueError("direction must be 'up' or 'down'")
    edges = flow_edges(ps, point)
    by_dst: dict[str, list[dict]] = {}
    by_src: dict[str, list[dict]] = {}
    for e in edges:
        if e["dst_lot"]:
            by_dst.setdefault(e["dst_lot"], []).append(e)
        if e["src_lot"]:
            by_src.setdefault(e["src_lot"], []).append(e)
    seen_lots, frontier = {lot}, [lot]
    out_edges: list[dict[str, Any]] = []
    origins: set[str] = set()
    while frontier:
        cur = frontier.pop()
        if direction == "up":
            for e in by_dst.get(cur, []):
                if e["kind"] in ORIGIN_KINDS:
                    src = f"mine:{e['src_party']}" if e["kind"] == "PRODUCTION" else e["src_party"]
                    origins.add(src)
                    out_edges.append(_edge(src, _lot(cur), e))
                elif e["kind"] in TRANSFORM_KINDS:
                    out_edges.append(_edge(_lot(e["src_lot"]), _lot(cur), e))
                    if e["src_lot"] not in seen_lots:
                        seen_lots.add(e["src_lot"])
                        frontier.append(e["src_lot"])
                elif e["kind"] == "TRANSFER":
                    out_edges.append(_edge(_party(e["src_party"]), _party(e["dst_party"]), e, lot=cur))
        else:
            for e in by_src.get(cur, []):
                if e["kind"] in TRANSFORM_KINDS:
                    out_edges.append(_edge(_lot(cur), _lot(e["dst_lot"]), e))
                    if e["dst_lot"] not in seen_lots:
                        seen_lots.add(e["dst_lot"])
                        frontier.append(e["dst_lot"])
                elif e["kind"] == "TRANSFER":
                    out_edges.append(_edge(_party(e["src_party"]), _party(e["dst_party"]), e, lot=cur))
                elif e["kind"] == "EXPORT":
                    origins.add(e["dst_party"])
                    out_edges.append(_edge(_lot(cur), e["dst_party"], e))
    nodes = sorted({n for e in out_edges for n in (e["src"], e["dst"])} | {_lot(lot)})
    return {"lot": lot, "direction": direction, "point": point.to_dict(), "nodes": [_node(n) for n in nodes],
            "edges": out_edges, "ends": sorted(origins), "traceable": bool(origins) or direction == "down"}


def _edge(src: str, dst: str, e: dict, lot: str | None = None) -> dict[str, Any]:
    return {"src": src, "dst": dst, "kind": e["kind"], "kg": kg_text(e["g"]), "reo_kg": kg_text(e["reo_g"]),
            "index": e["index"], "lot": lot, "ref": e["ref"]}


def _node(n: str) -> dict[str, str]:
    kind, _, label = n.partition(":")
    return {"id": n, "kind": kind, "label": label}


# --- rendering -------------------------------------------------------------------------------

_SHAPES = {"lot": "box", "party": "ellipse", "mine": "house", "mine-site": "house", "customs": "cds",
           "scrap": "folder", "export": "invhouse"}


def _q(text: Any) -> str:
    """A DOT quoted string: ids and labels come from entries (a customs declaration number or a
    scrap source may hold quotes or backslashes)."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: dict[str, Any], title: str = "reledger flow") -> str:
    lines = [f'digraph {_q(title)} {{', "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
    for n in graph["nodes"]:
        lines.append(f'  {_q(n["id"])} [label={_q(n["label"])}, shape={_SHAPES.get(n["kind"], "ellipse")}];')
    for e in graph["edges"]:
        label = f'{e["kind"]} {e["reo_kg"]} kg REO' + (f' ({e["lot"]})' if e.get("lot") else "")
        lines.append(f'  {_q(e["src"])} -> {_q(e["dst"])} [label={_q(label)}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


_COLORS = {"lot": "#eef5ff", "party": "#fff7e6", "mine": "#e8f7e8", "mine-site": "#e8f7e8", "customs": "#f3e8ff",
           "scrap": "#f0f0f0", "export": "#ffecec"}


def to_svg(graph: dict[str, Any], title: str = "reledger flow") -> str:
    """A layered left-to-right drawing (longest path from the sources)."""
    ids = [n["id"] for n in graph["nodes"]]
    preds: dict[str, set[str]] = {i: set() for i in ids}
    for e in graph["edges"]:
        if e["src"] in preds and e["dst"] in preds and e["src"] != e["dst"]:
            preds[e["dst"]].add(e["src"])
    layer: dict[str, int] = {}

    def depth(n: str, stack: frozenset = frozenset()) -> int:
        if n in layer:
            return layer[n]
        if n in stack:
            return 0
        d = 1 + max((depth(p, stack | {n}) for p in preds[n]), default=-1)
        layer[n] = d
        return d

    for i in ids:
        depth(i)
    cols: dict[int, list[str]] = {}
    for i in ids:
        cols.setdefault(layer[i], []).append(i)
    w, h, gx, gy = 170, 34, 80, 18
    pos = {}
    for c, members in cols.items():
        for r, i in enumerate(sorted(members)):
            pos[i] = (20 + c * (w + gx), 50 + r * (h + gy))
    width = 40 + (max(cols, default=0) + 1) * (w + gx)
    height = 80 + max((len(m) for m in cols.values()), default=1) * (h + gy)
    kinds = {n["id"]: n["kind"] for n in graph["nodes"]}
    labels = {n["id"]: n["label"] for n in graph["nodes"]}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
           f'<text x="20" y="24" font-size="14" font-weight="bold">{escape(title)}</text>']
    for e in graph["edges"]:
        if e["src"] not in pos or e["dst"] not in pos:
            continue
        (x1, y1), (x2, y2) = pos[e["src"]], pos[e["dst"]]
        sx, sy, tx, ty = x1 + w, y1 + h / 2, x2, y2 + h / 2
        if x2 <= x1:
            sx, tx = x1 + w / 2, x2 + w / 2
        mx = (sx + tx) / 2
        out.append(f'<path d="M {sx:.0f} {sy:.0f} C {mx:.0f} {sy:.0f}, {mx:.0f} {ty:.0f}, {tx:.0f} {ty:.0f}" '
                   'fill="none" stroke="#777" stroke-width="1.2" marker-end="url(#arrow)">'
                   f'<title>{escape(e["kind"])}: {escape(e["reo_kg"])} kg REO</title></path>')
        out.append(f'<text x="{mx:.0f}" y="{(sy + ty) / 2 - 3:.0f}" text-anchor="middle" fill="#555" font-size="9">'
                   f'{escape(e["kind"].lower())} {escape(e["reo_kg"])}</text>')
    for i, (x, y) in pos.items():
        k = kinds[i]
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{4 if k == "lot" else 14}" '
                   f'fill="{_COLORS.get(k, "#fff")}" stroke="#444"/>')
        out.append(f'<text x="{x + 8}" y="{y + 14}" font-size="9" fill="#666">{escape(k)}</text>')
        out.append(f'<text x="{x + 8}" y="{y + 27}">{escape(labels[i][:26])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
