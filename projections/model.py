"""The projector: a pure function of the log, entry by entry.

:class:`Projector` reads accepted entries in log order and produces, for each entry,
*delta rows* (quota moves, stock moves, flow edges, lots, parties, credit records) and the
*findings* the entry raised under the rules of DOMAIN.md ("Rules that projections and replay
check"). Every delta row carries the log index of the entry that caused it and the entry's
business time, so that any question "as of log index N" (what the ledger knew then) or
"valid at time T" (the state then, as known now) is a filter on rows, never a replay.

The projector keeps in memory only what the rules need (balances, open shipments, due reports);
that state is a pure function of the log prefix and can be snapshotted (pickle) and restored.

Units: masses and REO are integer **grams** (kg with 3 decimals = g, t REO = 10^6 g), so sums
are exact in SQL and Python alike.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from reledger.ledger import encoding
from reledger.ledger.entry import SignedEntry

from .reference import RULE_PARAMETERS, product_class

DAY_US = 86_400 * 1_000_000
_NO_STOCK = (0, 0)
D0, D1 = Decimal(0), Decimal(1)  # shared: a lot's shares are mostly these, and a snapshot pickles each once
RULES = {
    "designation": "1. Designation: only listed producers, at that time, may mine or separate; recyclers take no "
                   "mineral products (Decree 785 Art. 8, 11, 22)",
    "quota": "2. Quota: mined and separated REO stay within the cumulative quota issued so far (Decree 785 "
             "Art. 21; Decree 71 Art. 3)",
    "stock": "3. Stock: never below zero for any party, product and lot; counts match the books",
    "mass_balance": "4. Mass balance: REO in = REO out + losses; yield inside the recovery bands",
    "flow": "5. Flow completeness: every shipment received (same lines, within N days); every lot traces back "
            "to a mine, a customs declaration or a scrap source (Decree 785 Art. 13, 14)",
    "reporting": "6. Reporting: monthly flow report by the 10th of the next month; digest matches (Decree 71 "
                 "Art. 9, 10; Decree 785 Art. 25)",
    "timeliness": "7. Timeliness: an entry recorded long after its business time (possible backdating)",
}
FLOW_TYPES = frozenset({"MineralProductProduced", "ImportReceived", "SecondaryFeedReceived",
                        "SeparationBatchRecorded", "MetalSmelted", "TransferShipped", "TransferReceived",
                        "ExportDeclared", "StockCounted"})
REGISTRY_LIKE = frozenset({"PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked",
                           "GroupMembershipChanged"})


_GRAMS: dict[str, int] = {}  # kg texts already converted (a log repeats its masses a lot)


def grams(text: Any) -> int:
    """kg (decimal text) -> integer grams; 0 for anything unreadable."""
    if type(text) is str:
        g = _GRAMS.get(text)
        if g is None:
            g = _grams(text)
            if len(_GRAMS) >= 1 << 16:
                _GRAMS.clear()
            _GRAMS[text] = g
        return g
    return _grams(text)


def _grams(text: Any) -> int:
    if type(text) is str and text.isascii():
        # the common case, plain digits with at most 3 decimals, without Decimal (exact alike)
        whole, dot, frac = text.partition(".")
        neg = whole[:1] == "-"
        if neg:
            whole = whole[1:]
        if whole.isdigit() and len(frac) <= 3 and (frac.isdigit() if dot else True):
            g = int(whole) * 1000 + (int(frac.ljust(3, "0")) if dot else 0)
            return -g if neg else g
    try:
        return int((Decimal(text) * 1000).to_integral_value())
    except (InvalidOperation, TypeError, ValueError):
        return 0


def t_to_grams(text: Any) -> int:
    try:
        return int((Decimal(text) * 1_000_000).to_integral_value())
    except (InvalidOperation, TypeError, ValueError):
        return 0


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def time_us(text: Any) -> int | None:
    """Microseconds since the epoch of a time in normal form; None for anything else."""
    try:
        # parse_time validates and is cached (the entry's own parse has just seen occurred_at);
        # it answers UTC datetimes, so a subtraction gives what encoding.time_to_micros does
        td = encoding.parse_time(text) - _EPOCH
    except (encoding.EncodingError, TypeError):
        return None
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


@functools.lru_cache(maxsize=4096)
def _day(day: int) -> tuple[int, str]:
    """(year, "YYYY-MM") of a UTC day (days since the epoch)."""
    d = datetime.fromtimestamp(day * 86_400, tz=timezone.utc)
    return d.year, f"{d.year:04d}-{d.month:02d}"


def year_of(us: int) -> int:
    return _day(us // DAY_US)[0]


def month_of(us: int) -> str:
    return _day(us // DAY_US)[1]


def report_due_us(month: str) -> int:
    """The start of the due day (the 10th) of the month after ``month``, UTC."""
    y, m = int(month[:4]), int(month[5:7])
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    due = datetime(y, m, int(RULE_PARAMETERS["report_due_day"]), tzinfo=timezone.utc)
    return encoding.time_to_micros(due)


def report_digest(entry_hashes) -> bytes:
    """The digest a MonthlyFlowReportSubmitted states: SHA-256 over the covered entries' hashes,
    concatenated in seq order (the one definition; the catalogue and the monthly report use it)."""
    h = hashlib.sha256()
    for eh in entry_hashes:
        h.update(eh)
    return h.digest()


def kg_text(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1000)


@dataclass(frozen=True)
class Ref:
    """An entry cited as evidence."""

    chain: str
    seq: int
    hash: str  # hex
    index: int

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "hash": self.hash, "index": self.index}


# Inside the projector's state an entry is cited by a plain tuple (chain, seq, hash, index), the
# hash the very bytes object chain_hashes holds: tens of thousands of them are kept (stock, lots,
# shipments), and a tuple costs a fraction of a dataclass to make and to pickle in a snapshot
# (which stores each shared object once). Findings carry Ref objects, made from these.
RawRef = tuple  # (chain, seq, hash bytes, index)


def _as_ref(r: Any) -> Ref:
    """A Ref from a raw ref (or a Ref, as snapshots of earlier versions hold)."""
    if isinstance(r, Ref):
        return r
    h = r[2]
    return Ref(r[0], r[1], h.hex() if isinstance(h, bytes) else h, r[3])


@dataclass
class Finding:
    rule: str  # key of RULES
    code: str
    party: str
    message: str
    evidence: list[Ref]
    index: int  # the entry whose arrival raised it
    occurred_us: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "code": self.code, "party": self.party, "message": self.message,
                "index": self.index, "occurred_at": encoding.micros_to_time_text(self.occurred_us),
                "evidence": [r.to_dict() for r in self.evidence], "params": self.params}


class Deltas:
    """What one entry changed (a plain class with slots: one is made for every entry)."""

    __slots__ = ("quota", "stock", "flow", "lots", "parties", "credit", "findings", "occurred_us")

    def __init__(self, occurred_us: int = 0) -> None:
        self.quota: list[tuple] = []     # (year, party, category, kind, g, grp, ref_index)
        self.stock: list[tuple] = []     # (party, lot, product, g, reo_g)
        self.flow: list[tuple] = []      # (kind, src_party, src_lot, dst_party, dst_lot, product, g, reo_g, ref)
        self.lots: list[tuple] = []      # (lot, party, product, origin_kind, origin_ref)
        self.parties: list[tuple] = []   # (party, name, roles, province, grp, valid_from_us, valid_until_us)
        self.credit: list[tuple] = []    # (party, kind, article, fine, cut_g, detail)
        self.findings: list[Finding] = []
        self.occurred_us = occurred_us   # the entry's business time (its record time when it has none)


@dataclass
class LotInfo:
    lot: str
    party: str
    product: str | None
    origin: str  # MINE, IMPORT, SCRAP, SEPARATION, SMELTING
    ref: RawRef
    ore: str | None = None  # ROCK / IONIC for mined lots (dominant origin for derived lots)
    scrap_share: Decimal = D0  # share of REO that came from secondary feed
    ionic_share: Decimal = D0


@dataclass
class Designation:
    since_us: int
    roles: frozenset[str]
    until_us: int | None
    group: str | None


class Projector:
    """Folds entries (in log order) into deltas and findings. Pure and deterministic."""

    def __init__(self) -> None:
        self.position = 0  # log index of the next entry
        self.designations: dict[str, list[Designation]] = {}
        self.names: dict[str, str] = {}
        self.membership: dict[str, list[tuple[int, str | None]]] = {}
        # quota (grams) keyed (year, party, category)
        self.issued: dict[tuple, int] = {}
        self.alloc_in: dict[tuple, int] = {}
        self.alloc_out: dict[tuple, int] = {}
        self.reduced: dict[tuple, int] = {}
        self.used: dict[tuple, int] = {}
        self.used_group: dict[tuple, int] = {}
        self.used_nation: dict[tuple, int] = {}
        self.issued_nation: dict[tuple, int] = {}
        self.basis: dict[tuple, str] = {}  # (year, holder) -> OUTPUT | INPUT
        self.quota_refs: dict[tuple, list[RawRef]] = {}
        self.over: set[tuple] = set()
        # the sum of every quota row so far, keyed (year, party, category, kind, grp), and the
        # latest business time among them (None: no row yet)
        self.quota_sums: dict[tuple, int] | None = {}
        self.quota_max_occ: int | None = None
        # stock (grams) keyed (party, lot)
        self.stock: dict[tuple, list[int]] = {}
        self.stock_refs: dict[tuple, list[RawRef]] = {}
        self.negative: set[tuple] = set()
        self.lots: dict[str, LotInfo] = {}
        # flows
        self.shipments: dict[tuple, dict[str, Any]] = {}
        self.due_shipments: list[tuple[int, str, str]] = []
        # reporting
        self.chain_hashes: dict[str, list[bytes]] = {}
        self.active_months: set[tuple[str, str]] = set()
        self.reports: dict[tuple[str, str], int] = {}
        self.due_reports: list[tuple[int, str, str]] = []
        self.month_refs: dict[tuple[str, str], RawRef] = {}

    # pickling (snapshots): the lots as plain tuples, several times cheaper than dataclasses
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["lots"] = {k: (v.party, v.product, v.origin, v.ref, v.ore, v.scrap_share, v.ionic_share)
                         for k, v in self.lots.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lots = state.get("lots")
        if lots and type(next(iter(lots.values()))) is tuple:
            state = {**state, "lots": {k: LotInfo(k, *v) for k, v in lots.items()}}
        self.__dict__.update(state)
        if "quota_sums" not in state:  # a snapshot taken before the running totals existed
            self.quota_sums = None
            self.quota_max_occ = None

    # --- helpers --------------------------------------------------------------------------
    def roles_at(self, party: str, t_us: int) -> frozenset[str]:
        current: Designation | None = None
        for d in self.designations.get(party, ()):
            if d.since_us <= t_us and (current is None or d.since_us >= current.since_us):
                current = d
        if current is None or (current.until_us is not None and t_us >= current.until_us):
            return frozenset()
        return current.roles

    def group_at(self, party: str, t_us: int) -> str | None:
        group = None
        best = -1
        for since, g in self.membership.get(party, ()):
            if since <= t_us and since >= best:
                group, best = g, since
        return group

    def _finding(self, d: Deltas, rule: str, code: str, party: str, message: str, evidence: list[RawRef],
                 ref: RawRef, occurred_us: int, **params: Any) -> None:
        d.findings.append(Finding(rule, code, party, message, _dedupe([ref, *evidence]), ref[3], occurred_us,
                                  params))

    def _move(self, d: Deltas, party: str, lot: str, product: str | None, g: int, reo_g: int, ref: RawRef,
              occurred_us: int) -> None:
        key = (party, lot)
        bal = self.stock.get(key)
        if bal is None:
            bal = self.stock[key] = [0, 0]
        bal[0] += g
        bal[1] += reo_g
        refs = self.stock_refs.get(key)
        if refs is None:
            self.stock_refs[key] = refs = [ref]
        else:
            refs.append(ref)
            if len(refs) > 8:
                del refs[:-8]
        d.stock.append((party, lot, product, g, reo_g))
        if bal[0] < 0 or bal[1] < 0:
            if key not in self.negative:
                self.negative.add(key)
                self._finding(d, "stock", "NEGATIVE_STOCK", party,
                              f"stock of lot {lot} at {party} would be {kg_text(bal[0])} kg "
                              f"({kg_text(bal[1])} kg REO): more left than the ledger shows came in",
                              list(refs), ref, occurred_us)
        else:
            self.negative.discard(key)

    def _take(self, d: Deltas, party: str, lot: str, product: str | None, kg: Any, reo_kg: Any, ref: RawRef,
              occurred_us: int) -> tuple[int, int]:
        """Take a lot out of a party's stock; REO or mass missing from the line is taken in
        proportion from the lot's book balance."""
        bal = self.stock.get((party, lot), _NO_STOCK)
        g = grams(kg) if kg is not None else None
        reo = grams(reo_kg) if reo_kg is not None else None
        if reo is None and g is not None:
            reo = (g * bal[1] // bal[0]) if bal[0] > 0 else 0
        if g is None and reo is not None:
            g = (reo * bal[0] // bal[1]) if bal[1] > 0 else 0
        info = self.lots.get(lot)
        if info is None:
            self._finding(d, "flow", "UNTRACEABLE_LOT", party,
                          f"lot {lot} used by {party} was never produced, imported or received as scrap in the "
                          "ledger: it does not trace back to a mine, a customs declaration or a scrap source",
                          [], ref, occurred_us)
        self._move(d, party, lot, product or (info.product if info else None), -(g or 0), -(reo or 0), ref,
                   occurred_us)
        return g or 0, reo or 0

    def _new_lot(self, d: Deltas, lot: str, party: str, product: str | None, origin: str, ref: RawRef,
                 ore: str | None = None, scrap_share: Decimal = D0, ionic_share: Decimal = D0) -> None:
        if lot not in self.lots:
            self.lots[lot] = LotInfo(lot, party, product, origin, ref, ore, scrap_share, ionic_share)
            d.lots.append((lot, party, product, origin, ref[3]))

    def _recycler_only(self, party: str, t_us: int) -> bool:
        """A recycler at ``t_us`` that is not also a designated separation plant (whose mineral
        feed is its business): Decree 785 Art. 11/22 forbid it mineral products as feed."""
        roles = self.roles_at(party, t_us)
        return "RECYCLER" in roles and "SEPARATION" not in roles

    # --- the fold ---------------------------------------------------------------------------
    def unreadable(self, index: int, recorded_us: int, chain: str, seq: int, entry_hash: bytes,
                   reason: str) -> Deltas:
        """An entry that cannot be read (a damaged database: `reledger verify` names it): the
        position advances and the projections flag it, so that everything else can be shown."""
        if index != self.position:
            raise ValueError(f"projector at position {self.position} was given log index {index}")
        self.position = index + 1
        self.chain_hashes.setdefault(chain, []).append(entry_hash)
        d = Deltas(recorded_us)
        ref = (chain, seq, entry_hash, index)
        self._finding(d, "flow", "UNREADABLE_ENTRY", chain,
                      f"log index {index} ({chain}:{seq}) cannot be read: {reason}; run reledger verify", [], ref,
                      recorded_us)
        return d

    def apply(self, index: int, recorded_us: int, signed: SignedEntry) -> Deltas:
        if index != self.position:
            raise ValueError(f"projector at position {self.position} was given log index {index}")
        self.position = index + 1
        e = signed.entry
        ref = (e.chain, e.seq, signed.hash, index)
        hashes = self.chain_hashes.get(e.chain)
        if hashes is None:
            self.chain_hashes[e.chain] = [signed.hash]
        else:
            hashes.append(signed.hash)
        occurred_us = time_us(e.occurred_at) or recorded_us
        d = Deltas(occurred_us)
        body = e.body if isinstance(e.body, dict) else {}
        if ((self.due_shipments and self.due_shipments[0][0] <= recorded_us)
                or (self.due_reports and self.due_reports[0][0] <= recorded_us)):
            self._due_checks(d, recorded_us, ref)
        handler = _HANDLERS.get(e.type)
        if handler is not None:
            try:
                handler(self, d, e.chain, body, ref, occurred_us, recorded_us)
            except (KeyError, TypeError, AttributeError, ValueError, InvalidOperation) as err:
                self._finding(d, "flow", "UNREADABLE_ENTRY", e.chain,
                              f"the projections could not read this {e.type} ({type(err).__name__}: {err})",
                              [], ref, occurred_us)
        if e.type not in REGISTRY_LIKE:
            self._timeliness(d, e.chain, e.type, ref, occurred_us, recorded_us)
        if e.type in FLOW_TYPES and e.chain in self.designations:
            month = month_of(occurred_us)
            key = (e.chain, month)
            if key not in self.active_months:
                self.active_months.add(key)
                self.month_refs[key] = ref
                if key not in self.reports:
                    heapq.heappush(self.due_reports, (report_due_us(month), e.chain, month))
        return d

    # registry ---------------------------------------------------------------------------------
    def _on_PartyRegistered(self, d, chain, b, ref, occ, rec) -> None:
        party = b["party"]
        since = time_us(b.get("valid_from")) or occ
        until = time_us(b.get("valid_until"))
        roles = frozenset(b.get("roles") or ())
        self.designations.setdefault(party, []).append(Designation(since, roles, until, b.get("group")))
        self.names[party] = b.get("name", party)
        if b.get("group"):
            self.membership.setdefault(party, []).append((since, b["group"]))
        d.parties.append((party, b.get("name", party), ",".join(sorted(roles)), b.get("province"), b.get("group"),
                          since, until))

    def _on_PartyDesignationChanged(self, d, chain, b, ref, occ, rec) -> None:
        party = b["party"]
        prev = self.designations.get(party, [])
        last = prev[-1] if prev else Designation(0, frozenset(), None, None)
        since = time_us(b.get("valid_from")) or occ
        roles = frozenset(b["roles"]) if "roles" in b else last.roles
        until = time_us(b.get("valid_until")) if "valid_until" in b else last.until_us
        group = b.get("group", last.group)
        self.designations.setdefault(party, []).append(Designation(since, roles, until, group))
        if "name" in b:
            self.names[party] = b["name"]
        if "group" in b:
            self.membership.setdefault(party, []).append((since, b["group"]))
        d.parties.append((party, self.names.get(party, party), ",".join(sorted(roles)), b.get("province"), group,
                          since, until))

    def _on_GroupMembershipChanged(self, d, chain, b, ref, occ, rec) -> None:
        since = time_us(b.get("effective_from")) or occ
        self.membership.setdefault(b["party"], []).append((since, b["group"] if b.get("action") == "JOINED" else None))

    # quota ------------------------------------------------------------------------------------
    def _on_QuotaBatchIssued(self, d, chain, b, ref, occ, rec) -> None:
        year, holder = int(b["year"]), b["holder"]
        self.basis[(year, holder)] = b.get("basis", "OUTPUT")
        for cat, name in (("MINING_ROCK", "mining_rock_t_reo"), ("MINING_IONIC", "mining_ionic_t_reo"),
                          ("SEPARATION", "separation_t_reo")):
            g = t_to_grams(b.get(name, "0"))
            if g:
                k = (year, holder, cat)
                self.issued[k] = self.issued.get(k, 0) + g
                self.issued_nation[(year, cat)] = self.issued_nation.get((year, cat), 0) + g
                self.quota_refs.setdefault(k, []).append(ref)
                self._quota(d, year, holder, cat, "ISSUED", g, None, ref, occ)
                self.over.discard(("enterprise", year, holder, cat))
                self.over.discard(("group", year, holder, cat))
                self.over.discard(("nation", year, "", cat))

    def _on_QuotaSubAllocated(self, d, chain, b, ref, occ, rec) -> None:
        year = int(b["batch"]["year"])
        cat, g, ent = b["category"], t_to_grams(b["t_reo"]), b["enterprise"]
        self.alloc_out[(year, chain, cat)] = self.alloc_out.get((year, chain, cat), 0) + g
        self.alloc_in[(year, ent, cat)] = self.alloc_in.get((year, ent, cat), 0) + g
        self.quota_refs.setdefault((year, ent, cat), []).append(ref)
        if (year, chain) in self.basis:
            self.basis.setdefault((year, ent), self.basis[(year, chain)])
        self._quota(d, year, chain, cat, "SUBALLOCATED_OUT", g, None, ref, occ)
        self._quota(d, year, ent, cat, "SUBALLOCATED_IN", g, chain, ref, occ)
        self.over.discard(("enterprise", year, ent, cat))

    def _on_QuotaReduced(self, d, chain, b, ref, occ, rec) -> None:
        year, holder, cat, g = int(b["year"]), b["holder"], b["category"], t_to_grams(b["t_reo"])
        self.reduced[(year, holder, cat)] = self.reduced.get((year, holder, cat), 0) + g
        # the national limit is what was issued less what was cut (as queries.quota shows it)
        self.issued_nation[(year, cat)] = self.issued_nation.get((year, cat), 0) - g
        self.quota_refs.setdefault((year, holder, cat), []).append(ref)
        self._quota(d, year, holder, cat, "REDUCED", g, None, ref, occ)
        # a cut of a group's indicator is checked at group level against its members' use
        grp = holder if "GROUP" in self.roles_at(holder, occ) else None
        self._check_quota(d, year, holder, cat, ref, occ, grp)

    def _quota(self, d: Deltas, year: int, party: str, cat: str, kind: str, g: int, grp: str | None, ref: RawRef,
               occ: int) -> None:
        """A quota row, and the running totals of every quota row so far (what the store keeps at
        regular positions, so that a quota query as of any point rolls forward a bounded stretch)."""
        d.quota.append((year, party, cat, kind, g, grp, ref[3]))
        sums = self.quota_sums
        if sums is not None:
            k = (year, party, cat, kind, grp)
            sums[k] = sums.get(k, 0) + g
            if self.quota_max_occ is None or occ > self.quota_max_occ:
                self.quota_max_occ = occ

    def allocated(self, year: int, party: str, cat: str) -> int:
        k = (year, party, cat)
        return self.issued.get(k, 0) + self.alloc_in.get(k, 0) - self.reduced.get(k, 0)

    def _use(self, d: Deltas, party: str, cat: str, g: int, ref: RawRef, occ: int) -> None:
        if g <= 0:
            return
        year = year_of(occ)
        grp = self.group_at(party, occ)
        k = (year, party, cat)
        self.used[k] = self.used.get(k, 0) + g
        if grp:
            self.used_group[(year, grp, cat)] = self.used_group.get((year, grp, cat), 0) + g
        self.used_nation[(year, cat)] = self.used_nation.get((year, cat), 0) + g
        self._quota(d, year, party, cat, "USED", g, grp, ref, occ)
        self._check_quota(d, year, party, cat, ref, occ, grp)

    def _check_quota(self, d: Deltas, year: int, party: str, cat: str, ref: RawRef, occ: int,
                     grp: str | None = None) -> None:
        k = (year, party, cat)
        used = self.used.get(k, 0)
        limit = self.issued.get(k, 0) + self.alloc_in.get(k, 0) - self.reduced.get(k, 0)
        if used > limit:
            self._over(d, "enterprise", party, used, limit, year, party, cat, ref, occ)
        if grp:
            k = (year, grp, cat)
            used = self.used_group.get(k, 0)
            limit = self.issued.get(k, 0) - self.reduced.get(k, 0)
            if used > limit:
                self._over(d, "group", grp, used, limit, year, party, cat, ref, occ)
        k = (year, cat)
        used = self.used_nation.get(k, 0)
        limit = self.issued_nation.get(k, 0)
        if used > limit:
            self._over(d, "nation", "", used, limit, year, party, cat, ref, occ)

    def _over(self, d: Deltas, level: str, who: str, used: int, limit: int, year: int, party: str, cat: str,
              ref: RawRef, occ: int) -> None:
        key = (level, year, who, cat)
        if key not in self.over:
            self.over.add(key)
            target = party if level == "enterprise" else (who or "nation")
            evidence = list(self.quota_refs.get((year, who or party, cat), []))[:10]
            self._finding(d, "quota", "OVER_QUOTA", party,
                          f"{cat} {year} at {level} level ({target}): used {kg_text(used)} kg REO against "
                          f"{kg_text(limit)} kg REO issued so far", evidence, ref, occ,
                          level=level, holder=target, year=year, category=cat, used_kg=kg_text(used),
                          limit_kg=kg_text(limit))

    # material flow --------------------------------------------------------------------------
    def _on_MineralProductProduced(self, d, chain, b, ref, occ, rec) -> None:
        if "MINE" not in self.roles_at(chain, occ):
            self._finding(d, "designation", "NOT_DESIGNATED", chain,
                          f"{chain} recorded mining output at {encoding.micros_to_time_text(occ)} without a "
                          "designation as a mine at that time", [], ref, occ)
        lot, ore = b["lot"], b.get("ore_type", "ROCK")
        reo = grams(b["reo_kg"])
        self._new_lot(d, lot, chain, b.get("product", "RE_CONCENTRATE"), "MINE", ref, ore=ore,
                      ionic_share=D1 if ore == "IONIC" else D0)
        self._move(d, chain, lot, b.get("product", "RE_CONCENTRATE"), grams(b["dry_kg"]), reo, ref, occ)
        d.flow.append(("PRODUCTION", chain, None, chain, lot, b.get("product", "RE_CONCENTRATE"),
                       grams(b["dry_kg"]), reo, b.get("site")))
        self._use(d, chain, "MINING_IONIC" if ore == "IONIC" else "MINING_ROCK", reo, ref, occ)

    def _on_ImportReceived(self, d, chain, b, ref, occ, rec) -> None:
        lot = b["lot"]
        g = grams(b["dry_kg"])
        reo = grams(b["reo_kg"]) if "reo_kg" in b else int(Decimal(g) * Decimal(b["treo_pct"]) / 100)
        product = b.get("product") or ("MONAZITE_CONCENTRATE" if b.get("form") == "MONAZITE" else None)
        mineral = (product_class(product) == "MINERAL" if product else
                   b.get("form") in ("ORE", "CONCENTRATE", "MONAZITE", "MIXED_CARBONATE", "MIXED_OXIDE"))
        if mineral and self._recycler_only(chain, occ):
            self._finding(d, "designation", "RECYCLER_MINERAL_FEED", chain,
                          f"recycler {chain} imported rare earth mineral product {product or b.get('form')} "
                          f"(lot {lot}) as feed", [], ref, occ)
        self._new_lot(d, lot, chain, product, "IMPORT", ref)
        self._move(d, chain, lot, product, g, reo, ref, occ)
        d.flow.append(("IMPORT", f"customs:{b.get('customs_declaration_no')}", None, chain, lot, product, g, reo,
                       b.get("origin_country")))

    def _on_SecondaryFeedReceived(self, d, chain, b, ref, occ, rec) -> None:
        lot = b["lot"]
        g = grams(b["kg"])
        reo = grams(b["reo_kg"]) if "reo_kg" in b else int(Decimal(g) * Decimal(b["treo_pct"]) / 100)
        self._new_lot(d, lot, chain, b.get("scrap_type"), "SCRAP", ref, scrap_share=D1)
        self._move(d, chain, lot, b.get("scrap_type"), g, reo, ref, occ)
        d.flow.append(("SCRAP", f"scrap:{b.get('source')}", None, chain, lot, b.get("scrap_type"), g, reo, None))

    def _batch(self, d, chain, b, ref, occ, kind: str) -> tuple[int, int, Decimal, Decimal, list]:
        """Consume inputs, produce outputs with proportional attribution; returns
        (REO in, REO out, scrap share, ionic share, inputs)."""
        inputs = []
        reo_in = 0
        scrap = Decimal(0)
        ionic = Decimal(0)
        mineral_in = False
        for line in b.get("inputs", []):
            info = self.lots.get(line["lot"])
            g, reo = self._take(d, chain, line["lot"], info.product if info else None, line.get("kg"),
                                line.get("reo_kg"), ref, occ)
            inputs.append((line["lot"], g, reo))
            reo_in += reo
            if info is not None:
                scrap += info.scrap_share * reo
                ionic += info.ionic_share * reo
                mineral_in = mineral_in or (product_class(info.product) == "MINERAL"
                                            and info.product not in ("MIXED_CARBONATE", "MIXED_CHLORIDE", "MIXED_OXIDE"))
        scrap_share = (scrap / reo_in) if reo_in and scrap else D0
        ionic_share = (ionic / reo_in) if reo_in and ionic else D0
        reo_out = 0
        for out in b.get("outputs", []):
            g, reo = grams(out["kg"]), grams(out["reo_kg"])
            reo_out += reo
            self._new_lot(d, out["lot"], chain, out.get("product"), kind, ref, scrap_share=scrap_share,
                          ionic_share=ionic_share)
            self._move(d, chain, out["lot"], out.get("product"), g, reo, ref, occ)
            for lot, _g_in, reo_in_lot in inputs:  # proportional attribution within the batch
                share = Decimal(reo_in_lot) / reo_in if reo_in else Decimal(0)
                d.flow.append((kind, chain, lot, chain, out["lot"], out.get("product"),
                               int(Decimal(g) * share), int(Decimal(reo) * share), b.get("batch")))
        self._mineral_in = mineral_in
        return reo_in, reo_out, scrap_share, ionic_share, inputs

    def _on_SeparationBatchRecorded(self, d, chain, b, ref, occ, rec) -> None:
        if "SEPARATION" not in self.roles_at(chain, occ):
            self._finding(d, "designation", "NOT_DESIGNATED", chain,
                          f"{chain} recorded a separation batch at {encoding.micros_to_time_text(occ)} without a "
                          "designation as a separation plant at that time", [], ref, occ)
        reo_in, reo_out, scrap_share, ionic_share, _ = self._batch(d, chain, b, ref, occ, "SEPARATION")
        losses = grams(b.get("losses_reo_kg", "0"))
        # quota: on the indicator's basis; secondary feed's share is recorded apart, not counted
        basis = self.basis.get((year_of(occ), chain))
        if basis is None:
            grp = self.group_at(chain, occ)
            basis = self.basis.get((year_of(occ), grp), "OUTPUT") if grp else "OUTPUT"
        counted = reo_out if basis == "OUTPUT" else reo_in
        self._use(d, chain, "SEPARATION", int(Decimal(counted) * (1 - scrap_share)), ref, occ)
        # mass balance and yield
        if reo_in > 0:
            tol = Decimal(RULE_PARAMETERS["mass_balance_tolerance_pct"]) / 100
            if abs(reo_in - reo_out - losses) > tol * reo_in:
                self._finding(d, "mass_balance", "MASS_IMBALANCE", chain,
                              f"batch {b.get('batch')}: REO in {kg_text(reo_in)} kg != out {kg_text(reo_out)} kg + "
                              f"losses {kg_text(losses)} kg", [], ref, occ)
            yield_pct = Decimal(reo_out) * 100 / reo_in
            band = Decimal("94") if ionic_share > Decimal("0.5") else Decimal("96")
            if self._mineral_in:
                band = band * Decimal("0.92")  # concentrate -> mixed -> separated in one batch
            if yield_pct > 100:
                self._finding(d, "mass_balance", "YIELD_ABOVE_100", chain,
                              f"batch {b.get('batch')}: yield {yield_pct:.2f}% of input REO is above 100%: "
                              "unrecorded feed", [], ref, occ, yield_pct=f"{yield_pct:.2f}")
            elif yield_pct < band:
                self._finding(d, "mass_balance", "YIELD_BELOW_BAND", chain,
                              f"batch {b.get('batch')}: yield {yield_pct:.2f}% is below the recovery band "
                              f"({band:.2f}%): possible diversion", [], ref, occ, yield_pct=f"{yield_pct:.2f}",
                              band_pct=f"{band:.2f}")

    def _on_MetalSmelted(self, d, chain, b, ref, occ, rec) -> None:
        self._batch(d, chain, b, ref, occ, "SMELTING")

    def _on_TransferShipped(self, d, chain, b, ref, occ, rec) -> None:
        tid, buyer = b["transfer_id"], b["buyer"]
        lines = []
        for line in b["lines"]:
            g, reo = self._take(d, chain, line["lot"], line.get("product"), line["kg"], line.get("reo_kg"), ref, occ)
            lines.append((line["lot"], line.get("product"), g, reo))
            d.flow.append(("TRANSFER", chain, line["lot"], buyer, line["lot"], line.get("product"), g, reo, tid))
        shipped = time_us(b.get("shipped_at")) or occ
        self.shipments[(chain, tid)] = {"buyer": buyer, "lines": lines, "ref": ref, "received": False,
                                        "shipped_us": shipped}
        due = shipped + int(RULE_PARAMETERS["receipt_within_days"]) * DAY_US
        heapq.heappush(self.due_shipments, (due, chain, tid))

    def _on_TransferReceived(self, d, chain, b, ref, occ, rec) -> None:
        tid, seller = b["transfer_id"], b["seller"]
        ship = self.shipments.get((seller, tid))
        recycler = self._recycler_only(chain, occ)
        received = []
        for line in b["lines"]:
            info = self.lots.get(line["lot"])
            g = grams(line["kg"])
            reo = grams(line["reo_kg"]) if "reo_kg" in line else None
            if reo is None and ship is not None:
                match = [x for x in ship["lines"] if x[0] == line["lot"]]
                reo = (match[0][3] * g // match[0][2]) if match and match[0][2] else 0
            self._move(d, chain, line["lot"], line.get("product"), g, reo or 0, ref, occ)
            received.append((line["lot"], line.get("product"), g))
            if recycler and product_class(line.get("product") or (info.product if info else None)) == "MINERAL":
                self._finding(d, "designation", "RECYCLER_MINERAL_FEED", chain,
                              f"recycler {chain} received rare earth mineral product {line.get('product')} "
                              f"(lot {line['lot']}) as feed", [ship["ref"]] if ship else [], ref, occ)
        if ship is None or ship["buyer"] != chain:
            self._finding(d, "flow", "RECEIPT_WITHOUT_SHIPMENT", chain,
                          f"{chain} received transfer {tid} that {seller} never shipped to it", [], ref, occ)
            return
        if ship["received"]:
            # the write path refuses a second receipt, but two writers racing (or entries written
            # past the command API) can record one: the goods would be on the books twice
            self._finding(d, "flow", "RECEIPT_DUPLICATE", chain,
                          f"transfer {tid} from {seller} was already received",
                          [r for r in (ship["received"], ship["ref"]) if r], ref, occ)
            return
        ship["received"] = ref
        shipped = sorted((x[0], x[1], x[2]) for x in ship["lines"])
        if sorted(received) != shipped:
            self._finding(d, "flow", "RECEIPT_MISMATCH", chain,
                          f"transfer {tid} from {seller}: the lines received differ from the lines shipped",
                          [ship["ref"]], ref, occ)

    def _on_ExportDeclared(self, d, chain, b, ref, occ, rec) -> None:
        g, reo = self._take(d, chain, b["lot"], b.get("product"), b["kg"], b.get("reo_kg"), ref, occ)
        d.flow.append(("EXPORT", chain, b["lot"], f"export:{b.get('destination_country')}", None, b.get("product"),
                       g, reo, b.get("customs_declaration_no")))

    def _on_StockCounted(self, d, chain, b, ref, occ, rec) -> None:
        counted = grams(b["counted_kg"])
        if "lot" in b:
            book = self.stock.get((chain, b["lot"]), [0, 0])[0]
            what = f"lot {b['lot']}"
            refs = self.stock_refs.get((chain, b["lot"]), [])
        else:
            book = sum(v[0] for (p, lot), v in self.stock.items()
                       if p == chain and (self.lots.get(lot) and self.lots[lot].product == b.get("product")))
            what = f"product {b.get('product')}"
            refs = []
        tol = Decimal(RULE_PARAMETERS["stock_count_tolerance_pct"]) / 100
        if abs(counted - book) > tol * max(book, 1):
            self._finding(d, "stock", "STOCK_COUNT_DIFFERENCE", chain,
                          f"{what}: counted {kg_text(counted)} kg, the books say {kg_text(book)} kg", list(refs)[-5:],
                          ref, occ, counted_kg=kg_text(counted), book_kg=kg_text(book))

    # reporting and enforcement ------------------------------------------------------------------
    def _on_MonthlyFlowReportSubmitted(self, d, chain, b, ref, occ, rec) -> None:
        month = b["month"]
        self.reports[(chain, month)] = ref[3]
        due = report_due_us(month)
        if rec >= due:
            self._finding(d, "reporting", "REPORT_LATE", chain,
                          f"the flow report for {month} was recorded {encoding.micros_to_time_text(rec)}, after "
                          f"the due date {encoding.micros_to_time_text(due)}", [], ref, occ, month=month)
        hashes = self.chain_hashes.get(chain, [])
        if "first_seq" in b or "last_seq" in b:
            first, last = int(b["first_seq"]), int(b["last_seq"])
            covered = hashes[first - 1:last] if 1 <= first and last <= len(hashes) else None
        else:  # a month without entries: the digest of nothing (FORMAT: both absent)
            first, last, covered = 1, 0, []
        if covered is None or report_digest(covered) != b.get("digest"):
            self._finding(d, "reporting", "REPORT_DIGEST_MISMATCH", chain,
                          f"the flow report for {month} states a digest that does not match entries "
                          f"{first}..{last} of {chain}", [], ref, occ, month=month)

    def _on_ViolationFound(self, d, chain, b, ref, occ, rec) -> None:
        d.credit.append((b["party"], "VIOLATION", b.get("article"), None, 0,
                         f"{b.get('rule')}: {b.get('description')}"))

    def _on_PenaltyImposed(self, d, chain, b, ref, occ, rec) -> None:
        d.credit.append((b["party"], "PENALTY", b.get("article"), b.get("fine_cny"),
                         t_to_grams(b.get("next_year_cut_t_reo", "0")), b.get("decision_no")))

    # time-driven rules --------------------------------------------------------------------------
    def _due_checks(self, d: Deltas, now_us: int, ref: RawRef) -> None:
        while self.due_shipments and self.due_shipments[0][0] <= now_us:
            due, seller, tid = heapq.heappop(self.due_shipments)
            ship = self.shipments.get((seller, tid))
            if ship and not ship["received"]:
                d.findings.append(Finding(
                    "flow", "SHIPMENT_NOT_RECEIVED", seller,
                    f"transfer {tid} from {seller} to {ship['buyer']} was not received within "
                    f"{RULE_PARAMETERS['receipt_within_days']} days", [_as_ref(ship["ref"])], ref[3], due,
                    {"buyer": ship["buyer"], "transfer_id": tid}))
        while self.due_reports and self.due_reports[0][0] <= now_us:
            due, party, month = heapq.heappop(self.due_reports)
            if (party, month) not in self.reports:
                d.findings.append(Finding(
                    "reporting", "REPORT_MISSING", party,
                    f"no flow report for {month} by the due date {encoding.micros_to_time_text(due)}",
                    [_as_ref(self.month_refs[(party, month)])], ref[3], due, {"month": month}))

    def _timeliness(self, d: Deltas, party: str, type: str, ref: RawRef, occ: int, rec: int) -> None:
        limit = int(RULE_PARAMETERS["backdating_days"]) * DAY_US
        if rec - occ > limit:
            self._finding(d, "timeliness", "BACKDATED", party,
                          f"{type} recorded {encoding.micros_to_time_text(rec)}, {(rec - occ) // DAY_US} days after "
                          f"its business time {encoding.micros_to_time_text(occ)}", [], ref, occ,
                          days=(rec - occ) // DAY_US)
        elif occ - rec > DAY_US:
            self._finding(d, "timeliness", "FUTURE_DATED", party,
                          f"{type} has a business time {encoding.micros_to_time_text(occ)} after it was recorded",
                          [], ref, occ)


# entry type -> Projector._on_<type>
_HANDLERS = {name[4:]: fn for name, fn in vars(Projector).items() if name.startswith("_on_")}


def _dedupe(refs: list[RawRef]) -> list[Ref]:
    seen, out = set(), []
    for r in refs:
        r = _as_ref(r)
        if r.index not in seen:
            seen.add(r.index)
            out.append(r)
    return out
