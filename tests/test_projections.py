"""Projections against a naive reference model, on SQLite and PostgreSQL.

A hypothesis state machine appends random sequences of valid commands (mines producing lots,
shipments to plants and others, receipts, separation batches, imports, scrap, smelting,
exports, quota batches and sub-allocations, stock counts, monthly reports, the clock moving
on) through the CommandAPI on a real LedgerStore. After every step the projections (quota
usage, stock per party and lot, findings) must equal :class:`Reference`, a direct and naive
computation from the entries written here without projections.model; answers as of an
earlier log size (and valid at a business time) must equal the reference over that prefix;
at the end the incremental tables must equal a rebuild and a fresh projection of a copy of
the log cut at a point.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import date, datetime, timezone
from decimal import Decimal

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import reledger.projections.store as pstore
from reledger.commands.catalogue import PRODUCTS
from reledger.ledger.entry import SignedEntry
from projection_helpers import (CAST, DAY, HOUR, Databases, World, copy_cut, dt_us, dump, kg, ts, us)
from reledger.projections import queries
from reledger.projections.check import verify_projections
from reledger.projections.hooks import MirrorFindings
from reledger.projections.queries import Point
from reledger.projections.store import ProjectionStore

# --- the reference model ---------------------------------------------------------------------

MINERAL = {"RE_CONCENTRATE", "BASTNAESITE_CONCENTRATE", "MONAZITE_CONCENTRATE", "IONIC_CONCENTRATE",
           "MIXED_CARBONATE", "MIXED_CHLORIDE", "MIXED_OXIDE"}
NOT_REGISTRY = {"PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked",
                "GroupMembershipChanged"}
MATERIAL = {"MineralProductProduced", "ImportReceived", "SecondaryFeedReceived", "SeparationBatchRecorded",
            "MetalSmelted", "TransferShipped", "TransferReceived", "ExportDeclared", "StockCounted"}


def g_of(text) -> int:
    return int(Decimal(text) * 1000)


def t_of(text) -> int:
    return int(Decimal(text) * 1_000_000)


CST = 8 * HOUR  # legal time: China Standard Time


def year(micros: int) -> int:
    return datetime.fromtimestamp((micros + CST) / 1e6, tz=timezone.utc).year


def month(micros: int) -> str:
    return datetime.fromtimestamp((micros + CST) / 1e6, tz=timezone.utc).strftime("%Y-%m")


def next_month(m: str) -> str:
    y, mo = int(m[:4]), int(m[5:7]) + 1
    return f"{y + 1}-01" if mo == 13 else f"{y}-{mo:02d}"


def due_of(m: str) -> int:
    """24:00 CST on the 10th of the next month."""
    n = next_month(m)
    return dt_us(int(n[:4]), int(n[5:7]), 10) + DAY - CST


#: the State Council's 2024 and 2025 holidays and make-up working days, written out day by day
_HOLIDAYS = {date(2024, 1, 1), date(2024, 6, 10), date(2025, 1, 1)} | {
    date.fromordinal(d) for a, b in ((date(2024, 2, 10), date(2024, 2, 17)), (date(2024, 4, 4), date(2024, 4, 6)),
                                     (date(2024, 5, 1), date(2024, 5, 5)), (date(2024, 9, 15), date(2024, 9, 17)),
                                     (date(2024, 10, 1), date(2024, 10, 7)), (date(2025, 1, 28), date(2025, 2, 4)),
                                     (date(2025, 4, 4), date(2025, 4, 6)), (date(2025, 5, 1), date(2025, 5, 5)),
                                     (date(2025, 5, 31), date(2025, 6, 2)), (date(2025, 10, 1), date(2025, 10, 8)))
    for d in range(a.toordinal(), b.toordinal() + 1)}
_MAKEUP = {date(2024, 2, 4), date(2024, 2, 18), date(2024, 4, 7), date(2024, 4, 28), date(2024, 5, 11),
           date(2024, 9, 14), date(2024, 9, 29), date(2024, 10, 12), date(2025, 1, 26), date(2025, 2, 8),
           date(2025, 4, 27), date(2025, 9, 28), date(2025, 10, 11)}


def working_days_end(start: int, days: int) -> int:
    d = datetime.fromtimestamp((start + CST) / 1e6, tz=timezone.utc).date()
    n = 0
    while n < days:
        d = date.fromordinal(d.toordinal() + 1)
        if d in _MAKEUP or (d.weekday() < 5 and d not in _HOLIDAYS):
            n += 1
    return dt_us(d.year, d.month, d.day) + DAY - CST


def first_bad(events, bad):
    """The first business time at which the running sums of ``events`` (t, a, b) are bad."""
    for t in sorted({e[0] for e in events}):
        a = sum(e[1] for e in events if e[0] <= t)
        b = sum(e[2] for e in events if e[0] <= t)
        if bad(a, b):
            return t, a, b
    return None


class Reference:
    """What the projections must say, computed the plain way from (index, record time, entry),
    as DOMAIN.md "The rules, precisely" states the rules: quota and stock on the business-time
    axis (brute force over every business time), legal time in CST, the reporting window."""

    def __init__(self, log: list[tuple[int, int, SignedEntry]]):
        self.moves: list[tuple] = []     # (idx, occ, party, lot, g, reo)
        self.uses: list[tuple] = []      # (idx, occ, year, party, cat, g, grp)
        self.limits: list[tuple] = []    # (idx, occ, year, holder, cat, kind, g)
        self.findings: list[tuple] = []  # (idx, occ, code, party, extra)
        self.balance: dict[tuple, list[int]] = {}
        self.lots: dict[str, dict] = {}
        self.parties: dict[str, dict] = {}
        self.qevents: dict[tuple, list] = {}
        self.sevents: dict[tuple, list] = {}
        self.open: set[tuple] = set()
        self.illegal_seen: set[tuple] = set()
        batches: dict[tuple, tuple] = {}
        suballoc: dict[tuple, int] = {}
        ships: dict[tuple, dict] = {}
        reports: dict[tuple, int] = {}
        active: dict[tuple, int] = {}
        hashes: dict[str, list[bytes]] = {}
        recs = [r for _, r, _ in log]
        for i, rec, s in log:
            e, b = s.entry, s.entry.body
            occ = us(e.occurred_at)
            hashes.setdefault(e.chain, []).append(s.hash)
            f = self._finding_at(i, occ)
            t = e.type
            if t == "PartyRegistered":
                self.parties[b["party"]] = {"roles": set(b["roles"]), "since": us(b["valid_from"]),
                                            "groups": [(us(b["valid_from"]), b["group"], i)] if b.get("group") else []}
            elif t == "GroupMembershipChanged":
                since = us(b["effective_from"])
                if b["action"] == "JOINED":
                    self.parties[b["party"]]["groups"].append((since, b["group"], i))
                elif self.group_at(b["party"], since) == b["group"]:   # LEFT: only the group named
                    self.parties[b["party"]]["groups"].append((since, None, i))
            elif t == "QuotaBatchIssued":
                amounts = {}
                for cat, name in (("MINING_ROCK", "mining_rock_t_reo"), ("MINING_IONIC", "mining_ionic_t_reo"),
                                  ("SEPARATION", "separation_t_reo")):
                    g = t_of(b[name])
                    amounts[cat] = g
                    if g:
                        self.limits.append((i, occ, b["year"], b["holder"], cat, "ISSUED", g))
                        self.qevent(i, occ, ("enterprise", b["year"], b["holder"], cat), 0, g, b["holder"])
                        if "GROUP" in self.parties[b["holder"]]["roles"]:
                            self.qevent(i, occ, ("group", b["year"], b["holder"], cat), 0, g, b["holder"])
                        self.qevent(i, occ, ("nation", b["year"], "", cat), 0, g, b["holder"])
                batches[(b["year"], b["batch_no"], b["holder"])] = (occ, amounts)
            elif t == "QuotaSubAllocated":
                y, no, g = b["batch"]["year"], b["batch"]["batch_no"], t_of(b["t_reo"])
                ent, cat = b["enterprise"], b["category"]
                self.limits.append((i, occ, y, ent, cat, "IN", g))
                self.limits.append((i, occ, y, e.chain, cat, "OUT", g))
                self.qevent(i, occ, ("enterprise", y, ent, cat), 0, g, ent)
                k = (y, no, e.chain, cat)
                suballoc[k] = suballoc.get(k, 0) + g
                boc, amounts = batches[(y, no, e.chain)]
                if suballoc[k] > amounts.get(cat, 0):
                    f("SUBALLOCATION_ABOVE_BATCH", e.chain)
                if occ >= working_days_end(boc, 10):
                    f("SUBALLOCATION_LATE", e.chain)
                if self.group_at(ent, occ) != e.chain:
                    f("SUBALLOCATION_TO_NON_MEMBER", e.chain)
            elif t == "MineralProductProduced":
                illegal = None
                if not self.designated(e.chain, "MINE", occ):
                    f("NOT_DESIGNATED", e.chain)
                    illegal = (i, e.chain)
                product = b.get("product", "RE_CONCENTRATE")
                ionic = b["ore_type"] == "IONIC"
                self.new_lot(b["lot"], product, b["ore_type"], ionic=1 if ionic else 0,
                             conc=0 if ionic or "MIXED" in product else 1, illegal=illegal)
                self.move(i, occ, e.chain, b["lot"], g_of(b["dry_kg"]), g_of(b["reo_kg"]))
                self.use(i, occ, e.chain, "MINING_" + b["ore_type"], g_of(b["reo_kg"]))
            elif t == "ImportReceived":
                product = b.get("product") or ("MONAZITE_CONCENTRATE" if b["form"] == "MONAZITE" else None)
                ore = b.get("ore_type") or ("MONAZITE" if b["form"] == "MONAZITE" else "ROCK")
                self.new_lot(b["lot"], product, None, ionic=1 if ore == "IONIC" else 0,
                             conc=0 if ore == "IONIC" or "MIXED" in (product or "") else 1)
                self.move(i, occ, e.chain, b["lot"], g_of(b["dry_kg"]), g_of(b["reo_kg"]))
            elif t == "SecondaryFeedReceived":
                self.new_lot(b["lot"], b["scrap_type"], None)
                self.move(i, occ, e.chain, b["lot"], g_of(b["kg"]), g_of(b["reo_kg"]))
            elif t in ("SeparationBatchRecorded", "MetalSmelted"):
                if t == "SeparationBatchRecorded" and not self.designated(e.chain, "SEPARATION", occ):
                    f("NOT_DESIGNATED", e.chain)
                reo_in = 0
                ionic = conc = Decimal(0)
                illegal = None
                for line in b["inputs"]:
                    info = self.lots.get(line["lot"])
                    self.illegal_party(i, occ, e.chain, line["lot"])
                    self.take(i, occ, e.chain, line["lot"], g_of(line["kg"]), g_of(line["reo_kg"]))
                    r = g_of(line["reo_kg"])
                    reo_in += r
                    if info:
                        ionic += info["ionic"] * r
                        conc += info["conc"] * r
                        if info["illegal"] and illegal is None:
                            illegal = info["illegal"]
                if t == "SeparationBatchRecorded" and not self.designated(e.chain, "SEPARATION", occ):
                    illegal = (i, e.chain)
                reo_out = 0
                for out in b["outputs"]:
                    self.new_lot(out["lot"], out["product"], None, ionic=ionic / reo_in if reo_in else 0,
                                 illegal=illegal)
                    self.move(i, occ, e.chain, out["lot"], g_of(out["kg"]), g_of(out["reo_kg"]))
                    reo_out += g_of(out["reo_kg"])
                if t == "SeparationBatchRecorded":
                    self.use(i, occ, e.chain, "SEPARATION", reo_out)
                    losses = g_of(b["losses_reo_kg"])
                    if reo_in:
                        if abs(reo_in - reo_out - losses) > Decimal("0.005") * reo_in:
                            f("MASS_IMBALANCE", e.chain)
                        # by ore type: ionic concentrate 94 %, rock concentrate 92 % x 96 %, mixed RE 96 %
                        rest = max(Decimal(reo_in) - ionic - conc, Decimal(0))
                        band = (ionic * 94 + conc * Decimal("88.32") + rest * 96) / reo_in
                        pct = Decimal(reo_out) * 100 / reo_in
                        if pct > 100:
                            f("YIELD_ABOVE_100", e.chain)
                        elif pct < band:
                            f("YIELD_BELOW_BAND", e.chain)
            elif t == "TransferShipped":
                lines = []
                for line in b["lines"]:
                    self.illegal_party(i, occ, e.chain, line["lot"])
                    self.take(i, occ, e.chain, line["lot"], g_of(line["kg"]), g_of(line["reo_kg"]))
                    lines.append((line["lot"], line["product"], g_of(line["kg"])))
                shipped = us(b["shipped_at"])
                # business times compared; a receipt dated in time may be entered up to its
                # month's report deadline
                ships[(e.chain, b["transfer_id"])] = {"lines": sorted(lines), "idx": i, "received": None,
                                                      "shipped": shipped, "late": False,
                                                      "due": max(shipped + 30 * DAY,
                                                                 due_of(month(shipped + 30 * DAY)))}
            elif t == "TransferReceived":
                ship = ships.get((b["seller"], b["transfer_id"]))
                got = []
                for line in b["lines"]:
                    self.move(i, occ, e.chain, line["lot"], g_of(line["kg"]), g_of(line["reo_kg"]))
                    got.append((line["lot"], line["product"], g_of(line["kg"])))
                    if self.designated(e.chain, "RECYCLER", occ) and line["product"] in MINERAL:
                        f("RECYCLER_MINERAL_FEED", e.chain)
                    self.illegal_party(i, occ, e.chain, line["lot"])
                if ship is None:
                    f("RECEIPT_WITHOUT_SHIPMENT", e.chain)
                else:
                    ship["received"] = i
                    if us(b["received_at"]) - ship["shipped"] > 30 * DAY and not self._due_raised(
                            ship, recs, i):
                        ship["late"] = True
                        f("SHIPMENT_NOT_RECEIVED", b["seller"])
                    if sorted(got) != ship["lines"]:
                        f("RECEIPT_MISMATCH", e.chain)
            elif t == "ExportDeclared":
                self.illegal_party(i, occ, e.chain, b["lot"])
                self.take(i, occ, e.chain, b["lot"], g_of(b["kg"]), g_of(b["reo_kg"]))
            elif t == "StockCounted":  # against the books valid at the count's business time
                book = sum(m[4] for m in self.moves if m[2] == e.chain and m[3] == b["lot"] and m[1] <= occ)
                if abs(g_of(b["counted_kg"]) - book) > Decimal("0.005") * max(book, 1):
                    f("STOCK_COUNT_DIFFERENCE", e.chain)
            elif t == "MonthlyFlowReportSubmitted":
                reports.setdefault((e.chain, b["month"]), i)
                if rec >= due_of(b["month"]):
                    f("REPORT_LATE", e.chain)
                covered = hashes[e.chain][b["first_seq"] - 1:b["last_seq"]] if "first_seq" in b else []
                if hashlib.sha256(b"".join(covered)).digest() != b["digest"]:
                    f("REPORT_DIGEST_MISMATCH", e.chain)
            if t not in NOT_REGISTRY:
                window = month(rec) == next_month(month(occ)) and rec < due_of(month(occ))
                if rec - occ > 15 * DAY and not window:
                    f("BACKDATED", e.chain)
                elif occ - rec > DAY:
                    f("FUTURE_DATED", e.chain)
            if t in MATERIAL and e.chain in self.parties:
                active.setdefault((e.chain, month(occ)), i)

        def first_after(j: int, due: int) -> int | None:
            for k in range(j + 1, len(recs)):
                if recs[k] >= due:
                    return k
            return None

        for (seller, _tid), ship in ships.items():
            k = first_after(ship["idx"], ship["due"])
            if k is not None and not ship["late"] and (ship["received"] is None or ship["received"] >= k):
                self.findings.append((k, ship["shipped"] + 30 * DAY, "SHIPMENT_NOT_RECEIVED", seller, None))
        for (party, m), j in active.items():
            r = reports.get((party, m))
            if r is not None and r < j:
                continue
            k = first_after(j, due_of(m))
            if k is not None and (r is None or r >= k):
                self.findings.append((k, due_of(m), "REPORT_MISSING", party, None))

    @staticmethod
    def _due_raised(ship, recs, i) -> bool:
        """Whether the "not received" finding was raised before (or by) the receipt's arrival."""
        return any(recs[k] >= ship["due"] for k in range(ship["idx"] + 1, i + 1))

    # helpers
    def _finding_at(self, i: int, occ: int):
        return lambda code, party, extra=None: self.findings.append((i, occ, code, party, extra))

    def designated(self, party: str, role: str, occ: int) -> bool:
        p = self.parties.get(party)
        return bool(p) and role in p["roles"] and occ >= p["since"]

    def group_at(self, party: str, occ: int, n: int | None = None):
        """The party's group at business time ``occ``, by the membership entries recorded before
        log index ``n`` (None: all so far); the latest effective by then wins."""
        grp, best = None, -1
        for since, group, i in (self.parties.get(party) or {}).get("groups", []):
            if best <= since <= occ and (n is None or i < n):
                grp, best = group, since
        return grp

    def new_lot(self, lot: str, product, ore, ionic=0, conc=0, illegal=None) -> None:
        self.lots.setdefault(lot, {"product": product, "ore": ore, "ionic": Decimal(ionic), "conc": Decimal(conc),
                                   "illegal": illegal})

    def illegal_party(self, i, occ, party, lot) -> None:
        info = self.lots.get(lot)
        if not info or not info["illegal"]:
            return
        src_idx, source = info["illegal"]
        if party != source and (party, src_idx) not in self.illegal_seen:
            self.illegal_seen.add((party, src_idx))
            self.findings.append((i, occ, "ILLEGAL_SOURCE", party, None))

    def move(self, i, occ, party, lot, g, reo) -> None:
        bal = self.balance.setdefault((party, lot), [0, 0])
        bal[0] += g
        bal[1] += reo
        self.moves.append((i, occ, party, lot, g, reo))
        events = self.sevents.setdefault((party, lot), [])
        events.append((occ, g, reo))
        key = ("stock", party, lot)
        bad = first_bad(events, lambda a, b: a < 0 or b < 0)
        if bad and key not in self.open:
            self.open.add(key)
            self.findings.append((i, bad[0], "NEGATIVE_STOCK", party, None))
        elif not bad:
            self.open.discard(key)

    def take(self, i, occ, party, lot, g, reo) -> None:
        if lot not in self.lots:
            self.findings.append((i, occ, "UNTRACEABLE_LOT", party, None))
        self.move(i, occ, party, lot, -g, -reo)

    def qevent(self, i, occ, key, used, limit, party) -> None:
        """Quota on the business-time axis: over iff at some t, use by t > quota by t (never < 0)."""
        events = self.qevents.setdefault(key, [])
        events.append((occ, used, limit))
        bad = first_bad(events, lambda u, lim: u > max(lim, 0))
        if bad and key not in self.open:
            self.open.add(key)
            self.findings.append((i, bad[0], "OVER_QUOTA", party, key[0]))
        elif not bad:
            self.open.discard(key)

    def use(self, i, occ, party, cat, g) -> None:
        if g <= 0:
            return
        y = year(occ)
        grp = self.group_at(party, occ)
        self.uses.append((i, occ, y, party, cat, g, grp))
        self.qevent(i, occ, ("enterprise", y, party, cat), g, 0, party)
        if grp:
            self.qevent(i, occ, ("group", y, grp, cat), g, 0, party)
        self.qevent(i, occ, ("nation", y, "", cat), g, 0, party)

    # answers at a point
    def stock_at(self, n: int, t: int) -> dict[tuple, tuple[int, int]]:
        acc: dict[tuple, list[int]] = {}
        for i, occ, party, lot, g, reo in self.moves:
            if i < n and occ <= t:
                v = acc.setdefault((party, lot), [0, 0])
                v[0] += g
                v[1] += reo
        return {k: tuple(v) for k, v in acc.items() if v != [0, 0]}

    def findings_at(self, n: int, t: int) -> list[tuple]:
        return sorted((i, occ, code, party, extra) for i, occ, code, party, extra in self.findings
                      if i < n and occ <= t)

    def quota_at(self, y: int, n: int, t: int) -> dict[str, dict]:
        out: dict[str, dict] = {"ent_used": {}, "ent_alloc": {}, "grp_issued": {}, "grp_used": {},
                                "nat_issued": {}, "nat_used": {}}

        def add(d, k, g):
            d[k] = d.get(k, 0) + g

        groups = {p for p, v in self.parties.items() if "GROUP" in v["roles"]}
        for i, occ, yy, holder, cat, kind, g in self.limits:
            if i < n and occ <= t and yy == y:
                if holder in groups:
                    if kind == "ISSUED":
                        add(out["grp_issued"], (holder, cat), g)
                elif kind in ("ISSUED", "IN"):
                    add(out["ent_alloc"], (holder, cat), g)
                if kind == "ISSUED":
                    add(out["nat_issued"], cat, g)
        for i, occ, yy, party, cat, g, _ in self.uses:
            if i < n and occ <= t and yy == y:
                add(out["ent_used"], (party, cat), g)
                add(out["nat_used"], cat, g)
                # DOMAIN.md: output counts to the group the party belongs to at the output's
                # business time, as the memberships recorded by then say (a late change moves it)
                grp = self.group_at(party, occ, n)
                if grp:
                    add(out["grp_used"], (grp, cat), g)
        return {k: {kk: vv for kk, vv in v.items() if vv} for k, v in out.items()}


