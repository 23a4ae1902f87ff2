"""Queries over the projection tables at any point in time.

Every query takes a :class:`Point`: ``as_of`` (a log size N: what the ledger knew after its
first N entries) and ``valid_at`` (a business time: facts that occurred by then, as known at
``as_of``). Both default to "everything".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from reledger.ledger import encoding
from reledger.storage.reader import LogReader

from .model import RESOLVED, RULES, kg_text
from .store import P, ProjectionReader, ProjectionStore

FAR_FUTURE = 2**62


@dataclass(frozen=True)
class Point:
    as_of: int | None = None  # log size
    valid_at_us: int | None = None

    def bounds(self, ps: ProjectionStore) -> tuple[int, int]:
        return (ps.position() if self.as_of is None else min(self.as_of, ps.position()),
                FAR_FUTURE if self.valid_at_us is None else self.valid_at_us)

    def to_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of,
                "valid_at": None if self.valid_at_us is None else encoding.micros_to_time_text(self.valid_at_us)}


Projections = ProjectionStore | ProjectionReader  # what the queries read (the writer's store, or read-only)


def parse_point(url: str, as_of: str | None, valid_at: str | None) -> Point:
    """``as_of``: a log size (integer) or an RFC 3339 record time; ``valid_at``: a business
    time (RFC 3339, or a date YYYY-MM-DD meaning the end of that day)."""
    n = None
    if as_of:
        if as_of.isdigit():
            n = int(as_of)
        else:
            t = parse_when(as_of, "--as-of")
            with LogReader(url) as r:
                n = r.queries.index_at_time(r.cursor(), t)
    v = parse_when(valid_at, "--valid-at") if valid_at else None
    return Point(n, v)


def parse_when(text: str, what: str) -> int:
    try:
        if len(text) == 10:
            d = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
            return encoding.time_to_micros(d) - 1
        return encoding.time_to_micros(encoding.parse_time(text))
    except (ValueError, encoding.EncodingError) as e:
        raise ValueError(f"{what}: {text!r} is not a log size, a date YYYY-MM-DD or an RFC 3339 UTC time "
                         "like 2024-06-30T00:00:00Z") from e


def _kg(g: int) -> str:
    return kg_text(g)


def _t(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1_000_000)


def reflects(ps) -> dict[str, Any] | None:
    """What an answer reflects: the projections' log position, the log's size (``behind``: the
    entries not projected yet) and its latest checkpoint."""
    f = getattr(ps, "reflects", None)
    return f() if f is not None else None


def roles(ps: ProjectionStore, n: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for party, r in ps.execute(f"SELECT party, roles FROM {P}parties WHERE idx < ? ORDER BY idx", (n,)):
        out[party] = r or ""
    return out


def quota(ps: ProjectionStore, year: int, point: Point = Point()) -> dict[str, Any]:
    n, t = point.bounds(ps)
    # the totals kept at the nearest position at or before n (that counts only rows occurred by
    # t), rolled forward with the rows from there: a bounded stretch of the log, whatever n
    base = ps.quota_base(n, t)
    rows = ps.execute(f"SELECT party, category, kind, grp, SUM(g) FROM ("
                      f"SELECT party, category, kind, grp, g FROM {P}quota_sums WHERE position = ? AND year = ? "
                      f"UNION ALL SELECT party, category, kind, grp, g FROM {P}quota WHERE year = ? AND idx >= ? "
                      "AND idx < ? AND occurred_us <= ?) q GROUP BY party, category, kind, grp",
                      (base, year, year, base, n, t))
    party_roles = roles(ps, n)
    acc: dict[tuple[str, str], dict[str, int]] = {}
    group_used: dict[tuple[str, str], int] = {}
    nation: dict[str, dict[str, int]] = {}
    for party, cat, kind, grp, g in rows:
        g = int(g)
        a = acc.setdefault((party, cat), {"ISSUED": 0, "SUBALLOCATED_IN": 0, "SUBALLOCATED_OUT": 0, "REDUCED": 0,
                                          "USED": 0})
        a[kind] += g
        nat = nation.setdefault(cat, {"ISSUED": 0, "REDUCED": 0, "USED": 0})
        if kind in nat:
            nat[kind] += g
        if kind == "USED" and grp:
            group_used[(grp, cat)] = group_used.get((grp, cat), 0) + g
    # a group whose members used quota in a year it holds none of (nothing issued yet, or a
    # year after the last batch) is over quota at group level: it must be listed, not dropped
    used_only = {k for k in group_used if k not in acc}
    for k in used_only:
        acc[k] = {"ISSUED": 0, "SUBALLOCATED_IN": 0, "SUBALLOCATED_OUT": 0, "REDUCED": 0, "USED": 0}
    enterprises, groups = [], []
    for (party, cat), a in sorted(acc.items()):
        is_group = ("GROUP" in party_roles.get(party, "") or a["SUBALLOCATED_OUT"] > 0
                    or (party, cat) in used_only)
        if is_group:
            issued = a["ISSUED"] - a["REDUCED"]
            used = group_used.get((party, cat), 0)
            groups.append({"group": party, "category": cat, "issued_t": _t(a["ISSUED"]), "reduced_t": _t(a["REDUCED"]),
                           "sub_allocated_t": _t(a["SUBALLOCATED_OUT"]), "used_t": _t(used),
                           "remaining_t": _t(issued - used), "percent_used": _pct(used, issued),
                           "over": used > max(issued, 0)})  # a cut before the year's quota: no over with 0 used
        else:
            allocated = a["ISSUED"] + a["SUBALLOCATED_IN"] - a["REDUCED"]
            enterprises.append({"party": party, "category": cat, "issued_direct_t": _t(a["ISSUED"]),
                                "sub_allocated_in_t": _t(a["SUBALLOCATED_IN"]), "reduced_t": _t(a["REDUCED"]),
                                "allocated_t": _t(allocated), "used_t": _t(a["USED"]),
                                "remaining_t": _t(allocated - a["USED"]), "percent_used": _pct(a["USED"], allocated),
                                "over": a["USED"] > max(allocated, 0)})
    nat_rows = [{"category": cat, "issued_t": _t(v["ISSUED"]), "reduced_t": _t(v["REDUCED"]), "used_t": _t(v["USED"]),
                 "remaining_t": _t(v["ISSUED"] - v["REDUCED"] - v["USED"]),
                 "percent_used": _pct(v["USED"], v["ISSUED"] - v["REDUCED"])} for cat, v in sorted(nation.items())]
    return {"year": year, "point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps),
            "enterprises": enterprises, "groups": groups, "nation": nat_rows,
            "note": "separation counted on the indicator's basis; secondary feed's share recorded apart, "
                    "not counted; imports and monazite counted against separation"}


def group_members(ps: ProjectionStore, group: str, year: int, point: Point = Point()) -> set[str]:
    """The parties whose quota lines of ``year`` a group may read (DOMAIN.md "Confidential
    figures": a group sees its own lines and its members'): those it sub-allocated quota of that
    year to, and those whose output of that year counts to it (its members at the output's
    business time, as the rule engine attributed it, a late membership change included), as the
    ledger knew it at ``point``."""
    return group_membership(ps, group, point, year).get(year, set())


def group_membership(ps: ProjectionStore, group: str, point: Point = Point(),
                     year: int | None = None) -> dict[int, set[str]]:
    """:func:`group_members` of every year (or of ``year``): year -> parties."""
    n, t = point.bounds(ps)
    out: dict[int, set[str]] = {}
    sql = (f"SELECT year, party, kind, SUM(g) FROM {P}quota WHERE grp = ? AND idx < ? AND occurred_us <= ? "
           "AND kind IN ('SUBALLOCATED_IN', 'USED')" + (" AND year = ?" if year is not None else "")
           + " GROUP BY year, party, kind")
    for y, party, kind, g in ps.execute(sql, (group, n, t) + ((year,) if year is not None else ())):
        if party != group and (kind == "SUBALLOCATED_IN" or int(g) != 0):
            out.setdefault(int(y), set()).add(party)
    return out


def _pct(used: int, limit: int) -> str | None:
    if limit <= 0:
        return None if used == 0 else "inf"
    return f"{Decimal(used) * 100 / Decimal(limit):.1f}"


def stock(ps: ProjectionStore, party: str | None = None, point: Point = Point(),
          include_empty: bool = False) -> dict[str, Any]:
    n, t = point.bounds(ps)
    sql = (f"SELECT party, lot, MAX(product), SUM(g), SUM(reo_g), COUNT(*) FROM {P}stock WHERE idx < ? AND occurred_us <= ?"
           + (" AND party = ?" if party else "") + " GROUP BY party, lot ORDER BY party, lot")
    params: tuple = (n, t, party) if party else (n, t)
    lots = []
    # the first 20 moves of every lot, in one query (not one query a lot)
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
        lots.append({"party": p, "lot": lot, "product": product, "kg": _kg(g), "reo_kg": _kg(reo),
                     "negative": g < 0 or reo < 0, "moved_by": moved_by, "moves": int(moves)})
    by_product: dict[tuple[str, str], list[int]] = {}
    for row in lots:
        k = (row["party"], row["product"] or "?")
        v = by_product.setdefault(k, [0, 0])
        v[0] += int(Decimal(row["kg"]) * 1000)
        v[1] += int(Decimal(row["reo_kg"]) * 1000)
    return {"party": party, "point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps), "lots": lots,
            "by_product": [{"party": p, "product": pr, "kg": _kg(v[0]), "reo_kg": _kg(v[1])}
                           for (p, pr), v in sorted(by_product.items())]}


def findings(ps: ProjectionStore, party: str | None = None, rule: str | None = None,
             point: Point = Point()) -> dict[str, Any]:
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
    for idx, occ, r, code, p, msg, ev, prm in ps.execute(sql + " ORDER BY idx", params):
        f = {"index": int(idx), "occurred_at": encoding.micros_to_time_text(int(occ)), "rule": r,
             "rule_text": RULES.get(r, r), "code": code, "party": p, "message": msg,
             "evidence": json.loads(ev), "params": json.loads(prm)}
        (resolutions if code == RESOLVED else out).append(f)
    # a finding a later entry cured is marked resolved (by a row of its own), never deleted
    for res in resolutions:
        what = res["params"].get("resolves") or {}
        for f in out:
            if f["index"] == what.get("index") and "resolved" not in f and (
                    (what.get("code") == "*" and "fact" not in f["params"]) or (f["code"] == what.get("code")
                                                and f["params"].get("fact") == what.get("fact"))):
                f["resolved"] = {"index": res["index"], "occurred_at": res["occurred_at"], "message": res["message"],
                                 "evidence": res["evidence"]}
    return {"point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps), "findings": out}


def credit(ps: ProjectionStore, party: str | None = None, point: Point = Point()) -> dict[str, Any]:
    n, t = point.bounds(ps)
    sql = f"SELECT idx, occurred_us, party, kind, article, fine, cut_g, detail FROM {P}credit WHERE idx < ? " \
          "AND occurred_us <= ?" + (" AND party = ?" if party else "") + " ORDER BY idx"
    rows = ps.execute(sql, (n, t, party) if party else (n, t))
    return {"point": point.to_dict(), "records": [
        {"index": int(i), "occurred_at": encoding.micros_to_time_text(int(o)), "party": p, "kind": k, "article": a,
         "fine_cny": f, "next_year_cut_t": _t(int(c or 0)), "detail": d} for i, o, p, k, a, f, c, d in rows]}


def last_export(ps: ProjectionStore, point: Point = Point()) -> str | None:
    """The lot of the latest export (by log index) at ``point``; None when there is none."""
    n, t = point.bounds(ps)
    rows = ps.execute(f"SELECT src_lot FROM {P}flow WHERE kind = 'EXPORT' AND idx < ? AND occurred_us <= ? "
                      "ORDER BY idx DESC LIMIT 1", (n, t))
    return rows[0][0] if rows else None


def parties(ps: ProjectionStore, point: Point = Point()) -> list[dict[str, Any]]:
    n, _ = point.bounds(ps)
    latest: dict[str, dict[str, Any]] = {}
    for idx, party, name, r, prov, grp, vf, vu in ps.execute(
            f"SELECT idx, party, name, roles, province, grp, valid_from_us, valid_until_us FROM {P}parties "
            "WHERE idx < ? ORDER BY idx", (n,)):
        latest[party] = {"party": party, "name": name, "roles": [x for x in (r or "").split(",") if x],
                         "province": prov, "group": grp}
    return list(latest.values())
