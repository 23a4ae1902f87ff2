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
from .store import P, RESOLVES_SQL, ProjectionReader, ProjectionStore

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


#: keyset pages of the stock (lots) and findings answers: the default and largest page
PAGE_DEFAULT = 1000
PAGE_MAX = 10_000
MOVED_BY = 20  # the first moves (log indices) listed with each lot
_BATCH = 200  # lots (or log indices) a query names at once


def stock_cursor(party: str, lot: str) -> str:
    """The text of a stock page's ``next`` (and ``after``): ``PARTY:LOT`` (a party id has no ':')."""
    return f"{party}:{lot}"


def parse_stock_after(text: str) -> tuple[str, str]:
    """``after`` of a stock page (``PARTY:LOT``, the ``next`` of the page before); ValueError if
    it is not one."""
    party, sep, lot = text.partition(":")
    if not sep or not party:  # (a lot may be empty: an entry written past the command API)
        raise ValueError(f"after: {text[:80]!r} is not PARTY:LOT (the next of the page before)")
    return party, lot


def _marks(k: int) -> str:
    return ",".join("?" * k)


def stock(ps: ProjectionStore, party: str | None = None, point: Point = Point(),
          include_empty: bool = False, limit: int | None = None,
          after: tuple[str, str] | None = None) -> dict[str, Any]:
    """The lots held (kg, kg REO, not zero unless ``include_empty``) per party and lot, in
    (party, lot) order, each with its first MOVED_BY moves (log indices); ``by_product``: their
    totals per party and product.

    ``limit``: a keyset page of at most that many lots, those after ``after`` (party, lot);
    the answer then has ``next`` (:func:`stock_cursor` of its last lot, or None on the last
    page), and ``by_product`` (over the whole answer, every page) only on the first page (no
    ``after``). Without ``limit``, every lot (and no ``next``)."""
    n, t = point.bounds(ps)
    where = "idx < ? AND occurred_us <= ?" + (" AND party = ?" if party else "")
    params: list[Any] = [n, t, party] if party else [n, t]
    having = "" if include_empty else " HAVING SUM(g) <> 0 OR SUM(reo_g) <> 0"  # the lots held, in SQL
    # "+idx": not through the (party, idx) index, whose rows would need sorting by lot, but
    # through (party, lot, idx), read in order from the cursor on (SQLite's planner, without
    # statistics, would take the first)
    sql = f"SELECT party, lot, MAX(product), SUM(g), SUM(reo_g), COUNT(*) FROM {P}stock WHERE +{where}"
    page_params = list(params)
    if after is not None:  # a keyset page: the (party, lot, idx) index, from there on
        if party:
            if after[0] != party:
                raise ValueError(f"after: {stock_cursor(*after)[:80]!r} is not a lot of {party}")
            sql += " AND lot > ?"
            page_params.append(after[1])
        else:
            sql += " AND (party, lot) > (?, ?)"
            page_params += [after[0], after[1]]
    sql += f" GROUP BY party, lot{having} ORDER BY party, lot"
    if limit is not None:
        sql += " LIMIT ?"
        page_params.append(limit + 1)
    rows = ps.execute(sql, page_params)
    nxt = None
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        nxt = stock_cursor(rows[-1][0], rows[-1][1])
    first = _moved_by(ps, rows, where, params)
    lots = []
    for p, lot, product, g, reo, moves in rows:
        g, reo = int(g), int(reo)
        lots.append({"party": p, "lot": lot, "product": product, "kg": _kg(g), "reo_kg": _kg(reo),
                     "negative": g < 0 or reo < 0, "moved_by": first.get((p, lot), []), "moves": int(moves)})
    answer: dict[str, Any] = {"party": party, "point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps),
                              "lots": lots}
    if limit is not None:
        answer["next"] = nxt
    if after is None:
        answer["by_product"] = _by_product(ps, where, params, having)
    return answer


def _moved_by(ps: ProjectionStore, rows: list[tuple], where: str,
              params: list[Any]) -> dict[tuple[str, str], list[int]]:
    """The first MOVED_BY moves (log indices) of each (party, lot) of ``rows``: read through
    the lot's index, _BATCH lots a query, never for lots outside the answer."""
    wanted = {(r[0], r[1]) for r in rows}
    names = sorted({r[1] for r in rows})
    first: dict[tuple[str, str], list[int]] = {}
    for i in range(0, len(names), _BATCH):
        batch = names[i:i + _BATCH]
        for p, lot, idx in ps.execute(
                f"SELECT party, lot, idx FROM (SELECT party, lot, idx, ROW_NUMBER() OVER (PARTITION BY party, lot "
                f"ORDER BY idx) AS rn FROM {P}stock WHERE lot IN ({_marks(len(batch))}) AND {where}) m "
                f"WHERE rn <= {MOVED_BY} ORDER BY party, lot, idx", [*batch, *params]):
            if (p, lot) in wanted:
                first.setdefault((p, lot), []).append(int(idx))
    return first


