"""The monthly flow report and quota execution (Decree 71 Art. 9, 10), built from the ledger.

:func:`build_monthly_report` gives the bodies an enterprise signs and submits as
``MonthlyFlowReportSubmitted`` (covering every entry of its chain since its previous report,
with their digest) and ``QuotaExecutionReported`` (used against allocated, per category, at the
end of the month). Totals are computed from the party's own entries whose business time falls
in the month (legal time, CST), with the REO the rule engine counts for each; the closing stock
is the projection's stock valid at the month's end. An entry the party corrected (a
CorrectionRecorded of its chain, INCORRECT_DATA or DID_NOT_OCCUR, in the log when the report is
built) counts in none of them; the replacing entries count as entries of their own.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from reledger.ledger import encoding
from reledger.ledger.entry import SignedEntry
from reledger.storage.reader import open_ledger_readonly
from reledger.projections import queries
from reledger.projections.model import grams, kg_text, report_digest, report_due_us, time_us
from reledger.projections.store import P, NoProjections, ProjectionReader


class ReportError(ValueError):
    pass


def month_bounds(month: str) -> tuple[int, int]:
    # strptime alone would take "2024-3" (a month the catalogue refuses in the report's body)
    if not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", month or ""):
        raise ReportError(f"--month {month!r} is not YYYY-MM")
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise ReportError(f"--month {month!r} is not YYYY-MM") from e
    end = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=timezone.utc)
    # legal time: the month runs from 00:00 China Standard Time (UTC+8), as the rule engine counts it
    offset = 8 * 3600 * 1_000_000
    return encoding.time_to_micros(start) - offset, encoding.time_to_micros(end) - offset


def build_monthly_report(url: str, party: str, month: str) -> dict[str, Any]:
    start, end = month_bounds(month)
    with open_ledger_readonly(url) as store:
        records = store.chain_records(party)
        size = store.size()
    if not records:
        raise ReportError(f"party {party} has no entries in this ledger")
    signed = [(r, SignedEntry.parse(r.envelope)) for r in records]
    last_report = 0  # a report covers the chain's entries after the previous report entry
    for r, s in signed:
        if s.entry.type == "MonthlyFlowReportSubmitted":
            last_report = s.entry.seq
    first_seq, last_seq = last_report + 1, signed[-1][1].entry.seq
    if first_seq > last_seq:
        raise ReportError(f"nothing to report: {party}'s last entry (seq {last_seq}) is its previous report")
    # corrections (DOMAIN.md "Corrections"): an entry the party corrected (INCORRECT_DATA or
    # DID_NOT_OCCUR, the first correction of it) no longer counts; its replacing entries are
    # entries of the chain like any other. The correction's own rows (the reversal) go with it.
    corrected: dict[int, int] = {}  # seq -> log index of the corrected entry
    uncounted: set[int] = set()     # log indices of corrected entries and of their corrections
    by_seq = {s.entry.seq: r for r, s in signed}
    for r, s in signed:
        b = s.entry.body if isinstance(s.entry.body, dict) else {}
        c = b.get("corrects") if s.entry.type == "CorrectionRecorded" else None
        if (not isinstance(c, dict) or b.get("reason") not in ("INCORRECT_DATA", "DID_NOT_OCCUR")
                or c.get("chain") != party or c.get("seq") in corrected or c.get("seq") not in by_seq):
            continue
        if by_seq[c["seq"]].index >= r.index:
            continue
        corrected[c["seq"]] = by_seq[c["seq"]].index
        uncounted |= {by_seq[c["seq"]].index, r.index}
    totals = {k: 0 for k in ("produced_reo_kg", "received_reo_kg", "consumed_reo_kg", "output_reo_kg",
                             "shipped_reo_kg", "exported_reo_kg", "losses_reo_kg")}
    counts: dict[str, int] = {}
    try:
        ps = ProjectionReader(url)  # read-only: the tables as they stand
    except NoProjections as e:
        raise ReportError(str(e)) from e
    try:
        if ps.position() < size:
            raise ReportError(f"the projections reflect {ps.position()} of the log's {size} entries: keep "
                              "`reledger serve` running (it follows the log) or run `reledger rebuild`")
        # the REO each entry moved, as the rule engine counts it (a line without reo_kg takes it
        # from the lot's balance; a metal's REO is kg x the table's factor): the report states
        # what the engine will compare it with (FALSE_REPORT otherwise)
        moved: dict[int, list[int]] = {}
        closing = 0  # the stock valid at the month's end, without what corrections took back
        for idx, occ, reo_g in ps.execute(f"SELECT idx, occurred_us, reo_g FROM {P}stock WHERE party = ? AND idx < ?",
                                          (party, size)):
            moved.setdefault(int(idx), []).append(int(reo_g))
            if int(occ) < end and int(idx) not in uncounted:
                closing += int(reo_g)
        for r, s in signed:
            e = s.entry
            occ = time_us(e.occurred_at) or r.recorded_us
            if not start <= occ < end or e.seq in corrected:
                continue
            counts[e.type] = counts.get(e.type, 0) + 1
            rows = moved.get(r.index, [])
            into = sum(g for g in rows if g > 0)
            out_of = -sum(g for g in rows if g < 0)
            if e.type == "MineralProductProduced":
                totals["produced_reo_kg"] += into
            elif e.type in ("TransferReceived", "ImportReceived", "SecondaryFeedReceived"):
                totals["received_reo_kg"] += into
            elif e.type in ("SeparationBatchRecorded", "MetalSmelted"):
                totals["consumed_reo_kg"] += out_of
                totals["output_reo_kg"] += into
                totals["losses_reo_kg"] += grams(e.body.get("losses_reo_kg", "0"))
            elif e.type == "TransferShipped":
                totals["shipped_reo_kg"] += out_of
            elif e.type == "ExportDeclared":
                totals["exported_reo_kg"] += out_of
        point = queries.Point(None, end - 1)
        year = int(month[:4])
        quota = queries.quota(ps, year, point)
        # quota used in the year up to the month's end (business time), as the rule engine sums
        # it for a QuotaExecutionReported of the month: corrected entries out
        used: dict[str, int] = {}
        for idx, cat, g in ps.execute(f"SELECT idx, category, g FROM {P}quota WHERE party = ? AND year = ? AND "
                                      "kind = 'USED' AND occurred_us < ? AND idx < ?", (party, year, end, size)):
            if int(idx) not in uncounted:
                used[cat] = used.get(cat, 0) + int(g)
    finally:
        ps.close()
    body_totals = {k: kg_text(v) for k, v in totals.items() if v}
    body_totals["closing_stock_reo_kg"] = kg_text(max(closing, 0))
    covered = [s.hash for r, s in signed if first_seq <= s.entry.seq <= last_seq]
    flow = {"month": month, "first_seq": first_seq, "last_seq": last_seq, "totals": body_totals,
            "digest": report_digest(covered)}
    # the catalogue states tonnes to the kg (3 decimals); the projections count grams: used is
    # rounded up and allocated down, so that the report never understates use against quota
    lines = [{"category": e["category"],
              "used_t_reo": _t3(encoding.decimal_text(Decimal(used.get(e["category"], 0)) / 1_000_000), ROUND_CEILING),
              "allocated_t_reo": _t3(e["allocated_t"], ROUND_FLOOR)}
             for e in quota["enterprises"] if e["party"] == party]
    execution = {"period": month, "lines": lines} if lines else None
    return {"party": party, "month": month, "entries_in_month": counts, "MonthlyFlowReportSubmitted": flow,
            "QuotaExecutionReported": execution,
            "corrected_entries": sorted(corrected),
            "due": encoding.micros_to_time_text(_due(month)), "covered_entries": len(covered)}


def _t3(tonnes: str, rounding: str) -> str:
    return encoding.decimal_text(Decimal(tonnes).quantize(Decimal("0.001"), rounding=rounding))


def _due(month: str) -> int:
    return report_due_us(month)