# --- reading the projections the same way ----------------------------------------------------

def proj_stock(ps, point: Point) -> dict[tuple, tuple[int, int]]:
    return {(r["party"], r["lot"]): (g_of(r["kg"]), g_of(r["reo_kg"]))
            for r in queries.stock(ps, None, point)["lots"]}


def proj_findings(ps, point: Point) -> list[tuple]:
    return sorted((f["index"], us(f["occurred_at"]), f["code"], f["party"],
                   f["params"].get("level") if f["code"] == "OVER_QUOTA" else None)
                  for f in queries.findings(ps, point=point)["findings"])


def proj_quota(ps, y: int, point: Point) -> dict[str, dict]:
    q = queries.quota(ps, y, point)
    out: dict[str, dict] = {"ent_used": {}, "ent_alloc": {}, "grp_issued": {}, "grp_used": {},
                            "nat_issued": {}, "nat_used": {}}
    for r in q["enterprises"]:
        out["ent_used"][(r["party"], r["category"])] = t_of(r["used_t"])
        out["ent_alloc"][(r["party"], r["category"])] = t_of(r["allocated_t"])
    for r in q["groups"]:
        out["grp_issued"][(r["group"], r["category"])] = t_of(r["issued_t"])
        out["grp_used"][(r["group"], r["category"])] = t_of(r["used_t"])
    for r in q["nation"]:
        out["nat_issued"][r["category"]] = t_of(r["issued_t"])
        out["nat_used"][r["category"]] = t_of(r["used_t"])
    return {k: {kk: vv for kk, vv in v.items() if vv} for k, v in out.items()}


