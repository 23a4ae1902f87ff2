"""An investigation report: one self-contained HTML file about one party.

``reledger investigate --party P --out report.html`` gathers what a regulator needs when a
violation is suspected, as of a log size:

* who the party is, and the signed checkpoint every proof in the report is checked against;
* the party's timeline from a fresh replay (:func:`reledger.replay.history.replay_party`): every entry of
  its chain with its signature status, and the findings each step raised;
* quota burn-down (cumulative use against cumulative allocation, per year and category, over
  business time) and stock over time (kg REO by product), drawn as inline SVG;
* the party's flows (the party graph cut down to the edges that touch it);
* each finding with its evidence: for every cited entry its chain:seq, entry hash (recomputed
  from the stored envelope), signature status, and an RFC 9162 inclusion proof against the
  checkpoint, verified here before it is printed;
* what the regulation says about each finding (:data:`REGULATIONS`), and the party's credit
  record (ViolationFound / PenaltyImposed entries).

Nothing in the file loads anything from the network: CSS is inline, charts are inline SVG, no
scripts, no fonts. Every text that comes from the ledger is escaped.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from reledger.ledger import encoding, merkle
from reledger.ledger.checkpoint import Checkpoint
from reledger.ledger.entry import SignedEntry, leaf_bytes
from reledger.storage.reader import LedgerReader, open_ledger_readonly
from reledger.storage.verify import latest_signed_checkpoint
from reledger.projections import flowgraph
from reledger.projections.model import RULES, kg_text
from reledger.projections.queries import Point, parties
from reledger.projections.store import P, NoProjections, ProjectionReader
from reledger.replay import history as _history
from reledger.replay.history import ReplayStream, Step, signature_status, stream_party, wait_for_projections


class ReportError(ValueError):
    """Bad input for a report (unknown party, empty ledger, bad as-of)."""


# --- what the regulation says ------------------------------------------------------------
#
# From the public texts as summarized in DOMAIN.md ("The rules being enforced"). Decree 785 is
# the Rare Earth Management Regulations (State Council, in force 2024-10-01); Decree 71 the
# Interim Measures for total quantity control (MIIT+NDRC+MNR, 2025-07-28). Where DOMAIN.md gives
# no penalty for a duty, the entry says so instead of inventing one.

D785 = "Decree 785"
D71 = "Decree 71"
SOURCES = {D785: "Rare Earth Management Regulations, State Council Decree 785 (in force 2024-10-01)",
           D71: "Interim Measures for total quantity control of rare earth mining and smelting separation, "
                "MIIT+NDRC+MNR Decree 71 (2025-07-28)"}

_ART21 = (D785, "Art. 21", "over-quota production: confiscation of the product and illegal gains, fine 5–10x "
                           "the illegal gains, or CNY 1–5 m")
_ART25 = (D785, "Art. 25", "flow records missing or false: fine CNY 50,000–200,000, more if not corrected")
_ART14 = (D785, "Art. 14", "mining, separation, smelting, recycling and exporting enterprises keep flow records and "
                           "enter them into the national traceability system")
_ART13 = (D785, "Art. 13 / 23", "nobody may buy, process, sell or export illegally mined or separated product")
_ART8 = (D785, "Art. 8", "only enterprises listed by MIIT (with MNR) may mine or separate")
_ART11 = (D785, "Art. 11 / 22", "recyclers may not take rare earth mineral products as feed")
_D71_3 = (D71, "Art. 3", "the separation quota covers all mineral products: mined, imported (monazite included) or "
                         "from other minerals")
_D71_9 = (D71, "Art. 9", "producers report monthly and annual quota execution to their county department")
_D71_10 = (D71, "Art. 10", "the previous month's flow information must be in the traceability system before the 10th")

#: For every rule and every finding code: the provisions (source, article, what it says) and the
#: penalty range. Looked up by code first, then by rule.
REGULATIONS: dict[str, dict[str, Any]] = {
    # by rule
    "designation": {"provisions": [_ART8, _ART11], "penalty": "not stated in DOMAIN.md for the designation duty "
                    "itself; product so produced is illegal product under Art. 13 / 23"},
    "quota": {"provisions": [_ART21, _D71_3], "penalty": "confiscation; fine 5–10x illegal gains or CNY 1–5 m "
              "(Decree 785 Art. 21)"},
    "stock": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 if the records are missing or false "
              "(Decree 785 Art. 25)"},
    "mass_balance": {"provisions": [_ART14, _ART25, _D71_3], "penalty": "CNY 50,000–200,000 for missing or false "
                     "flow records (Decree 785 Art. 25); unrecorded feed counted against the quota may also be "
                     "over-quota production (Art. 21)"},
    "flow": {"provisions": [_ART14, _ART25, _ART13], "penalty": "CNY 50,000–200,000, more if not corrected "
             "(Decree 785 Art. 25)"},
    "reporting": {"provisions": [_D71_10, _D71_9, _ART25], "penalty": "CNY 50,000–200,000 for flow records "
                  "missing from the traceability system (Decree 785 Art. 25)"},
    "timeliness": {"provisions": [_ART14, _ART25], "penalty": "an indicator, not a violation by itself; if the "
                   "record is false: CNY 50,000–200,000 (Decree 785 Art. 25)"},
    # by finding code
    "OVER_QUOTA": {"provisions": [_ART21, _D71_3], "penalty": "confiscation of the over-quota product and illegal "
                   "gains; fine 5–10x the illegal gains, or CNY 1–5 m (Decree 785 Art. 21)"},
    "NOT_DESIGNATED": {"provisions": [_ART8, _ART13], "penalty": "not stated in DOMAIN.md for Art. 8; the output "
                       "is illegally mined or separated product (Art. 13 / 23)"},
    "RECYCLER_MINERAL_FEED": {"provisions": [_ART11], "penalty": "no range stated in DOMAIN.md, which cites "
                              "Decree 785 Art. 11 / 22 for this duty; confirm against the regulation's text"},
    "NEGATIVE_STOCK": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 Art. 25)"},
    "STOCK_COUNT_DIFFERENCE": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 "
                               "Art. 25)"},
    "MASS_IMBALANCE": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 Art. 25)"},
    "YIELD_ABOVE_100": {"provisions": [_ART14, _ART25, _ART13, _D71_3], "penalty": "CNY 50,000–200,000 for the "
                        "unrecorded feed (Decree 785 Art. 25); if the feed was illegal product, Art. 13 / 23"},
    "YIELD_BELOW_BAND": {"provisions": [_ART14, _ART25], "penalty": "possible diversion: CNY 50,000–200,000 "
                         "(Decree 785 Art. 25)"},
    "UNTRACEABLE_LOT": {"provisions": [_ART13, _ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 "
                        "Art. 25); illegal product under Art. 13 / 23 if its origin is illegal"},
    "UNREADABLE_ENTRY": {"provisions": [_ART14, _ART25], "penalty": "false or unusable records: CNY "
                         "50,000–200,000 (Decree 785 Art. 25)"},
    "RECEIPT_WITHOUT_SHIPMENT": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 "
                                 "Art. 25)"},
    "RECEIPT_MISMATCH": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 Art. 25)"},
    "SHIPMENT_NOT_RECEIVED": {"provisions": [_ART14, _ART25], "penalty": "CNY 50,000–200,000, more if not "
                              "corrected (Decree 785 Art. 25)"},
    "REPORT_MISSING": {"provisions": [_D71_10, _D71_9, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 "
                       "Art. 25)"},
    "REPORT_LATE": {"provisions": [_D71_10, _D71_9, _ART25], "penalty": "CNY 50,000–200,000 (Decree 785 Art. 25)"},
    "REPORT_DIGEST_MISMATCH": {"provisions": [_D71_10, _ART25], "penalty": "false flow records: CNY "
                               "50,000–200,000 (Decree 785 Art. 25)"},
    "BACKDATED": {"provisions": [_ART14, _ART25], "penalty": "an indicator of possible false records; if so, "
                  "CNY 50,000–200,000 (Decree 785 Art. 25)"},
    "FUTURE_DATED": {"provisions": [_ART14, _ART25], "penalty": "an indicator of possible false records; if so, "
                     "CNY 50,000–200,000 (Decree 785 Art. 25)"},
}

#: What follows any violation, whatever the rule.
CONSEQUENCES = [
    (D785, "Art. 27", "violations go on the enterprise's credit record"),
    (D71, "Art. 14", "any administrative penalty under the Measures cuts the enterprise's next-year indicator"),
]


def regulation_for(code: str, rule: str) -> dict[str, Any]:
    return REGULATIONS.get(code) or REGULATIONS.get(rule) or {"provisions": [], "penalty": "not in the table"}


# --- gathering ------------------------------------------------------------------------------

@dataclass
class Proven:
    """One evidence entry, checked."""

    chain: str
    seq: int
    index: int
    entry_hash: str
    leaf_hash: str
    type: str | None
    recorded_at: str | None
    signature: str
    hash_ok: bool
    proof: list[str] | None  # None: not yet checkpointed (or missing)
    proof_status: str
    proof_ok: bool
    facts: str = ""  # what the entry says, in words with units (entry_facts)


# --- what an entry says ------------------------------------------------------------------------

def qty(value: Any, unit: str) -> str:
    """A quantity as a person reads it: thousands separators and its unit ("1,325,500 kg REO",
    "2,501.82 t REO"). Text that is not a number is shown as it is."""
    try:
        d = Decimal(str(value))
    except (ArithmeticError, ValueError, TypeError):
        return f"{value} {unit}"
    if not d.is_finite():
        return f"{value} {unit}"
    return f"{d:,} {unit}"


def t_reo(value: float | Decimal | str) -> str:
    """t REO to three decimals (the ledger's precision for quota), thousands separated."""
    d = Decimal(str(value)).quantize(Decimal("0.001"))
    text = f"{d:,}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} t REO"


def _sum(lines: Any, key: str) -> Decimal | None:
    total, seen = Decimal(0), False
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and line.get(key) is not None:
            try:
                total += Decimal(str(line[key]))
                seen = True
            except ArithmeticError:
                pass
    return total if seen else None


def _lots_text(lines: Any, limit: int = 4) -> str:
    lots = [str(x.get("lot")) for x in (lines if isinstance(lines, list) else []) if isinstance(x, dict)]
    return ", ".join(lots[:limit]) + (f" and {len(lots) - limit} more" if len(lots) > limit else "")


def _generic_facts(body: dict[str, Any]) -> str:
    parts = []
    for k, v in body.items():
        if isinstance(v, (dict, list, bytes)) or v is None:
            continue
        if k.endswith("t_reo"):
            parts.append(f"{k.replace('_t_reo', '').replace('_', ' ')} {t_reo(v)}" if k != "t_reo" else t_reo(v))
        elif k.endswith("reo_kg"):
            parts.append(f"{k.replace('reo_kg', '').replace('_', ' ').strip()} {qty(v, 'kg REO')}".strip())
        elif k.endswith("kg"):
            parts.append(f"{k.replace('kg', '').replace('_', ' ').strip()} {qty(v, 'kg')}".strip())
        elif k.endswith("pct"):
            parts.append(f"{k.replace('_pct', '').replace('_', ' ')} {v} %")
        else:
            parts.append(f"{k.replace('_', ' ')} {v}")
    return "; ".join(parts)


def entry_facts(etype: str | None, body: Any) -> str:
    """What an entry says, in one line: the quantities with their units (t REO for quota, kg
    and kg REO for material), the lots and the counterparty."""
    if not isinstance(body, dict):
        return ""
    b = body
    try:
        if etype == "QuotaBatchIssued":
            return (f"batch {b.get('batch_no')} of {b.get('year')} to {b.get('holder')}: mining rock "
                    f"{t_reo(b.get('mining_rock_t_reo', 0))}, mining ionic {t_reo(b.get('mining_ionic_t_reo', 0))}, "
                    f"separation {t_reo(b.get('separation_t_reo', 0))}"
                    + (f" (basis {b['basis']})" if b.get("basis") else "") + f"; document {b.get('document_no')}")
        if etype == "AnnualTotalApproved":
            return (f"national totals {b.get('year')}: mining rock {t_reo(b.get('mining_rock_t_reo', 0))}, mining "
                    f"ionic {t_reo(b.get('mining_ionic_t_reo', 0))}, separation {t_reo(b.get('separation_t_reo', 0))}")
        if etype == "QuotaSubAllocated":
            batch = b.get("batch") or {}
            return (f"{t_reo(b.get('t_reo', 0))} of {b.get('category')} sub-allocated to {b.get('enterprise')} "
                    f"from batch {batch.get('batch_no')} of {batch.get('year')}")
        if etype == "QuotaReduced":
            return (f"{b.get('holder')}'s {b.get('year')} {b.get('category')} indicator cut by "
                    f"{t_reo(b.get('t_reo', 0))}" + (f": {b['reason']}" if b.get("reason") else ""))
        if etype == "MineralProductProduced":
            return (f"lot {b.get('lot')} ({b.get('product') or 'RE_CONCENTRATE'}, {b.get('ore_type')}) produced: "
                    f"{qty(b.get('dry_kg'), 'kg')} dry ({qty(b.get('wet_kg'), 'kg')} wet) at {b.get('treo_pct')} % "
                    f"TREO = {qty(b.get('reo_kg'), 'kg REO')}")
        if etype == "ImportReceived":
            return (f"lot {b.get('lot')} imported: {qty(b.get('dry_kg'), 'kg')} {b.get('form')} from "
                    f"{b.get('origin_country')} at {b.get('treo_pct')} % TREO"
                    + (f" = {qty(b['reo_kg'], 'kg REO')}" if b.get("reo_kg") else "")
                    + f"; customs declaration {b.get('customs_declaration_no')}")
        if etype == "SecondaryFeedReceived":
            return (f"lot {b.get('lot')}: {qty(b.get('kg'), 'kg')} {b.get('scrap_type')} from {b.get('source')}"
                    + (f" = {qty(b['reo_kg'], 'kg REO')}" if b.get("reo_kg") else ""))
        if etype == "SeparationBatchRecorded":
            ins, outs = b.get("inputs") or [], b.get("outputs") or []
            in_reo, out_reo, out_kg = _sum(ins, "reo_kg"), _sum(outs, "reo_kg"), _sum(outs, "kg")
            return (f"batch {b.get('batch')}: in {qty(in_reo, 'kg REO')} from {len(ins)} lot(s) ({_lots_text(ins)}); "
                    f"out {qty(out_reo, 'kg REO')} ({qty(out_kg, 'kg')}) in {len(outs)} lot(s) ({_lots_text(outs)}); "
                    f"losses {qty(b.get('losses_reo_kg'), 'kg REO')}")
        if etype == "MetalSmelted":
            ins, outs = b.get("inputs") or [], b.get("outputs") or []
            in_kg, in_reo = _sum(ins, "kg"), _sum(ins, "reo_kg")
            return (f"batch {b.get('batch')}: in {qty(in_kg, 'kg')}"
                    + (f" ({qty(in_reo, 'kg REO')})" if in_reo is not None else "")
                    + f" from {len(ins)} lot(s) ({_lots_text(ins)}); out {qty(_sum(outs, 'kg'), 'kg')} = "
                    f"{qty(_sum(outs, 'reo_kg'), 'kg REO')} in {len(outs)} lot(s) ({_lots_text(outs)})")
        if etype in ("TransferShipped", "TransferReceived"):
            lines = b.get("lines") or []
            reo = _sum(lines, "reo_kg")
            who = f"to {b.get('buyer')}" if etype == "TransferShipped" else f"from {b.get('seller')}"
            return (f"transfer {b.get('transfer_id')} {who}: {qty(_sum(lines, 'kg'), 'kg')}"
                    + (f" ({qty(reo, 'kg REO')})" if reo is not None else "")
                    + f" in {len(lines)} line(s) ({_lots_text(lines)})")
        if etype == "ExportDeclared":
            return (f"lot {b.get('lot')} ({b.get('product')}) exported to {b.get('destination_country')}: "
                    f"{qty(b.get('kg'), 'kg')}" + (f" ({qty(b['reo_kg'], 'kg REO')})" if b.get("reo_kg") else "")
                    + f"; licence {b.get('export_licence_no')}")
        if etype == "StockCounted":
            what = f"lot {b['lot']}" if b.get("lot") else f"product {b.get('product')}"
            return (f"{what} counted: {qty(b.get('counted_kg'), 'kg')}"
                    + (f" ({qty(b['counted_reo_kg'], 'kg REO')})" if b.get("counted_reo_kg") else ""))
        if etype == "MonthlyFlowReportSubmitted":
            totals = b.get("totals") or {}
            return (f"flow report for {b.get('month')}: "
                    + (", ".join(f"{k.replace('_reo_kg', '')} {qty(v, 'kg REO')}" for k, v in totals.items())
                       or "no totals") + (f"; covers seqs {b['first_seq']} to {b['last_seq']}"
                                          if b.get("first_seq") and b.get("last_seq") else ""))
        if etype == "QuotaExecutionReported":
            return (f"quota execution for {b.get('period')}: "
                    + "; ".join(f"{x.get('category')} used {t_reo(x.get('used_t_reo', 0))} of "
                                f"{t_reo(x.get('allocated_t_reo', 0))}" for x in b.get("lines") or []
                                if isinstance(x, dict)))
        if etype == "ViolationFound":
            return f"violation by {b.get('party')} ({b.get('rule')}, {b.get('article')}): {b.get('description')}"
        if etype == "PenaltyImposed":
            return _generic_facts(b)
    except (ArithmeticError, ValueError, TypeError, AttributeError):
        pass
    return _generic_facts(b)



def _checkpoint(store: LedgerReader, n: int, registry=None) -> dict[str, Any] | None:
    """The latest checkpoint covering at most the first ``n`` entries whose signed note verifies
    (a checkpoint key the log had registered, its size and root the log's), judged by the notes,
    never by a size column (storage/verify.py ``latest_signed_checkpoint``: a junk or forged row
    is passed over); None when there is none."""
    found = latest_signed_checkpoint(store, within=n, registry=registry)
    if found is None:
        return None
    size, root, note = found
    cp = Checkpoint.parse(note.split(b"\n\n", 1)[0] + b"\n")
    return {"origin": cp.origin, "size": cp.size, "root": cp.root, "note": note.decode("utf-8", "replace"),
            "signature": "signature valid (" + cp.origin + ")", "signature_ok": True,
            "root_matches": store.root(size) == cp.root == root and cp.size == size}


def _prove(store: LedgerReader, ref: dict[str, Any], cp: dict[str, Any] | None, registry) -> Proven:
    index = int(ref["index"])
    rec = store.record(index)
    if rec is None or rec.envelope is None:
        return Proven(ref["chain"], int(ref["seq"]), index, ref["hash"], "", None, None, "entry missing from the log",
                      False, None, "entry missing from the log", False)
    signed = SignedEntry.parse(rec.envelope)
    facts = entry_facts(signed.entry.type, signed.entry.body)
    entry_hash = signed.hash
    hash_ok = entry_hash == rec.entry_hash and entry_hash.hex() == ref["hash"]
    sig = signature_status(registry, signed, rec)[0]  # what replay says of it: one definition
    leaf = merkle.leaf_hash(leaf_bytes(entry_hash, index, rec.recorded_at))
    if cp is None:
        return Proven(rec.chain, rec.seq, index, entry_hash.hex(), leaf.hex(), rec.type, rec.recorded_at, sig,
                      hash_ok, None, "not yet checkpointed (no checkpoint)", False, facts)
    if index >= cp["size"]:
        return Proven(rec.chain, rec.seq, index, entry_hash.hex(), leaf.hex(), rec.type, rec.recorded_at, sig,
                      hash_ok, None, f"not yet checkpointed (log index {index} is after the checkpoint of size "
                      f"{cp['size']})", False, facts)
    proof = store.inclusion_proof(index, cp["size"])
    try:
        if leaf != rec.nodes[:32]:
            raise merkle.ProofError("the stored leaf hash is not the hash of this entry's leaf")
        merkle.verify_inclusion(leaf, index, cp["size"], proof, cp["root"])
        status, ok = f"inclusion proof verified against the checkpoint of size {cp['size']}", True
    except merkle.ProofError as e:
        status, ok = f"inclusion proof FAILED: {e}", False
    return Proven(rec.chain, rec.seq, index, entry_hash.hex(), leaf.hex(), rec.type, rec.recorded_at, sig, hash_ok,
                  [h.hex() for h in proof], status, ok, facts)


#: rows a series query reads at a time (keyset pages in business-time order)
SERIES_PAGE = 5_000
#: time buckets a chart's series is reduced to (about twice the widest chart's pixel columns): in
#: each, the first, lowest, highest and last point are kept, so the line drawn is the same to the
#: pixel and a series' memory does not grow with the party's history
CHART_BUCKETS = 2_048


def _in_time_order(ps: ProjectionReader, columns: str, table: str, where: str, params: tuple,
                   page: int | None = None) -> Iterator[tuple]:
    """Rows of ``table`` matching ``where``, in (occurred_us, idx) order (then by the other
    columns, so that the order is the same every time), read a page at a time. ``columns`` must
    begin with ``occurred_us, idx``. One entry may have several rows (the same occurred_us and
    idx): a full page's last entry is read whole on its own, and the next page starts after it
    (keyset)."""
    page = page or SERIES_PAGE
    order = f"ORDER BY {columns}"
    after: tuple | None = None
    while True:
        cond = where if after is None else f"{where} AND (occurred_us > ? OR (occurred_us = ? AND idx > ?))"
        args = params if after is None else (*params, after[0], after[0], after[1])
        rows = ps.execute(f"SELECT {columns} FROM {P}{table} WHERE {cond} {order} LIMIT {int(page)}", args)
        if len(rows) < page:
            yield from rows
            return
        last = (int(rows[-1][0]), int(rows[-1][1]))
        yield from (r for r in rows if (int(r[0]), int(r[1])) != last)
        yield from ps.execute(f"SELECT {columns} FROM {P}{table} WHERE {where} AND occurred_us = ? AND idx = ? "
                              f"{order}", (*params, *last))
        after = last


class _Reduced:
    """A series in time order reduced to at most four points a time bucket (the first, lowest,
    highest and last, in their order), exact at the ends of each bucket."""

    def __init__(self, t0: int, t1: int, buckets: int | None = None):
        buckets = buckets or CHART_BUCKETS
        self._t0, self._w = t0, max(1, -(-(t1 - t0 + 1) // buckets))
        self.points: list[tuple[int, float]] = []
        self._bucket: int | None = None
        self._kept: list[tuple[int, float]] = []

    def add(self, t: int, v: float) -> None:
        b = (t - self._t0) // self._w
        if b != self._bucket:
            self._close()
            self._bucket = b
        self._kept.append((t, v))
        if len(self._kept) > 4:  # keep first, low, high, last
            k = self._kept
            first, last = k[0], k[-1]
            mid = k[1:-1]
            lo, hi = min(mid, key=lambda p: p[1]), max(mid, key=lambda p: p[1])
            keep = [first] + sorted({lo, hi}, key=mid.index) + [last]
            self._kept = keep

    def _close(self) -> None:
        self.points += self._kept
        self._kept = []

    def done(self) -> list[tuple[int, float]]:
        self._close()
        return self.points


def _quota_series(ps: ProjectionReader, party: str, n: int, is_group: bool) -> list[dict[str, Any]]:
    """Per (year, category): allocation, use (and, for a group, sub-allocation out) as
    cumulative step series over business time, in t REO (reduced for drawing: _Reduced; the
    totals and the first point over quota are exact). Read chart by chart, a page at a time."""
    who = "(party = ? OR grp = ?)" if is_group else "party = ?"
    who_args = (party, party) if is_group else (party,)
    spans = ps.execute(f"SELECT year, category, MIN(occurred_us), MAX(occurred_us) FROM {P}quota "
                       f"WHERE idx < ? AND {who} GROUP BY year, category", (n, *who_args))
    out = []
    for year, cat, lo, hi in sorted(spans, key=lambda r: (int(r[0]), r[1])):
        year, lo, hi = int(year), int(lo), int(hi)
        c: dict[str, Any] = {"year": year, "category": cat, "alloc_events": []}
        series = {key: _Reduced(lo, hi) for key in ("alloc", "used", "out")}
        acc = {"alloc": 0, "used": 0, "out": 0}
        over = None
        group_t, group_used = None, []  # the used points of one business time, judged once its allocations are in

        def judge() -> None:
            nonlocal over
            if over is None:
                for t, g in group_used:
                    if g > acc["alloc"] + 1e-9 * 1_000_000:
                        over = (t, g / 1_000_000)
                        break
            group_used.clear()

        for occ, idx, p, kind, g, grp in _in_time_order(
                ps, "occurred_us, idx, party, kind, g, grp", "quota",
                f"idx < ? AND {who} AND year = ? AND category = ?", (n, *who_args, year, cat)):
            occ, g = int(occ), int(g)
            if occ != group_t:
                judge()
                group_t = occ
            if p == party and kind in ("ISSUED", "SUBALLOCATED_IN", "REDUCED"):
                key, g = "alloc", (-g if kind == "REDUCED" else g)
                c["alloc_events"].append((occ, kind, int(idx)))
            elif kind == "USED" and ((not is_group and p == party) or (is_group and grp == party)):
                key = "used"
            elif p == party and kind == "SUBALLOCATED_OUT":
                key = "out"
            else:
                continue
            acc[key] += g
            series[key].add(occ, acc[key] / 1_000_000)
            if key == "used":
                group_used.append((occ, acc[key]))
        judge()
        for key, s in series.items():
            c[key] = s.done()
        c["allocated_t"], c["used_t"] = acc["alloc"] / 1_000_000, acc["used"] / 1_000_000
        c["over"] = over
        out.append(c)
    return out


@dataclass
class StockSeries:
    """One product's holding over business time (kg REO after the last move of each business
    time): reduced for drawing, with the exact figures the report prints."""

    points: list[tuple[int, float]]
    now: float
    peak: float  # the highest holding
    largest: float  # the largest holding in absolute value (the charts' order)
    below_zero: tuple[int, float] | None  # the first time it went below zero


def _stock_series(ps: ProjectionReader, party: str, n: int) -> dict[str, StockSeries]:
    """kg REO by product, after each move, over business time; read a page at a time."""
    lo, hi = ps.execute(f"SELECT MIN(occurred_us), MAX(occurred_us) FROM {P}stock WHERE party = ? AND idx < ?",
                        (party, n))[0]
    if lo is None:
        return {}
    acc: dict[str, int] = {}
    last: dict[str, tuple[int, int]] = {}  # product -> (business time, kg REO x 1000) not yet committed
    reduced: dict[str, _Reduced] = {}
    stats: dict[str, list] = {}  # product -> [peak, largest, below_zero]

    def commit(product: str) -> None:
        t, v = last.pop(product)
        kg = v / 1000
        reduced.setdefault(product, _Reduced(int(lo), int(hi))).add(t, kg)
        s = stats.setdefault(product, [kg, abs(kg), None])
        s[0], s[1] = max(s[0], kg), max(s[1], abs(kg))
        if kg < 0 and s[2] is None:
            s[2] = (t, kg)

    for occ, _idx, product, reo in _in_time_order(ps, "occurred_us, idx, product, reo_g", "stock",
                                                  "party = ? AND idx < ?", (party, n)):
        product, occ = product or "?", int(occ)
        acc[product] = acc.get(product, 0) + int(reo)
        held = last.get(product)
        if held is not None and held[0] != occ:
            commit(product)
        last[product] = (occ, acc[product])
    for product in list(last):
        commit(product)
    return {p: StockSeries(reduced[p].done(), acc[p] / 1000, s[0], s[1], s[2]) for p, s in stats.items()}


def _flows(ps: ProjectionReader, party: str, point: Point, names: dict[str, str]) -> dict[str, Any]:
    g = flowgraph.party_graph(ps, point, touching=party)  # the party's rows only
    mine = {f"party:{party}", f"mine-site:{party}"}
    edges = [e for e in g["edges"] if e["src"] in mine or e["dst"] in mine]
    ids = {x for e in edges for x in (e["src"], e["dst"])}
    graph = {"point": g["point"], "nodes": [nd for nd in g["nodes"] if nd["id"] in ids], "edges": edges}
    counter: dict[tuple[str, str], list] = {}
    for e in edges:
        if e["src"] in mine and e["dst"] in mine:
            continue
        direction, other = ("out", e["dst"]) if e["src"] in mine else ("in", e["src"])
        v = counter.setdefault((other, e["kind"]), [0, 0, 0, 0])  # in kg REO, out kg REO, count in, count out
        reo = Decimal(e["reo_kg"])
        if direction == "in":
            v[0] += reo
            v[2] += e["count"]
        else:
            v[1] += reo
            v[3] += e["count"]
    labels = {nd["id"]: nd["label"] for nd in g["nodes"]}
    rows = []
    for (other, kind), v in sorted(counter.items()):
        pid = other.partition(":")[2] if other.startswith("party:") else None
        name = names.get(pid, "") if pid else ("" if labels.get(other) == other.partition(":")[2] else
                                               labels.get(other, ""))
        rows.append({"node": other, "name": name, "kind": kind,
                     "in_reo_kg": encoding.decimal_text(v[0]), "out_reo_kg": encoding.decimal_text(v[1]),
                     "in_count": v[2], "out_count": v[3]})
    return {"graph": graph, "counterparties": rows}


@dataclass
class ReplayTally:
    """What the report keeps of the party's replay once its steps have been written out: counts,
    never the steps."""

    name: str | None
    steps: int = 0
    signatures_valid: int = 0
    signatures_invalid: int = 0
    types: dict[str, int] = field(default_factory=dict)  # entry type -> steps
    credit: list[dict[str, Any]] = field(default_factory=list)
    quota_used: dict[str, str] = field(default_factory=dict)  # after the last step
    findings: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # finding code -> how many
    evidence: int = 0
    proofs_verified: int = 0
    not_yet_checkpointed: int = 0
    proofs_failed: int = 0


#: steps between two progress messages while the replay is written out
PROGRESS_EVERY = 500


def gather(url: str, party: str, *, as_of: int | None = None, progress: Callable[[str], None] | None = None,
           timeline: TextIO | None = None, cards: TextIO | None = None) -> dict[str, Any]:
    """Everything the report shows. The party's history is streamed (replay/history.py
    :func:`stream_party`, a page at a time): each step's timeline row is written to
    ``timeline`` and each finding's card (its evidence proven, its lot traced) to ``cards`` as
    the step is read (text files; in memory when not given), so that memory follows a page and
    the party's state now, never its history. ``progress(what)`` is told what it is doing (for a
    progress line; it is called from this thread and must only publish)."""
    say = progress or (lambda what: None)
    timeline = io.StringIO() if timeline is None else timeline
    cards = io.StringIO() if cards is None else cards
    with open_ledger_readonly(url) as store:
        size = store.size()
        if size == 0:
            raise ReportError("the ledger is empty")
        n = size if as_of is None else min(as_of, size)
        if n <= 0:
            raise ReportError(f"--as-of {as_of}: the log is empty at that point")
        registry = store.registry(n)
        if party not in registry.roles and not store.chain_records(party, 1, 2):
            raise ReportError(f"party {party} is not registered and has no entries in this ledger "
                              f"(as of log size {n})")
        try:
            ps = ProjectionReader(url)  # read-only: the tables as they stand
        except NoProjections as e:
            raise ReportError(str(e)) from e
        try:
            # a follower (`reledger serve`) is normally a fraction of a second behind the log: wait
            # for it a little (reads only) before refusing
            pos = wait_for_projections(ps, n, say)
            if pos < n:
                raise ReportError(f"the projections reflect {pos} of the {n} log entries this report covers and "
                                  f"did not reach them within {_history.PROJECTIONS_WAIT_S:g} s: keep `reledger serve` "
                                  "running (it follows the log) or run `reledger rebuild`"
                                  + (f", or ask --as-of {pos} (the projections' position)" if pos > 0 else ""))
            point = Point(as_of=n)
            everyone = parties(ps, point)
            names = {p["party"]: p["name"] for p in everyone}
            last = store.record(n - 1)
            cp = _checkpoint(store, n, registry)  # (the registry after n entries: keys carry their indices)
            say(f"replaying the party's history up to log size {n:,}")
            with stream_party(url, party, as_of=n) as rs:
                r = _write_steps(rs, store, ps, point, registry, cp, names, timeline, cards, say, n)
            if not r.steps and r.name is None:
                raise ReportError(f"party {party} has no history in this ledger (as of log size {n})")
            credit_proofs = {}
            for k, c in enumerate(r.credit):  # the regulator's own entries, proven like any evidence
                say(f"proving the credit record: {k:,} of {len(r.credit):,} entries")
                rec = store.record(c["index"])
                if rec is not None:
                    ref = {"chain": rec.chain, "seq": rec.seq, "hash": rec.entry_hash.hex(), "index": rec.index}
                    credit_proofs[c["index"]] = _prove(store, ref, cp, registry)
            say("reading the quota, stock and flows")
            info = next((p for p in everyone if p["party"] == party),
                        {"party": party, "name": r.name, "roles": [], "province": None, "group": None})
            is_group = "GROUP" in info["roles"]
            quota = _quota_series(ps, party, n, is_group)
            stock = _stock_series(ps, party, n)
            flows = _flows(ps, party, point, names)
        finally:
            ps.close()
    # the replay and the projections must agree on the quota used (a cross-check, shown)
    agree = True
    if not is_group:
        for c in quota:
            k = f"{c['year']} {c['category']}"
            if abs(float(Decimal(r.quota_used.get(k, "0"))) - c["used_t"]) > 1e-6:
                agree = False
    return {"party": info, "replay": r, "size": n, "log_size": size, "as_of": as_of,
            "as_of_recorded_at": last.recorded_at if last else None, "checkpoint": cp,
            "timeline": timeline, "cards": cards, "credit_proofs": credit_proofs, "quota": quota,
            "quota_agrees": agree, "stock": stock, "flows": flows, "names": names,
            "generated_at": encoding.micros_to_time_text(
                int(datetime.now(timezone.utc).replace(microsecond=0).timestamp()) * 1_000_000)}


def _write_steps(rs: ReplayStream, store: LedgerReader, ps: ProjectionReader, point: Point, registry,
                 cp: dict[str, Any] | None, names: dict[str, str], timeline: TextIO, cards: TextIO,
                 say: Callable[[str], None], n: int) -> ReplayTally:
    """The replay's steps written out as they come (timeline rows, finding cards); what is kept."""
    t = ReplayTally(rs.name)
    for s in rs:
        t.steps += 1
        if s.type:
            t.types[s.type] = t.types.get(s.type, 0) + 1
        t.quota_used = s.quota_used
        timeline.write(_timeline_row(s, names))
        for f in s.findings:
            say(f"proving the evidence: log index {s.index:,} of {n:,}, {t.findings:,} findings and "
                f"{t.evidence:,} evidence entries proven so far")
            evidence = [_prove(store, ref, cp, registry) for ref in f["evidence"]]
            t.findings += 1
            t.codes[f["code"]] = t.codes.get(f["code"], 0) + 1
            t.evidence += len(evidence)
            t.proofs_verified += sum(e.proof_ok for e in evidence)
            t.not_yet_checkpointed += sum(e.proof is None for e in evidence)
            t.proofs_failed += sum(e.proof is not None and not e.proof_ok for e in evidence)
            card = {**f, "step_index": s.index, "evidence_checked": evidence,
                    "regulation": regulation_for(f["code"], f["rule"])}
            if s.kind == "entry" and s.index == f["index"] and s.lots:
                # the first lot the raising entry names, traced to its origins
                g = flowgraph.trace(ps, s.lots[0], "up", point)
                if g["edges"]:
                    svg = graph_svg(flowgraph.aggregate(g), f"lot {s.lots[0]} upstream", f"trace{t.findings}")
                    card["trace"] = {"lot": s.lots[0], "svg": svg, "ends": g["ends"], "traceable": g["traceable"]}
            cards.write(_finding_card(t.findings, card, names, cp))
        if t.steps % PROGRESS_EVERY == 0:
            say(f"replaying the party's history: log index {s.index:,} of {n:,}, {t.steps:,} steps, "
                f"{t.evidence:,} evidence entries proven so far")
    t.signatures_valid, t.signatures_invalid = rs.signatures_valid, rs.signatures_invalid
    t.credit = rs.credit
    return t


# --- drawing ----------------------------------------------------------------------------------

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939"]


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _nice_step(span: float, target: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_num(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _year_start(year: int) -> int:
    """The control year starts at midnight China Standard Time (UTC+8)."""
    return encoding.time_to_micros(datetime(year - 1, 12, 31, 16, tzinfo=timezone.utc))


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def _time_ticks(t0: int, t1: int, max_ticks: int = 14) -> list[tuple[int, str]]:
    """Tick positions and labels: hours, days or months, at most ``max_ticks`` of them (so that
    their labels never touch)."""
    span_days = (t1 - t0) / 86_400e6
    ticks: list[tuple[int, str]] = []

    if span_days <= 3:
        hours = next((h for h in (1, 2, 3, 6, 12) if span_days * 24 / h <= max_ticks), 24)
        d = _dt(t0).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        while encoding.time_to_micros(d) <= t1:
            if d.hour % hours == 0:
                ticks.append((encoding.time_to_micros(d), d.strftime("%m-%d %H:00")))
            d += timedelta(hours=1)
        return ticks
    if span_days <= 70:
        step = max(1, int(math.ceil(span_days / max(max_ticks - 1, 1))))
        d = _dt(t0).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        while encoding.time_to_micros(d) <= t1:
            ticks.append((encoding.time_to_micros(d), d.strftime("%m-%d")))
            d += timedelta(days=step)
        return ticks
    months = span_days / 30.4
    step = next((s for s in (1, 2, 3, 6, 12, 24, 60) if months / s <= max_ticks), 120)
    d = _dt(t0)
    y, m = d.year, d.month
    while True:
        m += 1
        if m > 12:
            y, m = y + 1, 1
        if (m - 1) % step:
            continue
        u = encoding.time_to_micros(datetime(y, m, 1, tzinfo=timezone.utc))
        if u > t1:
            break
        ticks.append((u, f"{y}-{m:02d}" if step < 12 else str(y)))
    return ticks


def step_chart(series: list[dict[str, Any]], *, title: str, unit: str, width: int = 1080, height: int = 280,
               marks: list[dict[str, Any]] = (), span: tuple[int, int] | None = None, legend: bool = True) -> str:
    """An inline SVG step chart over business time. ``series``: {label, color, points [(us, y)],
    dash?, width?}; ``marks``: {t, y, label, color} points to call out; ``span``: the time range
    the axis covers at least (e.g. the control year), widened to hold every point."""
    pts = [p for s in series for p in s["points"]]
    if not pts:
        return f'<p class="muted">{esc(title)}: no data.</p>'
    t0 = min(p[0] for p in pts)
    t1 = max(p[0] for p in pts)
    if span is not None:
        t0, t1 = min(t0, span[0]), max(t1, span[1])
    if t1 - t0 < 30 * 86_400_000_000:  # a month at least: one move is a step, not a 21-hour axis
        mid = (t0 + t1) // 2
        t0, t1 = min(t0, mid - 15 * 86_400_000_000), max(t1, mid + 15 * 86_400_000_000)
    pad = (t1 - t0) * 0.02
    t0, t1 = int(t0 - pad), int(t1 + pad)
    ymax = max(max(p[1] for p in pts), 0.0)
    ymin = min(min(p[1] for p in pts), 0.0)
    ystep = _nice_step((ymax - ymin) or 1.0)
    ymax = math.ceil(ymax / ystep) * ystep or ystep
    ymin = math.floor(ymin / ystep) * ystep
    left, right, top, bottom = 70, 20, 30, 58 if legend else 34
    pw, ph = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return top + ph - (v - ymin) / (ymax - ymin) * ph

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<title>{esc(title)}</title>',
           f'<text x="{left}" y="18" class="ct">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fcfcfd" stroke="#ccc"/>']
    v = ymin
    while v <= ymax + ystep / 2:
        yy = y(v)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" class="tk">{esc(_fmt_num(v))}</text>')
        v += ystep
    for t, label in _time_ticks(t0, t1, max(2, int(pw // 62))):
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 15}" text-anchor="middle" class="tk">{esc(label)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2:.0f}" transform="rotate(-90 14 {top + ph / 2:.0f})" '
               f'text-anchor="middle" class="tk">{esc(unit)}</text>')
    for s in series:
        if not s["points"]:
            continue
        p = sorted(s["points"], key=lambda q: q[0])
        d = [f"M {x(t0):.1f} {y(0):.1f}", f"H {x(p[0][0]):.1f}"]
        for t, val in p:
            d.append(f"H {x(t):.1f} V {y(val):.1f}")
        d.append(f"H {x(t1):.1f}")
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<path d="{" ".join(d)}" fill="none" stroke="{s["color"]}" stroke-width="{s.get("width", 1.8)}"'
                   f'{dash}><title>{esc(s["label"])}</title></path>')
        for t in s.get("ticks", ()):
            out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" y2="{top + ph - 8}" '
                       f'stroke="{s["color"]}" stroke-width="2"/>')
    for m in marks:
        out.append(f'<circle cx="{x(m["t"]):.1f}" cy="{y(m["y"]):.1f}" r="5" fill="none" stroke="{m["color"]}" '
                   f'stroke-width="2"><title>{esc(m["label"])}</title></circle>')
        anchor = "end" if x(m["t"]) > left + pw * 0.7 else "start"
        dx = -8 if anchor == "end" else 8
        out.append(f'<text x="{x(m["t"]) + dx:.1f}" y="{y(m["y"]) - 8:.1f}" text-anchor="{anchor}" '
                   f'class="mk" fill="{m["color"]}">{esc(m["label"])}</text>')
    # legend below the axis labels
    lx, ly = left, top + ph + 36
    for s in series if legend else ():
        label = esc(s["label"])
        w = 30 + 7.4 * len(s["label"])
        if lx + w > width - right:
            break
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{s["color"]}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{lx + 27}" y="{ly + 4}" class="lg">{label}</text>')
        lx += int(w) + 10
    out.append("</svg>")
    return "\n".join(out)


# --- rendering ------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;font-size:13px;color:#1d2330;margin:0;
background:#f4f5f7}
main{max-width:1200px;margin:0 auto;padding:20px 28px 60px;background:#fff}
h1{font-size:22px;margin:4px 0 2px}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:4px;border-bottom:2px solid #d9dde5}
h3{font-size:14px;margin:18px 0 6px}
.sub{color:#555;margin:0 0 12px}
.muted{color:#777}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:11.5px}
.hash{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:4px 0 10px}
th,td{border:1px solid #dde1e8;padding:3px 6px;text-align:left;vertical-align:top}
td.num{text-align:right;white-space:nowrap}
th{background:#eef1f6;font-weight:600}
table.kv{width:auto}table.kv th{width:190px;background:#f5f7fa}
table.tl{font-size:11.5px}
table.tl td{padding:2px 5px;white-space:nowrap}
table.tl td.facts{white-space:normal;min-width:300px}
table.tl td.who{white-space:normal;min-width:150px}
.facts{margin:3px 0;padding:3px 6px;background:#f3f7fb;border-left:3px solid #1f77b4}
table.tl td.facts{background:none;border-left:1px solid #dde1e8}
.flow svg{max-width:100%;height:auto}
.multiples{display:grid;grid-template-columns:1fr 1fr;gap:8px}
table.tl tr.hit td{background:#fff1f0}
table.tl tr.other td{background:#f7f7f7;color:#555}
table.tl thead th{position:sticky;top:0}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#a15c00;font-weight:600}
.badge{display:inline-block;padding:0 5px;border-radius:3px;background:#b3261e;color:#fff;font-size:10.5px;
margin-right:2px;font-weight:600}
.badge.rule{background:#5f6b7a}
.card{border:1px solid #dde1e8;border-left:4px solid #b3261e;border-radius:4px;padding:10px 14px;margin:12px 0;
background:#fffdfd}
.card>h3:first-child{margin:0 0 4px}.card h3{margin:12px 0 4px}
.ev{border-top:1px dashed #dde1e8;padding:6px 0;margin-top:6px}
ol.proof{margin:2px 0 0 18px;padding:0}
ol.proof li{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:10.5px}
.scroll{overflow-x:auto;border:1px solid #eee;padding:4px}
.tlwrap{max-height:900px;overflow:auto;border:1px solid #dde1e8}
svg.chart .ct{font-size:13px;font-weight:600;fill:#1d2330}
svg.chart .tk{font-size:10.5px;fill:#555}
svg.chart .lg{font-size:11px;fill:#333}
svg.chart .mk{font-size:11px;font-weight:600}
.summary>span{display:inline-block;margin-right:18px}
@media print{.tlwrap{max-height:none;overflow:visible}main{max-width:none}}
"""


def _sig_html(sig: str) -> str:
    if not sig:
        return ""
    cls = "ok" if sig.startswith("valid") else "bad"
    return f'<span class="{cls}">{esc(sig)}</span>'


def _sig_short(sig: str) -> str:
    if sig.startswith("valid"):
        return f'<span class="ok" title="{esc(sig)}">valid {esc(sig[len("valid (key "):-1][:8])}</span>'
    return _sig_html(sig)


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _header(d: dict[str, Any]) -> str:
    p, r, cp = d["party"], d["replay"], d["checkpoint"]
    as_of = f"log size {d['size']}" + (f" of {d['log_size']}" if d["size"] != d["log_size"] else " (the whole log)")
    if d["as_of_recorded_at"]:
        as_of += f"; last entry recorded {d['as_of_recorded_at']}"
    rows = [("Party", f'<span class="mono">{esc(p["party"])}</span>'), ("Name", esc(p.get("name") or r.name)),
            ("Roles", esc(", ".join(p.get("roles") or []) or "—")), ("Province", esc(p.get("province") or "—")),
            ("Group", esc(p.get("group") or "—")), ("As of", esc(as_of))]
    if cp:
        rows += [("Checkpoint origin", esc(cp["origin"])), ("Checkpoint size", esc(cp["size"])),
                 ("Checkpoint root", f'<span class="hash">{esc(cp["root"].hex())}</span>'),
                 ("Checkpoint note", f'<span class="{"ok" if cp["signature_ok"] else "bad"}">{esc(cp["signature"])}'
                  f'</span>; root {"matches" if cp["root_matches"] else "DOES NOT MATCH"} the log\'s Merkle root '
                  f'at size {esc(cp["size"])}')]
    else:
        rows.append(("Checkpoint", '<span class="warn">no checkpoint at or before this log size whose signed note '
                                   'verifies: nothing in this report is proven against a signed tree head</span>'))
    rows.append(("Generated at", esc(d["generated_at"])))
    codes = r.codes
    summary = (f'<p class="summary"><span><b>{r.steps}</b> steps replayed</span>'
               f'<span>signatures: <span class="ok">{r.signatures_valid} valid</span>, '
               f'<span class="{"bad" if r.signatures_invalid else "ok"}">{r.signatures_invalid} invalid</span></span>'
               f'<span><b>{r.findings}</b> findings'
               + (": " + " ".join(f'<span class="badge">{esc(c)} ×{k}</span>' for c, k in sorted(codes.items()))
                  if codes else "") + "</span>"
               f'<span><b>{len(r.credit)}</b> credit records</span></p>')
    title = f"Investigation: {p.get('name') or r.name or p['party']}"
    return (f"<h1>{esc(title)}</h1><p class=\"sub\">reledger investigation report for party "
            f"<span class=\"mono\">{esc(p['party'])}</span>, from a fresh replay of the signed log</p>"
            + summary + _kv(rows))


def _timeline_row(s: Step, names: dict[str, str]) -> str:
    codes = " ".join(f'<span class="badge">{esc(f["code"])}</span>' for f in s.findings)
    if s.kind == "entry":
        cp = s.counterparty or ""
        name = names.get(cp, "")
        who = (f'{esc(name)}<br><span class="mono">{esc(cp)}</span>' if name else f'<span class="mono">{esc(cp)}'
               '</span>')
        return (f'<tr class="{"hit" if s.findings else ""}"><td>{s.index}</td><td>{esc(s.seq)}</td>'
                f'<td>{esc(s.type)}</td><td>{esc(s.occurred_at)}</td><td>{esc(s.recorded_at[:19])}Z</td>'
                f'<td class="facts">{esc(entry_facts(s.type, s.body))}</td><td class="who">{who}</td>'
                f'<td>{_sig_short(s.signature)}<br><span class="hash" title="entry hash">'
                f'{esc((s.entry_hash or "")[:12])}…</span></td><td>{codes}</td></tr>\n')
    return (f'<tr class="other hit"><td>{s.index}</td><td></td><td colspan="3"><i>raised by another '
            f'party\'s entry (recorded {esc(s.recorded_at[:19])}Z)</i></td><td class="facts">'
            + esc("; ".join(f["message"] for f in s.findings)) + '</td><td></td><td></td>'
            f'<td>{codes}</td></tr>\n')


def _write_timeline(d: dict[str, Any], out: TextIO) -> None:
    r: ReplayTally = d["replay"]
    head = ("<tr><th>#</th><th>seq</th><th>type</th><th>occurred</th><th>recorded</th><th>what it says</th>"
            "<th>counterparty</th><th>signature</th><th>findings</th></tr>")
    counts = ", ".join(f"{esc(t)} {k}" for t, k in sorted(r.types.items(), key=lambda x: -x[1]))
    out.write("<h2>Timeline</h2>"
              f'<p class="muted">{r.steps} steps in log order: the party\'s own entries (signature checked with '
              "the key valid when each was recorded) and findings about the party raised by other entries' arrival. "
              f"Rows with findings are shaded. Entry types: {counts}.</p>"
              f'<div class="tlwrap"><table class="tl"><thead>{head}</thead><tbody>\n')
    _copy(d["timeline"], out)
    out.write("</tbody></table></div>")


def _quota(d: dict[str, Any]) -> str:
    parts = ["<h2>Quota burn-down</h2>",
             '<p class="muted">Cumulative use (t REO, separation on the indicator\'s basis, secondary feed not '
             "counted) against the cumulative allocation (issued batches and sub-allocations, less reductions), "
             "over business time. Ticks on the axis mark each issue or sub-allocation.</p>"]
    if not d["quota"]:
        parts.append('<p class="muted">No quota allocated to or used by this party.</p>')
        return "".join(parts)
    is_group = "GROUP" in (d["party"].get("roles") or [])
    rows = []
    for c in d["quota"]:
        series = [{"label": "allocated (cumulative)", "color": "#2ca02c", "points": c["alloc"], "width": 2.2,
                   "ticks": [t for t, _k, _i in c["alloc_events"]]},
                  {"label": "members' use" if is_group else "used (cumulative)", "color": "#1f77b4",
                   "points": c["used"], "width": 2.2}]
        if c["out"]:
            series.append({"label": "sub-allocated to members", "color": "#ff7f0e", "points": c["out"], "dash": "5 3"})
        marks = []
        if c["over"]:
            marks.append({"t": c["over"][0], "y": c["over"][1], "color": "#b3261e",
                          "label": f"over quota from {encoding.micros_to_time_text(c['over'][0])[:10]}"})
        year_span = (_year_start(c["year"]), _year_start(c["year"] + 1))
        parts.append(step_chart(series, title=f"{c['year']} {c['category']}", unit="t REO", marks=marks,
                                span=year_span))
        pct = f"{c['used_t'] / c['allocated_t'] * 100:.1f} %" if c["allocated_t"] else "—"
        over = c["used_t"] > c["allocated_t"] + 1e-9
        rows.append(f"<tr><td>{c['year']}</td><td>{esc(c['category'])}</td><td class=num>{t_reo(c['allocated_t'])}"
                    f"</td><td class=num>{t_reo(c['used_t'])}</td><td class=num>{esc(pct)}</td>"
                    f"<td>{'<span class=bad>OVER</span>' if over else '<span class=ok>within</span>'}</td></tr>")
    parts.append("<table><tr><th>year</th><th>category</th><th>allocated</th><th>used</th><th>% used</th>"
                 f"<th>status</th></tr>{''.join(rows)}</table>")
    if not d["quota_agrees"]:
        parts.append('<p class="bad">The replay and the projection tables disagree on the quota used: rebuild the '
                     "projections (reledger rebuild) and compare.</p>")
    else:
        parts.append('<p class="muted">Cross-check: the fresh replay and the projection tables agree on the quota '
                     "used.</p>")
    return "".join(parts)


STOCK_PANELS = 8


def _stock(d: dict[str, Any]) -> str:
    """One small chart per product (the largest by peak holding), each with its own axis, so that
    a product of 2,000 kg REO is not a flat line under one of 2,000,000."""
    parts = ["<h2>Stock over time</h2>"]
    st: dict[str, StockSeries] = d["stock"]
    if not st:
        parts.append('<p class="muted">The party never held stock.</p>')
        return "".join(parts)
    ranked = sorted(st.items(), key=lambda kv: (-kv[1].largest, kv[0]))
    shown = ranked[:STOCK_PANELS]
    parts.append('<p class="muted">kg REO held, by product, over business time (after each move): one chart per '
                 "product, each on its own scale"
                 + (f"; the {len(shown)} largest of {len(ranked)} products (all are in the table)"
                    if len(ranked) > len(shown) else "") + ".</p>")
    span = (min(s.points[0][0] for s in st.values()), max(s.points[-1][0] for s in st.values()))
    panels = []
    for i, (prod, s) in enumerate(shown):
        marks = []
        if s.below_zero:
            marks.append({"t": s.below_zero[0], "y": s.below_zero[1], "color": "#b3261e", "label": "below zero"})
        series = [{"label": prod, "color": PALETTE[i % len(PALETTE)], "points": s.points, "width": 1.6}]
        panels.append(step_chart(series, title=prod, unit="kg REO", width=540, height=200, marks=marks, span=span,
                                 legend=False))
    parts.append('<div class="multiples">' + "".join(f"<div>{p}</div>" for p in panels) + "</div>")
    rows = "".join(f"<tr><td>{esc(prod)}</td><td class=num>{esc(qty(kg_text(int(round(s.now * 1000))), 'kg REO'))}"
                   f"</td><td class=num>{esc(qty(kg_text(int(round(s.peak * 1000))), 'kg REO'))}"
                   "</td></tr>" for prod, s in ranked)
    parts.append(f"<table><tr><th>product</th><th>held now</th><th>peak</th></tr>{rows}</table>")
    return "".join(parts)


def graph_svg(graph: dict[str, Any], title: str, prefix: str) -> str:
    """A flow graph laid out by Graphviz (projections.flowgraph), ready to put inline: its ids
    prefixed so that several graphs can share the page, scaled to the page's width. Without
    Graphviz, a sentence that says so (the tables beside it hold the same figures)."""
    try:
        svg = flowgraph.to_svg(graph, title)
    except (flowgraph.GraphvizMissing, flowgraph.GraphvizFailed) as e:
        return f'<p class="warn">Graph not drawn: {esc(e)}</p>'
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    return f'<div class="flow">{svg}</div>'


def _flows_html(d: dict[str, Any]) -> str:
    fl = d["flows"]
    parts = ["<h2>Flows</h2>"]
    if not fl["graph"]["edges"]:
        parts.append('<p class="muted">No material flows touch this party.</p>')
        return "".join(parts)
    p = d["party"]
    parts.append('<p class="muted">Movements between this party and its counterparties, origins and destinations '
                 "over the whole ledger, one arrow per counterparty and kind: the number of moves, kg and kg REO "
                 "(laid out by Graphviz). Month by month: <span class=mono>reledger flow --party "
                 f"{esc(p['party'])}</span>.</p>")
    parts.append(graph_svg(fl["graph"], f"flows of {p.get('name') or p['party']}", "flows"))
    rows = "".join(f"<tr><td>{esc(x['name'])}<br><span class=mono>{esc(x['node'])}</span></td><td>{esc(x['kind'])}</td>"
                   f"<td class=num>{esc(qty(x['in_reo_kg'], 'kg REO'))} ({x['in_count']:,})</td>"
                   f"<td class=num>{esc(qty(x['out_reo_kg'], 'kg REO'))} ({x['out_count']:,})</td>"
                   "</tr>" for x in fl["counterparties"])
    parts.append("<table><tr><th>counterparty / origin / destination</th><th>kind</th>"
                 f"<th>in (moves)</th><th>out (moves)</th></tr>{rows}</table>")
    return "".join(parts)


def _trace_html(f: dict[str, Any]) -> str:
    t = f.get("trace")
    if not t:
        return ""
    ends = ", ".join(t["ends"]) or "none"
    return (f'<h3>Lot {esc(t["lot"])} traced upstream</h3><div class="muted">origins reached: {esc(ends)}'
            + ("" if t["traceable"] else ' <span class="bad">(does not trace back to a mine, customs declaration or '
               "scrap source)</span>") + f'</div>{t["svg"]}')


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _finding_card(i: int, f: dict[str, Any], names: dict[str, str], cp: dict[str, Any] | None) -> str:
    """The ``i``-th finding with its evidence, proven (``f["evidence_checked"]``)."""
    reg = f["regulation"]
    ev = []
    for e in f["evidence_checked"]:
        proof = ""
        if e.proof is not None:
            proof = ('<ol class="proof">' + "".join(f"<li>{esc(h)}</li>" for h in e.proof) + "</ol>"
                     if e.proof else '<div class="muted">(empty proof: the tree has one leaf)</div>')
        status_cls = "ok" if e.proof_ok else ("warn" if e.proof is None and "not yet" in e.proof_status else "bad")
        ev.append(f'<div class="ev"><b class="mono">{esc(e.chain)}:{esc(e.seq)}</b> '
                  f'{esc(names.get(e.chain, ""))} <span class="muted">log index {e.index}, {esc(e.type)}, '
                  f'recorded {esc(e.recorded_at)}</span>'
                  f'<div class="facts">{esc(e.facts) or "<i>(no body)</i>"}</div>'
                  f'entry hash <span class="hash">{esc(e.entry_hash)}</span> '
                  f'<span class="{"ok" if e.hash_ok else "bad"}">'
                  f'{"(matches the stored envelope)" if e.hash_ok else "(DOES NOT match the stored envelope)"}'
                  f'</span><br>leaf hash <span class="hash">{esc(e.leaf_hash)}</span> '
                  f'<span class="muted">(SHA-256 of 0x00 and the leaf: entry hash, log index, record time)</span>'
                  f'<br>signature {_sig_html(e.signature)}<br>'
                  f'<span class="{status_cls}">{esc(e.proof_status)}</span>{proof}</div>')
    provisions = "".join(f"<tr><td>{esc(src)}</td><td>{esc(art)}</td><td>{esc(text)}</td></tr>"
                         for src, art, text in reg["provisions"])
    params = ", ".join(f"{esc(k)}={esc(v)}" for k, v in (f.get("params") or {}).items())
    return (f'<div class="card"><h3>{i}. <span class="badge">{esc(f["code"])}</span> '
            f'<span class="badge rule">{esc(f["rule"])}</span> {esc(f["message"])}</h3>'
            f'<div class="muted">raised at log index {f["index"]}, business time {esc(f["occurred_at"])}'
            + (f"; {params}" if params else "") + f'<br>rule: {esc(RULES.get(f["rule"], f["rule"]))}</div>'
            f'<h3>What the regulation says</h3><table><tr><th>source</th><th>article</th><th>provision</th></tr>'
            f'{provisions}</table><div><b>Penalty range:</b> {esc(reg["penalty"])}</div>'
            f'<h3>Evidence ({_entries(len(ev))})</h3>{"".join(ev)}{_trace_html(f)}</div>\n')


def _write_findings(d: dict[str, Any], out: TextIO) -> None:
    out.write("<h2>Findings and evidence</h2>")
    cp = d["checkpoint"]
    if not d["replay"].findings:
        out.write('<p class="ok">No findings about this party.</p>')
        return
    out.write('<p class="muted">Each cited entry: its position, its entry hash recomputed from the stored signed '
              "envelope, its signature checked with the key valid when it was recorded, and its Merkle inclusion "
              + (f"proof (sibling hashes, leaf to root) against the checkpoint {esc(cp['origin'])} of size "
                 f"{cp['size']}, root <span class=hash>{esc(cp['root'].hex())}</span>, verified before printing."
                 if cp else "proof: none, there is no checkpoint.") + "</p>\n")
    _copy(d["cards"], out)
    out.write('<p class="muted">Whatever the rule: ' + "; ".join(
        f"{esc(src)} {esc(art)}: {esc(text)}" for src, art, text in CONSEQUENCES) + ". Sources: "
        + "; ".join(f"{esc(k)}: {esc(v)}" for k, v in SOURCES.items()) + ".</p>")


def _credit_html(d: dict[str, Any]) -> str:
    r: ReplayTally = d["replay"]
    parts = ["<h2>Credit record</h2>",
             '<p class="muted">ViolationFound and PenaltyImposed entries about this party (Decree 785 Art. 27; a '
             "penalty under Decree 71 cuts the next-year indicator, Art. 14).</p>"]
    if not r.credit:
        parts.append('<p class="muted">No violation or penalty recorded against this party.</p>')
        return "".join(parts)
    rows = []
    for c in r.credit:
        e = d.get("credit_proofs", {}).get(c["index"])
        entry = ""
        if e is not None:
            cls = "ok" if e.proof_ok else ("warn" if "not yet" in e.proof_status else "bad")
            entry = (f'<span class="mono">{esc(e.chain)}:{esc(e.seq)}</span> {_sig_short(e.signature)}<br>'
                     f'<span class="hash">{esc(e.entry_hash)}</span><br>'
                     f'<span class="{cls}">{esc(e.proof_status)}</span>'
                     + (f'<details><summary>inclusion proof ({len(e.proof)} hashes)</summary><ol class="proof">'
                        + "".join(f"<li>{esc(h)}</li>" for h in e.proof) + "</ol></details>" if e.proof else ""))
        rows.append(f"<tr><td>{c['index']}</td><td>{esc(c['kind'])}</td><td>{esc(c['article'])}</td>"
                    f"<td>{esc(c['fine_cny'] or '')}</td><td>{esc(c['next_year_cut_t'])}</td>"
                    f"<td>{esc(c['detail'])}</td><td>{entry}</td></tr>")
    parts.append("<table><tr><th>log index</th><th>kind</th><th>article</th><th>fine CNY</th>"
                 f"<th>next-year cut t REO</th><th>detail</th><th>entry</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _copy(spool: TextIO, out: TextIO) -> None:
    """A spooled section (written while the replay streamed) into the report, a chunk at a time."""
    spool.seek(0)
    shutil.copyfileobj(spool, out, 1 << 20)


def write_html(d: dict[str, Any], out: TextIO) -> None:
    """The report, written to ``out`` a section at a time (the spooled sections copied in)."""
    p = d["party"]
    out.write("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
              f"<title>{esc('Investigation ' + (p.get('name') or '') + ' ' + p['party'])}</title>"
              '<meta name="viewport" content="width=device-width, initial-scale=1">'
              f"<style>{CSS}</style></head><body><main>")
    out.write(_header(d))
    _write_findings(d, out)
    for section in (_quota, _stock, _flows_html, _credit_html):
        out.write(section(d))
    _write_timeline(d, out)
    out.write(f'<p class="muted">Generated by reledger investigate at {esc(d["generated_at"])}. Self-contained: no '
              "scripts, fonts or images are loaded from anywhere.</p></main></body></html>\n")


def render_html(d: dict[str, Any]) -> str:
    buf = io.StringIO()
    write_html(d, buf)
    return buf.getvalue()


def write_report(url: str, party: str, out: str | Path, *, as_of: int | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Gather, render and write the report; returns a summary. The timeline and the findings are
    spooled to temporary files while the replay streams, then copied into the report, which is
    written beside ``out`` and moved into place once whole (a failure leaves no partial file)."""
    out = Path(out)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as timeline, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as cards:
        d = gather(url, party, as_of=as_of, progress=progress, timeline=timeline, cards=cards)
        if progress is not None:
            progress("drawing and writing the report")
        part = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with open(part, "w", encoding="utf-8") as f:
                write_html(d, f)
            os.replace(part, out)
        finally:
            if part.exists():
                part.unlink()
    r: ReplayTally = d["replay"]
    cp = d["checkpoint"]
    return {"file": str(out), "party": party, "as_of_size": d["size"], "steps": r.steps,
            "findings": r.findings, "codes": sorted(r.codes), "evidence": r.evidence,
            "proofs_verified": r.proofs_verified, "not_yet_checkpointed": r.not_yet_checkpointed,
            "proofs_failed": r.proofs_failed,
            "checkpoint": {"origin": cp["origin"], "size": cp["size"], "root": cp["root"].hex()} if cp else None,
            "bytes": out.stat().st_size}
