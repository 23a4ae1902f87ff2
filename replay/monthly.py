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
from typing import Any, Callable, Iterator

from reledger.ledger import encoding
from reledger.ledger.entry import SignedEntry
from reledger.storage.reader import Record, open_ledger_readonly
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


PAGE = 2_000  # chain entries read per query: what the report holds of the chain at a time


def build_monthly_report(url: str, party: str, month: str) -> dict[str, Any]:
    """The report's bodies, read a page at a time: memory is a page of the chain, the month's own
    entries and the party's corrections, whatever the length of the chain or the log.

    The chain is read three ways, each a keyset scan of the log's (chain, seq) key bounded by the
    log's size read first: backwards from the head to the last MonthlyFlowReportSubmitted (what
    the report covers), forwards through the whole chain (corrections and the entries whose
    business time falls in the month: the log has no index by business time), and forwards over
    the covered range, streamed into :func:`report_digest`. The projections are asked for sums
    and for the rows of the month's entries, never for all of the party's rows."""
    start, end = month_bounds(month)
    with open_ledger_readonly(url) as store:
        size = store.size()
        q, cur = store.queries, store.cursor()
        head_seq, last_report = _last_report(q, cur, party, size)
        if head_seq is None:
            raise ReportError(f"party {party} has no entries in this ledger")
        # a report covers the chain's entries after the previous report entry
        first_seq, last_seq = last_report + 1, head_seq
        if first_seq > last_seq:
            raise ReportError(f"nothing to report: {party}'s last entry (seq {last_seq}) is its previous report")
        corrected, uncounted, in_month = _scan_chain(q, cur, party, size, start, end)
        covered_count = [0]
        digest = report_digest(_covered_hashes(q, cur, party, size, first_seq, last_seq, covered_count))
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
        counted = [(seq, index, e) for seq, index, e in in_month if seq not in corrected]
        moved: dict[int, list[int]] = {}
        for chunk in _chunks(sorted({index for _, index, _ in counted})):
            for idx, reo_g in ps.execute(f"SELECT idx, reo_g FROM {P}stock WHERE party = ? AND idx < ? AND idx IN ("
                                         + ",".join("?" * len(chunk)) + ")", (party, size, *chunk)):
                moved.setdefault(int(idx), []).append(int(reo_g))
        # the stock valid at the month's end, without what corrections took back
        closing = _sum(ps, f"SELECT SUM(reo_g) FROM {P}stock WHERE party = ? AND occurred_us < ? AND idx < ?",
                       (party, end, size))
        for chunk in _chunks(sorted(uncounted)):
            closing -= _sum(ps, f"SELECT SUM(reo_g) FROM {P}stock WHERE party = ? AND occurred_us < ? AND idx < ? "
                            "AND idx IN (" + ",".join("?" * len(chunk)) + ")", (party, end, size, *chunk))
        for _seq, index, e in counted:
            counts[e.type] = counts.get(e.type, 0) + 1
            rows = moved.get(index, [])
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
        used_sql = (f"FROM {P}quota WHERE party = ? AND year = ? AND kind = 'USED' AND occurred_us < ? AND idx < ?")
        used: dict[str, int] = {}
        for cat, g in ps.execute(f"SELECT category, SUM(g) {used_sql} GROUP BY category", (party, year, end, size)):
            used[cat] = used.get(cat, 0) + int(g)
        for chunk in _chunks(sorted(uncounted)):
            for cat, g in ps.execute(f"SELECT category, g {used_sql} AND idx IN (" + ",".join("?" * len(chunk)) + ")",
                                     (party, year, end, size, *chunk)):
                used[cat] -= int(g)
    finally:
        ps.close()
    body_totals = {k: kg_text(v) for k, v in totals.items() if v}
    body_totals["closing_stock_reo_kg"] = kg_text(max(closing, 0))
    flow = {"month": month, "first_seq": first_seq, "last_seq": last_seq, "totals": body_totals,
            "digest": digest}
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
            "due": encoding.micros_to_time_text(_due(month)), "covered_entries": covered_count[0]}