def _by_product(ps: ProjectionStore, where: str, params: list[Any], having: str) -> list[dict[str, Any]]:
    """The lots' totals per party and product (a product unknown or empty: "?"), over the whole
    answer: one aggregate in the database (a row per party and product comes back)."""
    by_product: dict[tuple[str, str], list[int]] = {}
    for p, pr, g, reo in ps.execute(
            f"SELECT party, product, SUM(g), SUM(reo) FROM (SELECT party, MAX(product) AS product, SUM(g) AS g, "
            f"SUM(reo_g) AS reo FROM {P}stock WHERE {where} GROUP BY party, lot{having}) s GROUP BY party, product",
            params):
        v = by_product.setdefault((p, pr or "?"), [0, 0])
        v[0] += int(g)
        v[1] += int(reo)
    return [{"party": p, "product": pr, "kg": _kg(v[0]), "reo_kg": _kg(v[1])}
            for (p, pr), v in sorted(by_product.items())]


def findings(ps: ProjectionStore, party: str | None = None, rule: str | None = None,
             point: Point = Point(), limit: int | None = None, after: int | None = None,
             parties: list[str] | None = None) -> dict[str, Any]:
    """The findings (of ``party``, or of each of ``parties``; of ``rule``) in log order, each
    with ``resolved`` when a RESOLVED row the same question sees cures it (the first such, by
    log index; with ``parties``, a row of the finding's own party: as one question a party).

    ``limit``: a keyset page of about that many findings, those of log indices above ``after``
    (the findings of one log index are never split: a page ends with all of its last index's);
    the answer then has ``next`` (the last log index of the page, or None on the last page).
    The resolutions are read for the page's findings alone (the index on params.resolves.index)."""
    n, t = point.bounds(ps)
    where = "idx < ? AND occurred_us <= ?"
    params: list[Any] = [n, t]
    if parties is not None:
        where += f" AND party IN ({_marks(len(parties))})" if parties else " AND 1 = 0"
        params += parties
    elif party:
        where += " AND party = ?"
        params.append(party)
    if rule:
        where += " AND rule = ?"
        params.append(rule)
    cols = "idx, occurred_us, rule, code, party, message, evidence, params"
    sql = f"SELECT {cols} FROM {P}findings WHERE {where} AND code <> '{RESOLVED}'"
    # within one log index, an order of their own (the table keeps none): a page and the whole
    # answer list one entry's findings alike, on either backend
    order_by = "idx, party, rule, code, message"
    nxt = None
    if limit is None:
        rows = ps.execute(sql + f" ORDER BY {order_by}", params)
    else:
        lo = [] if after is None else [after]
        page = sql + (" AND idx > ?" if after is not None else "")
        rows = ps.execute(page + f" ORDER BY {order_by} LIMIT ?", [*params, *lo, limit + 1])
        if len(rows) > limit:
            last = int(rows[limit - 1][0])
            if int(rows[limit][0]) > last:
                rows = rows[:limit]
            else:  # the last index's findings go on past the limit: all of them, on this page
                rows = [r for r in rows if int(r[0]) < last] + ps.execute(sql + f" AND idx = ? ORDER BY {order_by}",
                                                                          [*params, last])
            if ps.execute(sql + " AND idx > ? ORDER BY idx LIMIT 1", [*params, last]):
                nxt = last
    if parties:  # the findings of one log index in the order of ``parties`` (as one question a party)
        order = {p: k for k, p in enumerate(parties)}
        rows.sort(key=lambda r: (int(r[0]), order[r[4]]))
    out = [{"index": int(idx), "occurred_at": encoding.micros_to_time_text(int(occ)), "rule": r,
            "rule_text": RULES.get(r, r), "code": code, "party": p, "message": msg,
            "evidence": json.loads(ev), "params": json.loads(prm)}
           for idx, occ, r, code, p, msg, ev, prm in rows]
    _resolve(ps, out, where, params, same_party=parties is not None)
    answer = {"point": point.to_dict(), "as_of_size": n, "reflects": reflects(ps), "findings": out}
    if limit is not None:
        answer["next"] = nxt
    return answer


def _resolve(ps: ProjectionStore, out: list[dict[str, Any]], where: str, params: list[Any], same_party: bool) -> None:
    """Mark each finding of ``out`` a later entry cured ``resolved`` (by a RESOLVED row of its
    own, never deleted): the first RESOLVED row (by log index) the same question (``where``)
    sees that names it. Only the RESOLVED rows naming an index of ``out`` are read."""
    by_index: dict[int, list[dict[str, Any]]] = {}
    for f in out:
        by_index.setdefault(f["index"], []).append(f)
    expr = RESOLVES_SQL["postgres" if ps.pg else "sqlite"]
    keys = sorted(by_index)
    resolutions = []
    for i in range(0, len(keys), _BATCH):
        batch = keys[i:i + _BATCH]
        resolutions += ps.execute(
            f"SELECT idx, occurred_us, party, message, evidence, params FROM {P}findings WHERE code = '{RESOLVED}' "
            f"AND {expr} IN ({_marks(len(batch))}) AND {where} ORDER BY idx",
            [*(str(k) if ps.pg else k for k in batch), *params])
    resolutions.sort(key=lambda r: int(r[0]))
    for idx, occ, p, msg, ev, prm in resolutions:
        what = json.loads(prm).get("resolves") or {}
        for f in by_index.get(what.get("index"), ()):  # the same test as ever, on the findings it names
            if "resolved" not in f and (not same_party or f["party"] == p) and (
                    (what.get("code") == "*" and "fact" not in f["params"]) or (f["code"] == what.get("code")
                                                and f["params"].get("fact") == what.get("fact"))):
                f["resolved"] = {"index": int(idx), "occurred_at": encoding.micros_to_time_text(int(occ)),
                                 "message": msg, "evidence": json.loads(ev)}


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