def assert_matches(ps, ref: Reference, n: int, t: int | None = None) -> None:
    point = Point(n, t)
    tt = 2**62 if t is None else t
    assert proj_findings(ps, point) == ref.findings_at(n, tt)
    assert proj_stock(ps, point) == ref.stock_at(n, tt)
    for y in (2023, 2024, 2025):
        assert proj_quota(ps, y, point) == ref.quota_at(y, n, tt), y


def read_log(store, start: int = 0) -> list[tuple[int, int, SignedEntry]]:
    return [(r.index, r.recorded_us, SignedEntry.parse(r.envelope)) for r in store.records(start)]


# --- the state machine -------------------------------------------------------------------------

ENTERPRISES = [p for p, (roles, _) in CAST.items() if "GROUP" not in roles]
PRODUCT_OF_ORE = {"ROCK": "BASTNAESITE_CONCENTRATE", "IONIC": "IONIC_CONCENTRATE"}
METAL = {"CeO2": ("Ce_METAL", "1.2284"), "La2O3": ("La_METAL", "1.1728")}


class ProjectionMachine(RuleBasedStateMachine):
    base_url = ""

    def __init__(self):
        super().__init__()
        self.dbs = Databases(self.base_url)
        self.w = World(self.dbs.fresh())
        self.ps = ProjectionStore(self.w.url)
        self.restarts = 0
        self.n = 0
        self.pending: list[tuple] = []
        self.reported = {p: 0 for p in ENTERPRISES}
        self.batches = {("GRP01", 2024): 1}
        self.w.now = dt_us(2024, 1, 2, 9)
        self.w.ok("MIIT", "QuotaBatchIssued", {"year": 2024, "batch_no": 1, "document_no": "Q-1", "holder": "GRP01",
                                               "mining_rock_t_reo": "2", "mining_ionic_t_reo": "1",
                                               "separation_t_reo": "2"})
        self.sizes = [self.w.store.size()]
        self.log: list[tuple[int, int, SignedEntry]] = []
        # the writer process's findings hook: every answer through the command API carries the
        # findings of a MirrorFindings (checked against the tables' by an invariant)
        self.answered: dict[int, tuple[str, list[dict]]] = {}
        self.unanswered: list[list[int]] = []  # a built mirror answers every commit
        self.mirror = self.start_mirror()
        self.w.api.findings_hook = self
        self.refresh()

    def start_mirror(self) -> MirrorFindings:
        mirror = MirrorFindings(self.w.url)
        mirror.start()
        deadline = time.monotonic() + 60
        while not mirror.ready():
            assert time.monotonic() < deadline, "the findings mirror was not built"
            time.sleep(0.005)
        return mirror

    def findings_of(self, entries):
        found = self.mirror.findings_of(entries)
        if found is None:  # (an assertion here would be caught and logged by the command API)
            self.unanswered.append([e[0] for e in entries])
            return None
        for index, _, chain, *_ in entries:
            self.answered[index] = (chain, found.get(index, []))
        return found

    def teardown(self):
        try:
            if self.sizes[-1] > 0:
                self.final_checks()
        finally:
            self.mirror.close()
            self.ps.close()
            self.w.close()
            self.dbs.cleanup()

    def final_checks(self):
        self.ps.catch_up()
        size = self.w.store.size()
        incremental = dump(self.ps)
        # a rebuild (drop + catch up) on a fresh ProjectionStore gives the same rows
        fresh = ProjectionStore(self.w.url)
        try:
            assert fresh.rebuild() == size
            assert dump(fresh) == incremental
        finally:
            fresh.close()
        # a copy of the log cut at an earlier point, projected afresh, equals the rows below that point
        cut = self.sizes[len(self.sizes) // 2]
        copy_url = self.dbs.fresh()
        copy = copy_cut(self.w.store, cut, copy_url)
        other = ProjectionStore(copy_url)
        try:
            other.catch_up()
            assert other.position() == cut
            assert dump(other) == dump(self.ps, cut)
        finally:
            other.close()
            copy.close()

    # plumbing
    def uid(self) -> int:
        self.n += 1
        return self.n

    def refresh(self) -> None:
        self.log += read_log(self.w.store, len(self.log))
        self.ref = Reference(self.log)

    def submit(self, party, type, body, at=None) -> None:
        self.w.ok(party, type, body, at)
        self.sizes.append(self.w.store.size())
        self.refresh()

    def held(self, party: str, products=None) -> list[tuple[str, int, int]]:
        return sorted((lot, g, reo) for (p, lot), (g, reo) in self.ref.balance.items()
                      if p == party and g > 0 and reo > 0
                      and (products is None or (self.ref.lots.get(lot) or {}).get("product") in products))

    def product(self, lot: str) -> str:
        return (self.ref.lots.get(lot) or {}).get("product") or "CeO2"

    # rules
    @rule(mine=st.sampled_from(["MINE01", "MINE02"]), reo=st.integers(100, 900),
          back=st.sampled_from([0, 0, 0, 20]))
    def produce(self, mine, reo, back):
        ore = "ROCK" if mine == "MINE01" else "IONIC"
        lot = f"{mine}-L{self.uid()}"
        body = {"lot": lot, "ore_type": ore, "product": PRODUCT_OF_ORE[ore], "wet_kg": kg(reo * 2200),
                "dry_kg": kg(reo * 2000), "treo_pct": "50", "reo_kg": kg(reo * 1000)}
        self.submit(mine, "MineralProductProduced", body, self.w.now - back * DAY)

    @rule(seller=st.sampled_from(ENTERPRISES), buyer=st.sampled_from(ENTERPRISES), pick=st.integers(0, 50),
          frac=st.sampled_from([50, 100, 100, 150]), ghost=st.sampled_from([False] * 5 + [True]))
    def ship(self, seller, buyer, pick, frac, ghost):
        if buyer == seller:
            buyer = "SEP01" if seller != "SEP01" else "SMELT01"
        lots = [x for x in self.held(seller) if self.product(x[0]) in PRODUCTS]  # scrap is no product
        if ghost or not lots:
            lot, g, reo = f"GHOST-{self.uid()}", 1000_000, 500_000
        else:
            lot, g, reo = lots[pick % len(lots)]
        lines = [(lot, self.product(lot), g * frac // 100, reo * frac // 100)]
        tid = f"T{self.uid()}"
        self.w.ship(seller, buyer, tid, lines)
        self.pending.append((seller, buyer, tid, lines))
        self.sizes.append(self.w.store.size())
        self.refresh()

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 50), mismatch=st.sampled_from([False] * 4 + [True]))
    def receive(self, pick, mismatch):
        seller, buyer, tid, lines = self.pending.pop(pick % len(self.pending))
        if mismatch:
            lines = [(lot, p, g - 1000, r) for lot, p, g, r in lines]
        self.w.receive(buyer, seller, tid, lines)
        self.sizes.append(self.w.store.size())
        self.refresh()

    @rule(plant=st.sampled_from(["SEP01", "SEP02"]), yield_pct=st.sampled_from(["97", "99", "90", "85", "103"]),
          imbalance=st.sampled_from([False] * 4 + [True]))
    def separate(self, plant, yield_pct, imbalance):
        lots = self.held(plant, MINERAL)[:3]
        if not lots:
            return
        reo_in = sum(r for _, _, r in lots)
        reo_out = int(reo_in * Decimal(yield_pct) / 100)
        ce = reo_out * 55 // 100
        outs = [("CeO2", ce), ("La2O3", reo_out - ce)]
        if any(r <= 0 for _, r in outs):
            return
        n = self.uid()
        body = {"batch": f"B{n}", "period_start": ts(self.w.now - DAY), "period_end": ts(self.w.now - HOUR),
                "inputs": [{"lot": lot, "kg": kg(g), "reo_kg": kg(r)} for lot, g, r in lots],
                "outputs": [{"lot": f"{plant}-{p}-{n}", "product": p, "kg": kg(r + r // 100), "purity_pct": "99.5",
                             "reo_kg": kg(r)} for p, r in outs],
                "losses_reo_kg": kg(0 if imbalance else max(0, reo_in - reo_out))}
        self.submit(plant, "SeparationBatchRecorded", body)

    @rule(plant=st.sampled_from(["SEP01", "SEP02"]), reo=st.integers(200, 800))
    def import_(self, plant, reo):
        n = self.uid()
        body = {"lot": f"IMP-{n}", "customs_declaration_no": f"2201{n:010d}", "hs_code": "2612200000",
                "origin_country": "MM", "form": "MONAZITE", "product": "MONAZITE_CONCENTRATE",
                "dry_kg": kg(reo * 2000), "treo_pct": "50", "reo_kg": kg(reo * 1000)}
        self.submit(plant, "ImportReceived", body)

    @rule(reo=st.integers(50, 300))
    def scrap(self, reo):
        body = {"lot": f"SCR-{self.uid()}", "scrap_type": "MAGNET_SCRAP", "source": "Ningbo magnets",
                "kg": kg(reo * 3000), "treo_pct": "33.3333", "reo_kg": kg(reo * 1000)}
        self.submit("RECY01", "SecondaryFeedReceived", body)

    @rule(pick=st.integers(0, 50))
    def smelt(self, pick):
        lots = self.held("SMELT01", set(METAL))
        if not lots:
            return
        lot, g, reo = lots[pick % len(lots)]
        product, factor = METAL[self.product(lot)]
        metal_g = int(Decimal(reo) * Decimal("0.98") / Decimal(factor))
        n = self.uid()
        body = {"batch": f"SM{n}", "inputs": [{"lot": lot, "kg": kg(g), "reo_kg": kg(reo)}],
                "outputs": [{"lot": f"MET-{n}", "product": product, "kg": kg(metal_g), "factor": factor,
                             "reo_kg": kg(int(metal_g * Decimal(factor)))}]}
        self.submit("SMELT01", "MetalSmelted", body)

    @rule(pick=st.integers(0, 50))
    def export(self, pick):
        lots = [x for x in self.held("EXPO01") if self.product(x[0]) in PRODUCTS]
        if not lots:
            return
        lot, g, reo = lots[pick % len(lots)]
        body = {"lot": lot, "product": self.product(lot), "kg": kg(g), "reo_kg": kg(reo),
                "customs_declaration_no": f"2200{self.uid():010d}", "export_licence_no": "EL-1",
                "destination_country": "JP"}
        self.submit("EXPO01", "ExportDeclared", body)

    @rule(party=st.sampled_from(ENTERPRISES), pick=st.integers(0, 50), off=st.sampled_from([100, 100, 120]))
    def count(self, party, pick, off):
        lots = self.held(party)
        if not lots:
            return
        lot, g, _ = lots[pick % len(lots)]
        self.submit(party, "StockCounted", {"lot": lot, "counted_kg": kg(g * off // 100)})

    @rule(holder=st.sampled_from(["GRP01", "SEP02", "MINE02"]), t=st.sampled_from(["0.5", "1", "2"]))
    def issue(self, holder, t):
        y = year(self.w.now)
        no = self.batches.get((holder, y), 0) + 1
        self.batches[(holder, y)] = no
        body = {"year": y, "batch_no": no, "document_no": f"Q-{self.uid()}", "holder": holder,
                "mining_rock_t_reo": t if holder == "GRP01" else "0",
                "mining_ionic_t_reo": t if holder in ("GRP01", "MINE02") else "0",
                "separation_t_reo": t if holder in ("GRP01", "SEP02") else "0"}
        self.submit("MIIT", "QuotaBatchIssued", body)

    @rule(member=st.sampled_from([("MINE01", "MINING_ROCK"), ("MINE02", "MINING_IONIC"), ("SEP01", "SEPARATION")]),
          t=st.sampled_from(["0.3", "0.8", "1.5"]))
    def suballocate(self, member, t):
        self.submit("GRP01", "QuotaSubAllocated", {"batch": {"year": 2024, "batch_no": 1}, "enterprise": member[0],
                                                   "category": member[1], "t_reo": t})

    @rule(party=st.sampled_from(ENTERPRISES), bad=st.sampled_from([False] * 5 + [True]))
    def report(self, party, bad):
        now = datetime.fromtimestamp(self.w.now / 1e6, tz=timezone.utc)
        m = f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"
        first, last = self.reported[party] + 1, self.w.head_seq(party)
        digest = b"\x01" * 32 if bad else None
        if last >= first:
            self.w.report(party, m, first, last, digest)
            self.reported[party] = last
        else:
            self.w.report(party, m, None, None, digest)
        self.reported[party] = self.w.head_seq(party)
        self.sizes.append(self.w.store.size())
        self.refresh()

    @rule(party=st.sampled_from(["MINE01", "SEP01", "SEP02"]), action=st.sampled_from(["LEFT", "JOINED"]),
          ahead=st.sampled_from([0, 2]))
    def membership(self, party, action, ahead):
        self.submit("MIIT", "GroupMembershipChanged", {"party": party, "group": "GRP01", "action": action,
                                                       "effective_from": ts(self.w.now + ahead * HOUR)})

    @rule(hours=st.sampled_from([1, 30, 24 * 8, 24 * 20, 24 * 35]))
    def tick(self, hours):
        self.w.now += hours * HOUR

    @rule(hours=st.sampled_from([24 * 10, 24 * 40]))
    def tick_and_produce(self, hours):
        """The clock moves on and something is recorded (time-driven rules fire on arrival)."""
        self.w.now += hours * HOUR
        self.produce("MINE01", 100, 0)

    @rule(k=st.integers(0, 10_000), at=st.integers(0, 10_000))
    def check_past(self, k, at):
        """As of an earlier log size and valid at a business time: the reference over that prefix."""
        n = self.sizes[k % len(self.sizes)]
        occs = sorted({us(s.entry.occurred_at) for _, _, s in self.log})
        t = occs[at % len(occs)]
        self.ps.catch_up()
        assert_matches(self.ps, self.ref, n)
        assert_matches(self.ps, self.ref, n, t)
        assert_matches(self.ps, Reference(self.log[:n]), n)

    @rule(mine=st.sampled_from(["MINE01", "MINE02"]), reo=st.integers(100, 900))
    def another_writer(self, mine, reo):
        """An entry appended past this command API (another server, the CLI): the findings
        mirror reads it from the log before the next commit's entries."""
        ore = "ROCK" if mine == "MINE01" else "IONIC"
        self.w.raw(mine, "MineralProductProduced", {
            "lot": f"{mine}-R{self.uid()}", "ore_type": ore, "product": PRODUCT_OF_ORE[ore], "wet_kg": kg(reo * 2200),
            "dry_kg": kg(reo * 2000), "treo_pct": "50", "reo_kg": kg(reo * 1000)})
        self.sizes.append(self.w.store.size())
        self.refresh()

    @invariant()
    def projections_equal_reference(self):
        self.restarts += 1
        if self.restarts % 3 == 0:  # a restart: a new ProjectionStore resumes from tracking and the state's rows
            self.ps.close()
            self.ps = ProjectionStore(self.w.url)
        self.ps.catch_up()
        size = self.w.store.size()
        assert self.ps.position() == size
        assert_matches(self.ps, self.ref, size)
        if self.restarts % 5 == 0:  # the tables equal a fresh fold, row for row (verify --projections)
            check = verify_projections(self.w.url)
            assert check.ok and check.entries == size, check.problems[:5]
        if self.restarts % 4 == 0:  # a new mirror: from the tables' latest snapshot, rolled forward
            self.mirror.close()
            self.mirror = self.start_mirror()

    @invariant()
    def answers_carry_the_tables_findings(self):
        """Each entry's answer listed exactly the findings the tables record for it that
        concern its own party."""
        self.ps.catch_up()
        tables: dict[int, list[dict]] = {}
        for f in queries.findings(self.ps)["findings"]:
            f.pop("rule_text")
            f.pop("resolved", None)  # marked later, by the entry that cured it
            tables.setdefault(f["index"], []).append(f)

        def norm(fs):
            # an answer also lists the RESOLVED markers of what its entry cured (the tables show
            # them as the cured finding's "resolved" field)
            return sorted(json.dumps(f, sort_keys=True) for f in fs if f["code"] != "RESOLVED")

        assert not self.unanswered, f"the mirror could not say for log indexes {self.unanswered}"
        for index, (chain, got) in self.answered.items():
            want = [f for f in tables.get(index, []) if f["party"] == chain]
            assert norm(got) == norm(want), index


def test_projections_match_reference(db_url, monkeypatch):
    monkeypatch.setattr(pstore, "QUOTA_SUMS_EVERY", 3)  # quota answers from kept totals + a roll-forward
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 5)

    class Machine(ProjectionMachine):
        base_url = db_url

    # modest under the default profile (the whole file in ~20 s); the ci profile explores more
    ci = settings.default.max_examples > 100
    examples = (30 if ci else 8) if "sqlite" in db_url else (15 if ci else 4)
    run_state_machine_as_test(Machine, settings=settings(max_examples=examples, stateful_step_count=25,
                                                         deadline=None))