def _pages(fetch: Callable[[int], list[Record]], first: int) -> Iterator[Record]:
    """The records ``fetch(key)`` answers a page at a time, each page continuing from the log
    seq of the last record of the one before (keyset pagination)."""
    key = first
    while True:
        page = fetch(key)
        yield from page
        if len(page) < PAGE:
            return
        key = page[-1].seq


def _last_report(q, cur, party: str, size: int) -> tuple[int | None, int]:
    """(seq of the chain's last entry, seq of its last MonthlyFlowReportSubmitted or 0), paging
    backwards from the head: (None, 0) for a chain without entries."""
    head = None
    for r in _pages(lambda before: q.records_of_chain_before(cur, party, before, size, PAGE), 2**62):
        e = SignedEntry.parse(r.envelope).entry
        if head is None:
            head = e.seq
        if e.type == "MonthlyFlowReportSubmitted":
            return head, e.seq
    return head, 0


def _scan_chain(q, cur, party: str, size: int, start: int, end: int
                ) -> tuple[dict[int, int], set[int], list[tuple[int, int, Any]]]:
    """One pass over the party's chain in seq order: (the entries it corrected: seq -> log index,
    the log indices that count in no total, the entries whose business time is in [start, end):
    (seq, log index, entry), corrected or not)."""
    # corrections (DOMAIN.md "Corrections"): an entry the party corrected (INCORRECT_DATA or
    # DID_NOT_OCCUR, the first correction of it) no longer counts; its replacing entries are
    # entries of the chain like any other. The correction's own rows (the reversal) go with it.
    corrected: dict[int, int] = {}  # seq -> log index of the corrected entry
    uncounted: set[int] = set()     # log indices of corrected entries and of their corrections
    in_month: list[tuple[int, int, Any]] = []
    for r in _pages(lambda after: q.records_of_chain_after(cur, party, after, size, PAGE), 0):
        e = SignedEntry.parse(r.envelope).entry
        occ = time_us(e.occurred_at) or r.recorded_us
        if start <= occ < end:
            in_month.append((e.seq, r.index, e))
        b = e.body if isinstance(e.body, dict) else {}
        c = b.get("corrects") if e.type == "CorrectionRecorded" else None
        if (not isinstance(c, dict) or b.get("reason") not in ("INCORRECT_DATA", "DID_NOT_OCCUR")
                or c.get("chain") != party or c.get("seq") in corrected):
            continue
        target = _chain_entry(q, cur, party, c.get("seq"), size)
        if target is None or target.index >= r.index:  # not an earlier entry of the chain
            continue
        corrected[c["seq"]] = target.index
        uncounted |= {target.index, r.index}
    return corrected, uncounted, in_month


def _chain_entry(q, cur, party: str, seq: Any, size: int) -> Record | None:
    """The party's entry ``seq`` among the first ``size`` of the log (None for a seq that is
    none: not an integer, or no such entry)."""
    if not isinstance(seq, int) or not 1 <= seq < 2**62:
        return None
    rec = q.record_of(cur, party, int(seq))
    return rec if rec is not None and 0 <= rec.index < size else None


def _covered_hashes(q, cur, party: str, size: int, first_seq: int, last_seq: int,
                    count: list[int]) -> Iterator[bytes]:
    """The hashes of the chain's entries first_seq..last_seq, in seq order (``count[0]`` counts
    them): streamed, for :func:`report_digest`."""
    for r in _pages(lambda after: q.records_of_chain_after(cur, party, after, size, PAGE), first_seq - 1):
        s = SignedEntry.parse(r.envelope)
        if first_seq <= s.entry.seq <= last_seq:
            count[0] += 1
            yield s.hash


def _chunks(values: list[int], n: int = 500) -> Iterator[list[int]]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def _sum(ps: ProjectionReader, sql: str, params: tuple) -> int:
    rows = ps.execute(sql, params)
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _t3(tonnes: str, rounding: str) -> str:
    return encoding.decimal_text(Decimal(tonnes).quantize(Decimal("0.001"), rounding=rounding))


def _due(month: str) -> int:
    return report_due_us(month)
