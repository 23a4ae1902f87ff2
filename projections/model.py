"""The projector: a pure function of the log, entry by entry.

:class:`Projector` reads accepted entries in log order and produces, for each entry,
*delta rows* (quota moves, stock moves, flow edges, lots, parties, credit records) and the
*findings* the entry raised under the rules of DOMAIN.md ("Rules that projections and replay
check"). Every delta row carries the log index of the entry that caused it and the entry's
business time, so that any question "as of log index N" (what the ledger knew then) or
"valid at time T" (the state then, as known now) is a filter on rows, never a replay.

The projector keeps only what the rules need (balances, open shipments, due reports); that
state is a pure function of the log prefix. It lives in plain objects in memory (``Projector()``,
the reference fold) or as rows in the database (``Projector(RowState(...))``, projections/state.py).

Units: masses and REO are integer **grams** (kg with 3 decimals = g, t REO = 10^6 g), so sums
are exact in SQL and Python alike.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from reledger.ledger import authority, encoding
from reledger.ledger.entry import SignedEntry

from .queues import ChainHashes, HeapQueue, Lists, Timelines
from .reference import (CALENDAR_PARAMETERS, INT_PARAMETERS, LEGAL_UTC_OFFSET_HOURS, RULE_PARAMETERS,
                        calendar_dates, element_of, elements_in, merge_calendar, product_class,
                        reo_factor_table)

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
    "quantities": "Declared quantities are checked: a lot's REO = dry kg x TREO % / 100, a metal's REO = kg x the "
                  "reference table's factor (Decree 785 Art. 21, 25)",
    "authority": "Authority: an entry of a type its chain's role may not assert counts nowhere (Decree 785 Art. 14)",
    "illegal_source": "Illegal source: nobody may buy, process, sell or export illegally mined or separated product "
                      "(Decree 785 Art. 13, 23)",
    "export": "Export controls: controlled elements need a dual-use export licence valid on the export date "
              "(MOFCOM Announcement 2025 No. 18)",
}
LEGAL_OFFSET_US = LEGAL_UTC_OFFSET_HOURS * 3600 * 1_000_000
#: the code of a row that marks an earlier finding resolved (never deleted): its params say which
RESOLVED = "RESOLVED"
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
def _day(day: int) -> tuple[int, str, str]:
    """(year, "YYYY-MM", "YYYY-MM-DD") of a legal (CST) day (days since the epoch)."""
    d = datetime.fromtimestamp(day * 86_400, tz=timezone.utc)
    return d.year, f"{d.year:04d}-{d.month:02d}", f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def year_of(us: int) -> int:
    """The legal (China Standard Time) year of a time."""
    return _day((us + LEGAL_OFFSET_US) // DAY_US)[0]


def month_of(us: int) -> str:
    """The legal (China Standard Time) month of a time, YYYY-MM."""
    return _day((us + LEGAL_OFFSET_US) // DAY_US)[1]


def date_of(us: int) -> str:
    """The legal (China Standard Time) date of a time, YYYY-MM-DD."""
    return _day((us + LEGAL_OFFSET_US) // DAY_US)[2]


def legal_date_us(day: str) -> int:
    """The start (00:00 CST) of a legal date YYYY-MM-DD, in microseconds since the epoch (UTC)."""
    d = datetime(int(day[:4]), int(day[5:7]), int(day[8:10]), tzinfo=timezone.utc)
    return encoding.time_to_micros(d) - LEGAL_OFFSET_US


def report_due_us(month: str, due_day: int | None = None) -> int:
    """The end of the due day (24:00 CST on the 10th: 16:00 UTC) of the month after ``month``:
    a report or an entry of ``month`` recorded before it is on time."""
    y, m = int(month[:4]), int(month[5:7])
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    day = int(RULE_PARAMETERS["report_due_day"] if due_day is None else due_day)
    return legal_date_us(f"{y:04d}-{m:02d}-{day:02d}") + DAY_US


def report_digest(entry_hashes) -> bytes:
    """The digest a MonthlyFlowReportSubmitted states: SHA-256 over the covered entries' hashes,
    concatenated in seq order (the one definition; the catalogue and the monthly report use it)."""
    h = hashlib.sha256()
    for eh in entry_hashes:
        h.update(eh)
    return h.digest()


def kg_text(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1000)


def t_reo_text(g: int) -> str:
    """Grams as tonnes for people: quota figures are t REO (thousands separators, no trailing zeros)."""
    text = f"{Decimal(g) / 1_000_000:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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
    conc_share: Decimal = D0   # share of REO that is still rock-type / monazite concentrate (not yet mixed RE)
    illegal: tuple | None = None  # (share of illegal REO, [raw refs back to the source], source party, source index)


@dataclass
class Designation:
    since_us: int
    roles: frozenset[str]
    until_us: int | None
    group: str | None


class Projector:
    """Folds entries (in log order) into deltas and findings. Pure and deterministic."""

    def __init__(self, state: Any = None) -> None:
        """``state``: where the rule state lives (projections/state.py): None keeps it in plain
        objects in memory (the reference fold); a RowState keeps it as rows in the database."""
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
        # the sum of every quota row so far, keyed (year, party, category, kind, grp), and the
        # latest business time among them (None: no row yet)
        self.quota_sums: dict[tuple, int] | None = {}
        self.quota_max_occ: int | None = None
        # stock (grams) keyed (party, lot)
        self.stock: dict[tuple, list[int]] = {}
        self.stock_refs: dict[tuple, list[RawRef]] = {}
        self.lots: dict[str, LotInfo] = {}
        # flows
        self.shipments: dict[tuple, dict[str, Any]] = {}
        self.due_shipments = HeapQueue()  # (due, seller, transfer id)
        # reporting
        self.chain_hashes = ChainHashes()
        self.active_months: set[tuple[str, str]] = set()
        self.reports: dict[tuple[str, str], int] = {}
        self.due_reports = HeapQueue()  # (due, party, month)
        self.month_refs: dict[tuple[str, str], RawRef] = {}
        # DOMAIN.md "The rules, precisely" -------------------------------------------------------
        self.root: str | None = None  # the chain of log index 0 (the root regulator)
        self.params: dict[str, Any] = dict(RULE_PARAMETERS)  # as the regulator's entries set them
        # business-time timelines: key -> events [occ, a, b] in order of occ (quota: a = used, b =
        # limit; stock: a = g, b = REO); totals of quota timelines [used, limit]
        self.timeline = Timelines()
        self.qtot: dict[tuple, list[int]] = {}
        # open findings that a later entry may cure: fact -> [index, occurred_us, code, party]
        self.open: dict[str, list] = {}
        # what each flow entry contributed to the timelines, for corrections: (chain, seq) ->
        # [[kind, key, occ, a, b, row], ...]
        self.contrib: dict[tuple, list] = {}
        self.corrected: dict[tuple, int] = {}        # plain dicts as sets (the state is stored as rows)
        self.missing_raised: dict[tuple[str, str], list] = {}
        self.illegal_seen: dict[tuple, int] = {}
        self.quota_batches: dict[tuple, list] = {}  # (year, batch_no, holder) -> [occ, {cat: g}, ref]
        self.suballoc: dict[tuple, int] = {}        # (year, batch_no, group, cat) -> g sub-allocated
        self.totals: dict[tuple, int] = {}          # (year, cat) -> g approved
        self.batch_sum: dict[tuple, int] = {}       # (year, cat) -> g issued in batches
        self.over_total: dict[tuple, int] = {}
        self.penalties: list[list] = []             # [party, year, cut_g, ref, satisfied]
        self.first_batch: dict[int, int] = {}       # year -> index of the first batch recorded
        self.flows_month: dict[tuple, dict[str, int]] = {}  # (party, month) -> totals (g REO)
        self.used_month: dict[tuple, int] = {}      # (party, period, cat) -> g used
        self._cur_key: tuple | None = None
        self.party_lots = Lists()  # party -> the lots it ever held, in the order it first held them
        # party -> its designations in log order as ledger/authority.py records them (index,
        # since_us, roles, until_us): the authority rule's view, the one `reledger verify` applies
        self.authority: dict[str, list] = {}
        # party -> the quota uses counted for it, [occ, category, year, g, group counted to, chain,
        # seq]: a membership change recorded late moves them between the groups' totals
        self.party_uses = Lists()
        if state is not None:
            state.attach(self)  # every attribute above, from the rows (see projections/state.py)

    # pickling (snapshots): the lots as plain tuples, several times cheaper than dataclasses
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["lots"] = {k: (v.party, v.product, v.origin, v.ref, v.ore, v.scrap_share, v.ionic_share,
                             v.conc_share, v.illegal)
                         for k, v in self.lots.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lots = state.get("lots")
        if lots and type(next(iter(lots.values()))) is tuple:
            state = {**state, "lots": {k: LotInfo(k, *v) for k, v in lots.items()}}
        self.__dict__.update(state)
        if "quota_sums" not in state or "timeline" not in state:
            # a snapshot taken before the running totals (or the business-time timelines)
            # existed: the store rolls forward from the start instead
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

    def p(self, name: str) -> Any:
        """A rule parameter as the regulator's entries set it (DOMAIN.md's default otherwise)."""
        v = self.params.get(name, RULE_PARAMETERS[name])
        return int(v) if name in INT_PARAMETERS else v

    def _resolve(self, d: Deltas, fact: str, ref: RawRef, occ: int, why: str) -> None:
        """Mark the open finding of ``fact`` resolved (a row of its own: the finding is never deleted)."""
        o = self.open.pop(fact, None)
        if o is None:
            return
        index, _occ, code, party, rule = o
        d.findings.append(Finding(rule, RESOLVED, party, f"{code} of log index {index} resolved: {why}",
                                  _dedupe([ref]), ref[3], occ,
                                  {"resolves": {"index": index, "code": code, "fact": fact}}))

    def _open(self, f: Finding, fact: str) -> None:
        f.params["fact"] = fact
        self.open[fact] = [f.index, f.occurred_us, f.code, f.party, f.rule]

    @staticmethod
    def _first_bad(events: Iterable[list[int]], bad, a: int = 0, b: int = 0) -> tuple[int, int, int] | None:
        """The first business time at which the running sums (a, b) of ``events`` (in order of
        business time) are bad (events of one business time taken together), starting from the
        sums (a, b) before the first of them: (time, a, b), or None."""
        t = None
        for e in events:
            if e[0] != t:
                if t is not None and bad(a, b):
                    return t, a, b
                t = e[0]
            a += e[1]
            b += e[2]
        if t is not None and bad(a, b):
            return t, a, b
        return None

    def _event(self, key: tuple, occ: int, a: int, b: int, totals: list[int], bad, fact: str,
               worsens: bool) -> tuple | None:
        """Add an event to a business-time timeline (``totals`` already include it). Returns None
        when the open/closed state of ``fact`` is unchanged, ("bad", (t, a, b)) when it becomes
        bad (t the first bad business time), ("cured",) when no business time is bad any more.

        Cheap in the usual cases: an event that can only make things worse leaves an open fact
        open, and on a closed one only the business times from its own on can turn bad (scanned
        from its place, which is at or near the end when entries come in business-time order); an
        event that can only make things better leaves a closed fact closed; only one that may
        cure an open fact scans the whole timeline (rare: a late quota, a correction)."""
        timeline = self.timeline
        timeline.insert(key, [occ, a, b])
        if fact not in self.open:
            if not worsens:
                return None
            sa = sb = 0
            for e in timeline.since(key, occ):
                sa += e[1]
                sb += e[2]
            # from the running sums before business time occ
            found = self._first_bad(timeline.since(key, occ), bad, totals[0] - sa, totals[1] - sb)
            return None if found is None else ("bad", found)
        if worsens:
            return None
        return ("cured",) if self._first_bad(timeline.all(key), bad) is None else None

    def _contribute(self, ref: RawRef, item: list) -> None:
        items = self.contrib.get((ref[0], ref[1]))
        if items is None:
            return  # not a flow entry of this fold (a correction's own reversal)
        items.append(tuple(item))

    def _move(self, d: Deltas, party: str, lot: str, product: str | None, g: int, reo_g: int, ref: RawRef,
              occurred_us: int) -> None:
        key = (party, lot)
        bal = self.stock.get(key)
        if bal is None:
            bal = self.stock[key] = [0, 0]
            self.party_lots.append(party, lot)  # its first move: the party holds the lot
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
        self._contribute(ref, ["stock", party, lot, product, occurred_us, g, reo_g])
        self._stock_event(d, party, lot, occurred_us, g, reo_g, ref)

    def _stock_event(self, d: Deltas, party: str, lot: str, occ: int, g: int, reo_g: int, ref: RawRef) -> None:
        """Stock is judged on the business-time axis: below zero at any business time is a finding
        (raised by the entry that makes it so, even recorded late), resolved when an entry cures it."""
        key = (party, lot)
        fact = f"NEGATIVE_STOCK/{party}/{lot}"
        change = self._event(("stock", party, lot), occ, g, reo_g, self.stock[key], _negative, fact,
                             g < 0 or reo_g < 0)
        if change is None:
            return
        if change[0] == "cured":
            self._resolve(d, fact, ref, occ, f"stock of lot {lot} at {party} is no longer below zero at any "
                                             "business time")
            return
        t, bg, breo = change[1]
        self._finding(d, "stock", "NEGATIVE_STOCK", party,
                      f"stock of lot {lot} at {party} would be {kg_text(bg)} kg ({kg_text(breo)} kg REO) at "
                      f"{encoding.micros_to_time_text(t)}: more left than the ledger shows came in by then",
                      list(self.stock_refs.get(key, ())), ref, t, lot=lot)
        self._open(d.findings[-1], fact)

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
                 ore: str | None = None, scrap_share: Decimal = D0, ionic_share: Decimal = D0,
                 conc_share: Decimal = D0, illegal: tuple | None = None) -> None:
        if lot not in self.lots:
            self.lots[lot] = LotInfo(lot, party, product, origin, ref, ore, scrap_share, ionic_share, conc_share,
                                     illegal)
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
        self.chain_hashes.append(chain, entry_hash)
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
        self.chain_hashes.append(e.chain, signed.hash)
        occurred_us = time_us(e.occurred_at) or recorded_us
        d = Deltas(occurred_us)
        body = e.body if isinstance(e.body, dict) else {}
        if self.due_shipments.due(recorded_us) or self.due_reports.due(recorded_us):
            self._due_checks(d, recorded_us, ref)
        if self.root is None:
            self.root = e.chain
        if index > 0:
            held = authority.roles_for(e.type, self.authority.get(e.chain, ()), index, recorded_us,
                                       e.chain == self.root)
            if not authority.may_assert(e.type, held):
                # DOMAIN.md "Authority": whoever wrote it into the database, it counts nowhere
                self._finding(d, "authority", "UNAUTHORIZED_ENTRY", e.chain,
                              f"{e.type} may not be asserted by {e.chain} (roles: "
                              f"{', '.join(sorted(held)) or 'none'}; it may be asserted by "
                              f"{authority.who_may(e.type)}): not counted by any projection", [], ref, occurred_us,
                              type=e.type, roles=sorted(held))
                return d
        if e.type in authority.DESIGNATION_TYPES and isinstance(body.get("party"), str):
            self._designate(e.type, body, index)
        handler = _HANDLERS.get(e.type)
        if e.type in FLOW_TYPES:
            self._cur_key = ref
            self.contrib[(e.chain, e.seq)] = [("meta", index, e.type, body.get("transfer_id"))]
        else:
            self._cur_key = None
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
                    self.due_reports.push((report_due_us(month, self.p("report_due_day")), e.chain, month))
        return d

    def _designate(self, type: str, body: dict, index: int) -> None:
        """The authority rule's record of a designation (as the ledger's key registry keeps it:
        a party registers once, the root regulator excepted)."""
        party = body["party"]
        history = self.authority.get(party)
        if type == "PartyRegistered" and history and party != self.root:
            return
        if type == "PartyDesignationChanged" and not history and party != self.root:
            return
        d = authority.designation(type, body, index, history[-1] if history else None, party == self.root)
        self.authority.setdefault(party, []).append(d)

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
            self._regroup(d, party, since, ref)
        d.parties.append((party, self.names.get(party, party), ",".join(sorted(roles)), b.get("province"), group,
                          since, until))

    def _on_GroupMembershipChanged(self, d, chain, b, ref, occ, rec) -> None:
        """A party is in at most one group at a time: JOINED moves it into the group named; LEFT
        takes it out of the group named only (it leaves no other group)."""
        since = time_us(b.get("effective_from")) or occ
        party, group = b["party"], b["group"]
        if b.get("action") == "JOINED":
            self.membership.setdefault(party, []).append((since, group))
        elif self.group_at(party, since) == group:
            self.membership.setdefault(party, []).append((since, None))
        else:
            return
        self._regroup(d, party, since, ref)

    def _on_RuleParameterSet(self, d, chain, b, ref, occ, rec) -> None:
        name = b["name"]
        if name in CALENDAR_PARAMETERS:
            try:  # the years it names replace theirs; the other years' calendars stay
                self.params[name] = merge_calendar(self.p(name), b["value"])
            except ValueError:
                pass  # not a calendar (written below the API, which refuses it): changes nothing
        elif name in RULE_PARAMETERS:
            self.params[name] = b["value"]

    # quota ------------------------------------------------------------------------------------
    def roles_ever(self, party: str) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for des in self.designations.get(party, ()):
            out |= des.roles
        return out

    def _on_AnnualTotalApproved(self, d, chain, b, ref, occ, rec) -> None:
        year = int(b["year"])
        for cat, name in (("MINING_ROCK", "mining_rock_t_reo"), ("MINING_IONIC", "mining_ionic_t_reo"),
                          ("SEPARATION", "separation_t_reo")):
            self.totals[(year, cat)] = t_to_grams(b.get(name, "0"))
            self.quota_refs.setdefault((year, "", cat), []).append(ref)
            self._check_totals(d, year, cat, ref, occ)

    def _check_totals(self, d: Deltas, year: int, cat: str, ref: RawRef, occ: int) -> None:
        """Batches issued for a year stay within the AnnualTotalApproved figures (once approved)."""
        total = self.totals.get((year, cat))
        if total is None:
            return
        issued = self.batch_sum.get((year, cat), 0)
        key = (year, cat)
        if issued > total and key not in self.over_total:
            self.over_total[key] = 1
            self._finding(d, "quota", "BATCHES_ABOVE_ANNUAL_TOTAL", chain_of(ref),
                          f"the batches issued for {year} ({cat}) exceed the annual total the State Council "
                          "approved (Decree 71 Art. 5, 6)", list(self.quota_refs.get((year, "", cat), []))[:10],
                          ref, occ, year=year, category=cat, issued_kg=kg_text(issued), approved_kg=kg_text(total),
                          confidential=["issued_kg", "approved_kg"])
        elif issued <= total:
            self.over_total.pop(key, None)

    def _on_QuotaBatchIssued(self, d, chain, b, ref, occ, rec) -> None:
        year, holder = int(b["year"]), b["holder"]
        self.basis[(year, holder)] = b.get("basis", "OUTPUT")
        self.first_batch.setdefault(year, ref[3])
        self._check_penalties_before_batch(d, year, ref, occ)
        amounts = {}
        for cat, name in (("MINING_ROCK", "mining_rock_t_reo"), ("MINING_IONIC", "mining_ionic_t_reo"),
                          ("SEPARATION", "separation_t_reo")):
            g = t_to_grams(b.get(name, "0"))
            amounts[cat] = g
            if g:
                k = (year, holder, cat)
                self.issued[k] = self.issued.get(k, 0) + g
                self.issued_nation[(year, cat)] = self.issued_nation.get((year, cat), 0) + g
                self.batch_sum[(year, cat)] = self.batch_sum.get((year, cat), 0) + g
                self.quota_refs.setdefault(k, []).append(ref)
                self.quota_refs.setdefault((year, "", cat), []).append(ref)
                self._quota(d, year, holder, cat, "ISSUED", g, None, ref, occ)
                self._limit(d, year, holder, cat, g, ref, occ, nation=True)
                self._check_totals(d, year, cat, ref, occ)
        self.quota_batches[(year, int(b["batch_no"]), holder)] = [occ, amounts, ref]

    def _on_QuotaSubAllocated(self, d, chain, b, ref, occ, rec) -> None:
        year, no = int(b["batch"]["year"]), int(b["batch"]["batch_no"])
        cat, g, ent = b["category"], t_to_grams(b["t_reo"]), b["enterprise"]
        self.alloc_out[(year, chain, cat)] = self.alloc_out.get((year, chain, cat), 0) + g
        self.alloc_in[(year, ent, cat)] = self.alloc_in.get((year, ent, cat), 0) + g
        self.quota_refs.setdefault((year, ent, cat), []).append(ref)
        if (year, chain) in self.basis:
            self.basis.setdefault((year, ent), self.basis[(year, chain)])
        self._quota(d, year, chain, cat, "SUBALLOCATED_OUT", g, None, ref, occ)
        self._quota(d, year, ent, cat, "SUBALLOCATED_IN", g, chain, ref, occ)
        self._limit(d, year, ent, cat, g, ref, occ, nation=False)
        # quota levels: within what the group holds of that batch, to members, in time
        batch = self.quota_batches.get((year, no, chain))
        k = (year, no, chain, cat)
        self.suballoc[k] = self.suballoc.get(k, 0) + g
        if batch is not None:
            held = batch[1].get(cat, 0)
            if self.suballoc[k] > held:
                self._finding(d, "quota", "SUBALLOCATION_ABOVE_BATCH", chain,
                              f"{chain} sub-allocated more {cat} of batch {no} of {year} than the batch gave it",
                              [batch[2]], ref, occ, year=year, batch_no=no, category=cat,
                              suballocated_kg=kg_text(self.suballoc[k]), held_kg=kg_text(held),
                              confidential=["suballocated_kg", "held_kg"])
            days = self.p("suballocation_working_days")
            holidays, makeup = _calendar(self.p("holidays")), _calendar(self.p("makeup_workdays"))
            deadline = add_working_days(batch[0], days, holidays, makeup)
            if occ >= deadline:
                first, last = date_of(batch[0]), date_of(deadline - 1)
                known = set(calendar_dates(self.p("holidays")))  # the years whose calendar is set
                unknown = [y for y in range(int(first[:4]), int(last[:4]) + 1) if y not in known]
                self._finding(d, "quota", "SUBALLOCATION_LATE", chain,
                              f"{chain} sub-allocated batch {no} of {year} to {ent} on {date_of(occ)}, more than "
                              f"{days} working days after the batch ({first}; the {days}th working day was {last})"
                              + (f"; the working-day calendar of {', '.join(map(str, unknown))} is not known "
                                 "(Monday to Friday counted)" if unknown else ""), [batch[2]], ref, occ,
                              year=year, batch_no=no, suballocation_working_days=days, last_working_day=last,
                              holidays=",".join(x for x in sorted(holidays) if first < x <= last),
                              makeup_workdays=",".join(x for x in sorted(makeup) if first < x <= last),
                              **({"calendar_unknown_years": unknown} if unknown else {}))
        if self.group_at(ent, occ) != chain:
            self._finding(d, "quota", "SUBALLOCATION_TO_NON_MEMBER", chain,
                          f"{chain} sub-allocated {cat} of {year} to {ent}, which is not its member on "
                          f"{date_of(occ)}", [], ref, occ, enterprise=ent, year=year, category=cat)

    def _on_QuotaReduced(self, d, chain, b, ref, occ, rec) -> None:
        year, holder, cat, g = int(b["year"]), b["holder"], b["category"], t_to_grams(b["t_reo"])
        self.reduced[(year, holder, cat)] = self.reduced.get((year, holder, cat), 0) + g
        # the national limit is what was issued less what was cut (as queries.quota shows it)
        self.issued_nation[(year, cat)] = self.issued_nation.get((year, cat), 0) - g
        self.quota_refs.setdefault((year, holder, cat), []).append(ref)
        self._quota(d, year, holder, cat, "REDUCED", g, None, ref, occ)
        self._limit(d, year, holder, cat, -g, ref, occ, nation=True)
        for pen in self.penalties:
            if pen[0] == holder and pen[1] == year:
                pen[4] = True

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

    def _limit(self, d: Deltas, year: int, holder: str, cat: str, g: int, ref: RawRef, occ: int, nation: bool) -> None:
        """A change of a holder's quota at its business time: its own level, its group level (for a
        group's indicator) and (issued and cut, not sub-allocated) the national level."""
        self._quota_key(d, ("enterprise", year, holder, cat), occ, 0, g, ref, holder)
        if "GROUP" in self.roles_ever(holder):
            self._quota_key(d, ("group", year, holder, cat), occ, 0, g, ref, holder)
        if nation:
            self._quota_key(d, ("nation", year, "", cat), occ, 0, g, ref, holder)

    def _use(self, d: Deltas, party: str, cat: str, g: int, ref: RawRef, occ: int) -> None:
        if g <= 0:
            return
        year = year_of(occ)
        grp = self.group_at(party, occ)
        self._contribute(ref, ["quota", party, cat, year, grp, occ, g])
        self.party_uses.append(party, [occ, cat, year, g, grp, ref[0], ref[1]])
        self._use_raw(d, party, cat, year, grp, occ, g, ref)

    def _regroup(self, d: Deltas, party: str, since: int, ref: RawRef) -> None:
        """A party's output counts to the group it belongs to at the output's business time: after
        a membership change effective from ``since`` (recorded late, perhaps), the uses from then
        on that were counted to another group move to the group of their time (rows of this
        entry; the groups' over-quota findings follow their timelines: raised or resolved)."""
        uses = self.party_uses
        for h, u in uses.each(party):  # in the order counted (a membership change: rare)
            occ_u, cat, year, g, old = u[0], u[1], u[2], u[3], u[4]
            if occ_u < since:
                continue
            new = self.group_at(party, occ_u)
            if new == old:
                continue
            u[4] = new
            uses.replace(party, h, u)
            for grp, sign in ((old, -1), (new, 1)):
                # USED rows of this entry: the party's and the nation's use are unchanged (the two
                # rows cancel), the group's moves
                # at the use's business time, so that a view valid at any time after the use shows
                # it in the group of its time (as of this entry's record time: it was not known before)
                self._quota(d, year, party, cat, "USED", sign * g, grp, ref, occ_u)
                if grp:
                    k = (year, grp, cat)
                    self.used_group[k] = self.used_group.get(k, 0) + sign * g
                    self._quota_key(d, ("group", year, grp, cat), occ_u, sign * g, 0, ref, party)

    def _use_raw(self, d: Deltas, party: str, cat: str, year: int, grp: str | None, occ: int, g: int,
                 ref: RawRef) -> None:
        k = (year, party, cat)
        self.used[k] = self.used.get(k, 0) + g
        if grp:
            self.used_group[(year, grp, cat)] = self.used_group.get((year, grp, cat), 0) + g
        self.used_nation[(year, cat)] = self.used_nation.get((year, cat), 0) + g
        for period in (month_of(occ), str(year)):
            mk = (party, period, cat)
            self.used_month[mk] = self.used_month.get(mk, 0) + g
        self._quota(d, year, party, cat, "USED", g, grp, ref, occ)
        self._quota_key(d, ("enterprise", year, party, cat), occ, g, 0, ref, party)
        if grp:
            self._quota_key(d, ("group", year, grp, cat), occ, g, 0, ref, party)
        self._quota_key(d, ("nation", year, "", cat), occ, g, 0, ref, party)

    def _quota_key(self, d: Deltas, key: tuple, occ: int, a: int, b: int, ref: RawRef, party: str) -> None:
        """Quota is judged on the business-time axis: cumulative use with business time <= t against
        cumulative quota with business time <= t, at every t."""
        tot = self.qtot.get(key)
        if tot is None:
            tot = self.qtot[key] = [0, 0]
        tot[0] += a
        tot[1] += b
        level, year, who, cat = key
        fact = f"OVER_QUOTA/{level}/{year}/{who}/{cat}"
        change = self._event(("quota",) + key, occ, a, b, tot, _over, fact, a > 0 or b < 0)
        if change is None:
            return
        if change[0] == "cured":
            self._resolve(d, fact, ref, occ, f"{cat} {year} at {level} level is within the quota at every "
                                             "business time")
            return
        t, used, limit = change[1]
        target = who or "nation"
        evidence = list(self.quota_refs.get((year, who or party, cat), []))[:10]
        if level == "enterprise":
            msg = (f"{cat} {year} at enterprise level ({who}): used {t_reo_text(used)} t REO against "
                   f"{t_reo_text(max(limit, 0))} t REO allocated by {encoding.micros_to_time_text(t)}")
        else:  # the group's and nation's figures are confidential: in params the server can strip
            msg = (f"{cat} {year} at {level} level ({target}): the {level}'s use is above its quota by "
                   f"{encoding.micros_to_time_text(t)}")
        self._finding(d, "quota", "OVER_QUOTA", party, msg, evidence, ref, t,
                      level=level, holder=target, year=year, category=cat, used_kg=kg_text(used),
                      limit_kg=kg_text(max(limit, 0)),
                      **({"confidential": ["used_kg", "limit_kg"]} if level != "enterprise" else {}))
        self._open(d.findings[-1], fact)

    # material flow --------------------------------------------------------------------------
    def _declared(self, d: Deltas, chain: str, field: str, declared: Any, computed: int, ref: RawRef, occ: int,
                  basis: str) -> int:
        """Declared quantities are checked, not trusted: a declared REO off the computed one by more
        than reo_tolerance_pct of it is a finding, and the computed REO is what counts; within the
        tolerance the declared figure stands (the lot's later lines state it). Returns what counts."""
        if declared is None:
            return computed
        dg = grams(declared)
        tol = Decimal(self.p("reo_tolerance_pct"))
        if Decimal(abs(dg - computed)) * 100 <= tol * computed:
            return dg
        self._finding(d, "quantities", "DECLARED_REO_MISMATCH", chain,
                      f"{field}: {kg_text(dg)} kg REO declared, {basis} = {kg_text(computed)} kg REO "
                      f"(tolerance {tol} % of the computed value); the computed REO counts",
                      [], ref, occ, field=field, declared_kg=kg_text(dg), computed_kg=kg_text(computed),
                      reo_tolerance_pct=str(tol))
        return computed

    @staticmethod
    def _reo(mass_g: int, pct: Any) -> int:
        try:
            return int((Decimal(mass_g) * Decimal(pct) / 100).to_integral_value())
        except (InvalidOperation, TypeError, ValueError):
            return 0

    def _on_MineralProductProduced(self, d, chain, b, ref, occ, rec) -> None:
        lot, ore = b["lot"], b.get("ore_type", "ROCK")
        illegal = None
        if "MINE" not in self.roles_at(chain, occ):
            self._finding(d, "designation", "NOT_DESIGNATED", chain,
                          f"{chain} recorded mining output at {encoding.micros_to_time_text(occ)} without a "
                          "designation as a mine at that time", [], ref, occ)
            illegal = (D1, [ref], chain, ref[3])
        dry = grams(b["dry_kg"])
        reo = self._declared(d, chain, "body.reo_kg", b.get("reo_kg"), self._reo(dry, b["treo_pct"]), ref, occ,
                             "dry_kg x treo_pct / 100")
        product = b.get("product", "RE_CONCENTRATE")
        self._new_lot(d, lot, chain, product, "MINE", ref, ore=ore, ionic_share=D1 if ore == "IONIC" else D0,
                      conc_share=D0 if ore == "IONIC" or product in _MIXED else D1, illegal=illegal)
        self._move(d, chain, lot, product, dry, reo, ref, occ)
        d.flow.append(("PRODUCTION", chain, None, chain, lot, product, dry, reo, b.get("site")))
        self._flows(chain, occ, "produced", reo)
        self._use(d, chain, "MINING_IONIC" if ore == "IONIC" else "MINING_ROCK", reo, ref, occ)

    def _on_ImportReceived(self, d, chain, b, ref, occ, rec) -> None:
        lot = b["lot"]
        g = grams(b["dry_kg"])
        reo = self._declared(d, chain, "body.reo_kg", b.get("reo_kg"), self._reo(g, b["treo_pct"]), ref, occ,
                             "dry_kg x treo_pct / 100")
        form = b.get("form")
        product = b.get("product") or ("MONAZITE_CONCENTRATE" if form == "MONAZITE" else None)
        mineral = (product_class(product) == "MINERAL" if product else
                   form in ("ORE", "CONCENTRATE", "MONAZITE", "MIXED_CARBONATE", "MIXED_OXIDE"))
        ore = b.get("ore_type") or ("MONAZITE" if form == "MONAZITE" else "ROCK")
        mixed = product in _MIXED if product else form in ("MIXED_CARBONATE", "MIXED_OXIDE")
        if mineral and self._recycler_only(chain, occ):
            self._finding(d, "designation", "RECYCLER_MINERAL_FEED", chain,
                          f"recycler {chain} imported rare earth mineral product {product or form} "
                          f"(lot {lot}) as feed", [], ref, occ)
        self._new_lot(d, lot, chain, product, "IMPORT", ref, ore=ore,
                      ionic_share=D1 if (mineral and ore == "IONIC") else D0,
                      conc_share=D1 if (mineral and ore != "IONIC" and not mixed) else D0)
        self._move(d, chain, lot, product, g, reo, ref, occ)
        d.flow.append(("IMPORT", f"customs:{b.get('customs_declaration_no')}", None, chain, lot, product, g, reo,
                       b.get("origin_country")))
        self._flows(chain, occ, "received", reo)

    def _on_SecondaryFeedReceived(self, d, chain, b, ref, occ, rec) -> None:
        lot = b["lot"]
        g = grams(b["kg"])
        reo = self._declared(d, chain, "body.reo_kg", b.get("reo_kg"), self._reo(g, b["treo_pct"]), ref, occ,
                             "kg x treo_pct / 100")
        self._new_lot(d, lot, chain, b.get("scrap_type"), "SCRAP", ref, scrap_share=D1)
        self._move(d, chain, lot, b.get("scrap_type"), g, reo, ref, occ)
        d.flow.append(("SCRAP", f"scrap:{b.get('source')}", None, chain, lot, b.get("scrap_type"), g, reo, None))
        self._flows(chain, occ, "received", reo)

    def _flows(self, party: str, occ: int, what: str, reo_g: int) -> None:
        """The plant-month totals (g REO) that a MonthlyFlowReportSubmitted must state."""
        k = (party, month_of(occ))
        t = self.flows_month.get(k)
        if t is None:
            t = self.flows_month[k] = {}
        t[what] = t.get(what, 0) + reo_g
        if self._cur_key is not None:
            self._contribute(self._cur_key, ["flows", party, k[1], what, reo_g])

    def _illegal_party(self, d: Deltas, party: str, lot: str, act: str, ref: RawRef, occ: int) -> None:
        """Decree 785 Art. 13/23: each party that receives, processes, sells or exports product of
        illegal source gets one finding (per source), citing the chain of evidence back to it."""
        info = self.lots.get(lot)
        if info is None or not info.illegal:
            return
        share, chain_refs, source, source_index = info.illegal
        if party == source:
            return  # its own output: NOT_DESIGNATED is its finding (one fact, one finding)
        key = (party, source_index)
        if key in self.illegal_seen:
            return
        self.illegal_seen[key] = 1
        self._finding(d, "illegal_source", "ILLEGAL_SOURCE", party,
                      f"{party} {act} lot {lot}, {share * 100:.2f} % of whose REO is of illegal source "
                      f"({source}, not designated at the time) (Decree 785 Art. 13, 23)", list(chain_refs),
                      ref, occ, lot=lot, source=source, share_pct=f"{share * 100:.2f}")

    def _batch(self, d, chain, b, ref, occ, kind: str) -> tuple[int, int, Decimal, Decimal, list]:
        """Consume inputs, produce outputs with proportional attribution; returns
        (REO in, REO out, scrap share, ionic share, inputs)."""
        inputs = []
        reo_in = 0
        scrap = Decimal(0)
        ionic = Decimal(0)
        conc = Decimal(0)
        illegal = Decimal(0)
        illegal_refs: list = []
        source = source_index = None
        for line in b.get("inputs", []):
            info = self.lots.get(line["lot"])
            self._illegal_party(d, chain, line["lot"], "processed", ref, occ)
            g, reo = self._take(d, chain, line["lot"], info.product if info else None, line.get("kg"),
                                line.get("reo_kg"), ref, occ)
            inputs.append((line["lot"], g, reo))
            reo_in += reo
            if info is not None:
                scrap += info.scrap_share * reo
                ionic += info.ionic_share * reo
                conc += info.conc_share * reo
                if info.illegal:
                    illegal += info.illegal[0] * reo
                    if not illegal_refs:
                        illegal_refs, source, source_index = list(info.illegal[1]), info.illegal[2], info.illegal[3]
        scrap_share = (scrap / reo_in) if reo_in and scrap else D0
        ionic_share = (ionic / reo_in) if reo_in and ionic else D0
        conc_share = (conc / reo_in) if reo_in and conc else D0
        lot_illegal = None
        if illegal and reo_in:
            # the evidence chain: the source, and the last batches it went through
            lot_illegal = (illegal / reo_in, illegal_refs[:1] + (illegal_refs[1:] + [ref])[-11:], source,
                           source_index)
        if kind == "SEPARATION" and "SEPARATION" not in self.roles_at(chain, occ):
            lot_illegal = (D1, [ref], chain, ref[3])  # separated by a party not designated for it
        reo_out = 0
        factors = reo_factor_table(date_of(occ))
        for i, out in enumerate(b.get("outputs", [])):
            g = grams(out["kg"])
            if kind == "SMELTING":
                reo = self._metal_reo(d, chain, i, out, g, factors, ref, occ)
            else:
                reo = grams(out["reo_kg"])
            reo_out += reo
            product = out.get("product")
            self._new_lot(d, out["lot"], chain, product, kind, ref, scrap_share=scrap_share,
                          ionic_share=ionic_share, conc_share=D0,
                          illegal=lot_illegal)
            self._move(d, chain, out["lot"], product, g, reo, ref, occ)
            for lot, _g_in, reo_in_lot in inputs:  # proportional attribution within the batch
                share = Decimal(reo_in_lot) / reo_in if reo_in else Decimal(0)
                d.flow.append((kind, chain, lot, chain, out["lot"], product,
                               int(Decimal(g) * share), int(Decimal(reo) * share), b.get("batch")))
        self._flows(chain, occ, "consumed", reo_in)
        self._flows(chain, occ, "output", reo_out)
        self._batch_shares = (ionic_share, conc_share)
        return reo_in, reo_out, scrap_share, ionic_share, inputs

    def _metal_reo(self, d, chain, i, out, g, factors, ref, occ) -> int:
        """A metal's REO = metal kg x the factor of the reference table in force; the stated factor
        must be the table's. Returns the computed REO (what counts)."""
        version, table = factors
        el = element_of(out.get("product"))
        stated = out.get("factor")
        factor = table.get(el) if el else None
        if factor is not None and stated is not None and Decimal(stated) != Decimal(factor):
            self._finding(d, "quantities", "WRONG_REO_FACTOR", chain,
                          f"body.outputs[{i}].factor: {stated} stated for {out.get('product')}, the reference "
                          f"table {version} says {factor}", [], ref, occ, field=f"body.outputs[{i}].factor",
                          stated=str(stated), table_factor=factor, table_version=version)
        if factor is None:
            factor = stated
        if factor is None:
            return grams(out.get("reo_kg"))
        computed = self._reo(g, Decimal(factor) * 100)
        return self._declared(d, chain, f"body.outputs[{i}].reo_kg", out.get("reo_kg"), computed, ref, occ,
                              f"kg x factor {factor}")

    def _on_SeparationBatchRecorded(self, d, chain, b, ref, occ, rec) -> None:
        if "SEPARATION" not in self.roles_at(chain, occ):
            self._finding(d, "designation", "NOT_DESIGNATED", chain,
                          f"{chain} recorded a separation batch at {encoding.micros_to_time_text(occ)} without a "
                          "designation as a separation plant at that time", [], ref, occ)
        reo_in, reo_out, scrap_share, ionic_share, _ = self._batch(d, chain, b, ref, occ, "SEPARATION")
        losses = grams(b.get("losses_reo_kg", "0"))
        self._flows(chain, occ, "losses", losses)
        # quota: on the indicator's basis; secondary feed's share is recorded apart, not counted
        basis = self.basis.get((year_of(occ), chain))
        if basis is None:
            grp = self.group_at(chain, occ)
            basis = self.basis.get((year_of(occ), grp), "OUTPUT") if grp else "OUTPUT"
        counted = reo_out if basis == "OUTPUT" else reo_in
        self._use(d, chain, "SEPARATION", int(Decimal(counted) * (1 - scrap_share)), ref, occ)
        # mass balance and yield
        if reo_in > 0:
            tol = Decimal(self.p("mass_balance_tolerance_pct"))
            if abs(reo_in - reo_out - losses) * 100 > tol * reo_in:
                self._finding(d, "mass_balance", "MASS_IMBALANCE", chain,
                              f"batch {b.get('batch')}: REO in {kg_text(reo_in)} kg != out {kg_text(reo_out)} kg + "
                              f"losses {kg_text(losses)} kg", [], ref, occ, mass_balance_tolerance_pct=str(tol))
            yield_pct = Decimal(reo_out) * 100 / reo_in
            band, used = self._band(self._batch_shares[0], self._batch_shares[1], b.get("outputs", []))
            top = Decimal(self.p("band_max_pct"))
            if yield_pct > top:
                self._finding(d, "mass_balance", "YIELD_ABOVE_100", chain,
                              f"batch {b.get('batch')}: yield {yield_pct:.2f}% of input REO is above {top}%: "
                              "unrecorded feed", [], ref, occ, yield_pct=f"{yield_pct:.2f}", band_max_pct=str(top))
            elif yield_pct < band:
                self._finding(d, "mass_balance", "YIELD_BELOW_BAND", chain,
                              f"batch {b.get('batch')}: yield {yield_pct:.2f}% is below the recovery band "
                              f"({band:.2f}%): possible diversion", [], ref, occ, yield_pct=f"{yield_pct:.2f}",
                              band_pct=f"{band:.2f}", **used)

    def _band(self, ionic: Decimal, conc: Decimal, outputs: list) -> tuple[Decimal, dict[str, str]]:
        """The recovery band of a batch by ore type of its feed (REO-weighted): ion-adsorption
        concentrate to separated products 94 %; rock-type concentrate to separated products
        92 % x 96 % = 88.32 %, to mixed RE 92 %; mixed RE (rock) to separated products 96 %."""
        to_mixed = Decimal(self.p("band_concentrate_to_mixed_pct"))
        mixed_sep = Decimal(self.p("band_mixed_to_separated_rock_pct"))
        ion = Decimal(self.p("band_ionic_pct"))
        only_mixed_out = bool(outputs) and all(o.get("product") in _MIXED for o in outputs)
        conc_band = to_mixed if only_mixed_out else to_mixed * mixed_sep / 100
        rest = 1 - ionic - conc
        if rest < 0:
            rest = D0
        band = ionic * ion + conc * conc_band + rest * mixed_sep
        return band, {"band_concentrate_to_mixed_pct": str(to_mixed), "band_mixed_to_separated_rock_pct":
                      str(mixed_sep), "band_ionic_pct": str(ion)}

    def _on_MetalSmelted(self, d, chain, b, ref, occ, rec) -> None:
        self._batch(d, chain, b, ref, occ, "SMELTING")

    def _on_TransferShipped(self, d, chain, b, ref, occ, rec) -> None:
        tid, buyer = b["transfer_id"], b["buyer"]
        lines = []
        for line in b["lines"]:
            self._illegal_party(d, chain, line["lot"], "sold", ref, occ)
            g, reo = self._take(d, chain, line["lot"], line.get("product"), line["kg"], line.get("reo_kg"), ref, occ)
            lines.append((line["lot"], line.get("product"), g, reo))
            d.flow.append(("TRANSFER", chain, line["lot"], buyer, line["lot"], line.get("product"), g, reo, tid))
            self._flows(chain, occ, "shipped", reo)
        shipped = time_us(b.get("shipped_at")) or occ
        days = self.p("receipt_within_days")
        self.shipments[(chain, tid)] = {"buyer": buyer, "lines": lines, "ref": ref, "received": False,
                                        "shipped_us": shipped, "days": days}
        # time-driven checks compare business times: a receipt with a business time within N days
        # may lawfully be entered up to the report deadline of its month; only after that can the
        # ledger say that none came
        due_business = shipped + days * DAY_US
        due = max(due_business, report_due_us(month_of(due_business), self.p("report_due_day")))
        self.due_shipments.push((due, chain, tid))

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
            self._flows(chain, occ, "received", reo or 0)
            received.append((line["lot"], line.get("product"), g))
            if recycler and product_class(line.get("product") or (info.product if info else None)) == "MINERAL":
                self._finding(d, "designation", "RECYCLER_MINERAL_FEED", chain,
                              f"recycler {chain} received rare earth mineral product {line.get('product')} "
                              f"(lot {line['lot']}) as feed", [ship["ref"]] if ship else [], ref, occ)
            self._illegal_party(d, chain, line["lot"], "received", ref, occ)
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
        days = ship.get("days", self.p("receipt_within_days"))
        got = time_us(b.get("received_at")) or occ
        if got - ship["shipped_us"] > days * DAY_US and not ship.get("late_raised"):
            ship["late_raised"] = True
            self._finding(d, "flow", "SHIPMENT_NOT_RECEIVED", seller,
                          f"transfer {tid} from {seller} to {chain} was received {encoding.micros_to_time_text(got)},"
                          f" not within {days} days of its shipment", [ship["ref"]], ref, occ,
                          buyer=chain, transfer_id=tid, receipt_within_days=days)
        shipped = sorted((x[0], x[1], x[2]) for x in ship["lines"])
        if sorted(received) != shipped:
            self._finding(d, "flow", "RECEIPT_MISMATCH", chain,
                          f"transfer {tid} from {seller}: the lines received differ from the lines shipped",
                          [ship["ref"]], ref, occ)

    def _on_ExportDeclared(self, d, chain, b, ref, occ, rec) -> None:
        self._illegal_party(d, chain, b["lot"], "exported", ref, occ)
        g, reo = self._take(d, chain, b["lot"], b.get("product"), b["kg"], b.get("reo_kg"), ref, occ)
        d.flow.append(("EXPORT", chain, b["lot"], f"export:{b.get('destination_country')}", None, b.get("product"),
                       g, reo, b.get("customs_declaration_no")))
        self._flows(chain, occ, "exported", reo)
        self._export_control(d, chain, b, ref, occ)

    def _export_control(self, d, chain, b, ref, occ) -> None:
        """Since 2025 exports of Sm, Gd, Tb, Dy, Lu, Sc and Y (oxides, compounds, metals, alloys,
        magnets) need a dual-use export licence valid on the export date."""
        since = str(self.p("export_control_since"))
        if date_of(occ) < since:
            return
        controlled = [e for e in str(self.p("controlled_elements")).split(",") if e]
        product = b.get("product")
        if product is None:
            info = self.lots.get(b["lot"])
            product = info.product if info else None
        hit = [e for e in elements_in(product) if e in controlled]
        if not hit:
            return
        lic = b.get("export_licence_no")
        start, until = time_us(b.get("licence_valid_from")), time_us(b.get("licence_valid_until"))
        valid = bool(lic) and start is not None and start <= occ and (until is None or occ < until)
        if not valid:
            why = ("no licence validity stated" if start is None else
                   "the licence is not valid on the export date")
            self._finding(d, "export", "EXPORT_WITHOUT_LICENCE", chain,
                          f"export of controlled {product} (lot {b['lot']}) on {date_of(occ)}: {why} "
                          "(MOFCOM Announcement 2025 No. 18)", [], ref, occ, product=product, elements=",".join(hit),
                          export_control_since=since, controlled_elements=",".join(controlled))

    def _stock_at(self, party: str, lot: str, t: int, before: bool = False) -> tuple[int, int]:
        """A party's stock of a lot valid at business time ``t`` (kg and REO in grams), as known now."""
        g = reo = 0
        for e in self.timeline.until(("stock", party, lot), t, inclusive=not before):
            g += e[1]
            reo += e[2]
        return g, reo

    def _on_StockCounted(self, d, chain, b, ref, occ, rec) -> None:
        """A count is compared with the books valid at its business time."""
        counted = grams(b["counted_kg"])
        if "lot" in b:
            book = self._stock_at(chain, b["lot"], occ)[0]
            what = f"lot {b['lot']}"
            refs = self.stock_refs.get((chain, b["lot"]), [])
        else:
            book = sum(self._stock_at(chain, lot, occ)[0] for lot in self.party_lots.values(chain)
                       if self.lots.get(lot) and self.lots[lot].product == b.get("product"))
            what = f"product {b.get('product')}"
            refs = []
        pct = Decimal(self.p("stock_count_tolerance_pct"))
        if abs(counted - book) > pct / 100 * max(book, 1):
            self._finding(d, "stock", "STOCK_COUNT_DIFFERENCE", chain,
                          f"{what}: counted {kg_text(counted)} kg, the books say {kg_text(book)} kg at "
                          f"{encoding.micros_to_time_text(occ)}", list(refs)[-5:],
                          ref, occ, counted_kg=kg_text(counted), book_kg=kg_text(book),
                          stock_count_tolerance_pct=str(pct))

    # reporting and enforcement ------------------------------------------------------------------
    def _on_MonthlyFlowReportSubmitted(self, d, chain, b, ref, occ, rec) -> None:
        month = b["month"]
        self.reports[(chain, month)] = ref[3]
        due = report_due_us(month, self.p("report_due_day"))
        if rec >= due:
            # one fact, one finding: the report came late; its REPORT_MISSING is resolved
            self._resolve(d, f"REPORT_MISSING/{chain}/{month}", ref, occ, f"the report for {month} arrived late")
            self._finding(d, "reporting", "REPORT_LATE", chain,
                          f"the flow report for {month} was recorded {encoding.micros_to_time_text(rec)}, after "
                          f"the due date {encoding.micros_to_time_text(due)}", [], ref, occ, month=month,
                          report_due_day=self.p("report_due_day"))
        if "first_seq" in b or "last_seq" in b:
            first, last = int(b["first_seq"]), int(b["last_seq"])
            covered = self.chain_hashes.range(chain, first, last)
        else:  # a month without entries: the digest of nothing (FORMAT: both absent)
            first, last, covered = 1, 0, []
        if covered is None or report_digest(covered) != b.get("digest"):
            self._finding(d, "reporting", "REPORT_DIGEST_MISMATCH", chain,
                          f"the flow report for {month} states a digest that does not match entries "
                          f"{first}..{last} of {chain}", [], ref, occ, month=month)
        # the plant-month balance: the totals stated must be what the ledger's entries say
        ledger = self.flows_month.get((chain, month), {})
        wrong = {}
        for total, what in (("produced_reo_kg", "produced"), ("received_reo_kg", "received"),
                            ("consumed_reo_kg", "consumed"), ("output_reo_kg", "output"),
                            ("shipped_reo_kg", "shipped"), ("exported_reo_kg", "exported"),
                            ("losses_reo_kg", "losses")):
            stated = (b.get("totals") or {}).get(total)
            if stated is None:
                continue
            if self._differs(grams(stated), ledger.get(what, 0)):
                wrong[total] = {"stated_kg": kg_text(grams(stated)), "ledger_kg": kg_text(ledger.get(what, 0))}
        stated = (b.get("totals") or {}).get("closing_stock_reo_kg")
        if stated is not None:
            end = legal_date_us(f"{_next_month(month)}-01")
            closing = max(sum(self._stock_at(chain, lot, end, before=True)[1]
                              for lot in self.party_lots.values(chain)), 0)
            if self._differs(grams(stated), closing):
                wrong["closing_stock_reo_kg"] = {"stated_kg": kg_text(grams(stated)), "ledger_kg": kg_text(closing)}
        if wrong:
            self._finding(d, "reporting", "FALSE_REPORT", chain,
                          f"the flow report for {month} states totals the ledger does not show: "
                          + ", ".join(f"{k} {v['stated_kg']} kg (ledger {v['ledger_kg']} kg)" for k, v in wrong.items())
                          + " (Decree 785 Art. 25)", [], ref, occ, month=month, totals=wrong,
                          report_tolerance_pct=self.p("report_tolerance_pct"))

    def _differs(self, stated: int, ledger: int, precision_g: int = 0) -> bool:
        """A stated figure off the ledger's by more than report_tolerance_pct of it (and more than
        the precision the figure is stated in: tonnes are stated to the kg)."""
        tol = Decimal(self.p("report_tolerance_pct"))
        diff = abs(stated - ledger)
        return diff > precision_g and Decimal(diff) * 100 > tol * ledger

    def _on_QuotaExecutionReported(self, d, chain, b, ref, occ, rec) -> None:
        period = b["period"]
        wrong = {}
        for line in b.get("lines", []):
            cat = line["category"]
            used = self._used_to(chain, period, cat)
            stated = t_to_grams(line["used_t_reo"])
            if self._differs(stated, used, precision_g=1000):
                wrong[cat] = {"stated_kg": kg_text(stated), "ledger_kg": kg_text(used)}
        if wrong:
            self._finding(d, "reporting", "FALSE_REPORT", chain,
                          f"the quota execution report for {period} states use the ledger does not show: "
                          + ", ".join(f"{k} {v['stated_kg']} kg REO (ledger {v['ledger_kg']} kg REO)"
                                      for k, v in wrong.items()) + " (Decree 785 Art. 25)", [], ref, occ,
                          period=period, used=wrong, report_tolerance_pct=self.p("report_tolerance_pct"))

    def _used_to(self, party: str, period: str, cat: str) -> int:
        """Quota used (business time) in a year (period YYYY) or in its months up to and including
        a month (period YYYY-MM): what a quota execution report states beside the allocation."""
        if len(period) == 4:
            return self.used_month.get((party, period, cat), 0)
        year, month = period[:4], int(period[5:7])
        return sum(self.used_month.get((party, f"{year}-{m:02d}", cat), 0) for m in range(1, month + 1))

    def _on_CorrectionRecorded(self, d, chain, b, ref, occ, rec) -> None:
        """From the correction's record time on, the corrected entry no longer counts: its stock
        and quota rows are reversed (rows of this entry: views as of an earlier time still show
        it), its flows leave the month's totals and the findings it raised are resolved."""
        if b.get("reason") not in ("INCORRECT_DATA", "DID_NOT_OCCUR"):
            return
        c = b["corrects"]
        key = (c["chain"], int(c["seq"]))
        if c["chain"] != chain or key in self.corrected:
            return
        self.corrected[key] = 1
        items = self.contrib.pop(key, None)
        if not items:
            return
        index = None
        for item in items:
            kind = item[0]
            if kind == "meta":
                index = item[1]
                if item[2] == "TransferShipped":
                    ship = self.shipments.get((chain, item[3]))
                    if ship is not None and not ship["received"]:
                        ship["received"] = ref  # nothing more is due
            elif kind == "stock":
                _, party, lot, product, t, g, reo = item
                bal = self.stock.setdefault((party, lot), [0, 0])
                bal[0] -= g
                bal[1] -= reo
                d.stock.append((party, lot, product, -g, -reo))
                self._stock_event(d, party, lot, t, -g, -reo, ref)
            elif kind == "quota":
                _, party, cat, year, grp, t, g = item
                uses = self.party_uses
                for h, u in uses.each(party):  # the group it is counted to now (a membership change moves it)
                    if (u[5], u[6], u[0], u[1], u[3]) == (key[0], key[1], t, cat, g):
                        grp = u[4]
                        uses.delete(party, h)
                        break
                self._use_raw(d, party, cat, year, grp, t, -g, ref)
            elif kind == "flows":
                _, party, month, what, reo = item
                tot = self.flows_month.get((party, month))
                if tot is not None:
                    tot[what] = tot.get(what, 0) - reo
        if index is not None:
            # quota and stock findings are resolved by the timelines (when nothing else keeps them
            # bad); the other findings the entry raised are resolved here
            d.findings.append(Finding("flow", RESOLVED, chain, f"the findings of log index {index} are resolved: "
                                      f"the entry was corrected ({b['reason']})", _dedupe([ref]), ref[3], occ,
                                      {"resolves": {"index": index, "code": "*", "fact": ""}}))

    def _on_ViolationFound(self, d, chain, b, ref, occ, rec) -> None:
        d.credit.append((b["party"], "VIOLATION", b.get("article"), None, 0,
                         f"{b.get('rule')}: {b.get('description')}"))

    def _on_PenaltyImposed(self, d, chain, b, ref, occ, rec) -> None:
        cut = t_to_grams(b.get("next_year_cut_t_reo", "0"))
        d.credit.append((b["party"], "PENALTY", b.get("article"), b.get("fine_cny"), cut, b.get("decision_no")))
        year = year_of(occ) + 1
        if cut > 0 and year not in self.first_batch:
            self.penalties.append([b["party"], year, cut, ref, False])

    def _check_penalties_before_batch(self, d: Deltas, year: int, ref: RawRef, occ: int) -> None:
        """Decree 71 Art. 14: a penalty's next-year cut is applied (QuotaReduced) before that
        year's first batch; otherwise a finding on the regulator's side."""
        if self.first_batch.get(year) != ref[3]:
            return
        for pen in self.penalties:
            if pen[1] == year and not pen[4]:
                pen[4] = True
                self._finding(d, "quota", "PENALTY_CUT_NOT_APPLIED", ref[0],
                              f"the first quota batch of {year} was issued without the cut that a penalty "
                              f"imposed on {pen[0]} for {year} (Decree 71 Art. 14)", [pen[3]], ref, occ,
                              penalized=pen[0], year=year, cut_kg=kg_text(pen[2]))

    # time-driven rules --------------------------------------------------------------------------
    def _due_checks(self, d: Deltas, now_us: int, ref: RawRef) -> None:
        while self.due_shipments.due(now_us):
            due, seller, tid = self.due_shipments.pop()
            ship = self.shipments.get((seller, tid))
            if ship and not ship["received"] and not ship.get("late_raised"):
                ship["late_raised"] = True
                days = ship.get("days", self.p("receipt_within_days"))
                d.findings.append(Finding(
                    "flow", "SHIPMENT_NOT_RECEIVED", seller,
                    f"transfer {tid} from {seller} to {ship['buyer']} was not received within "
                    f"{days} days", [_as_ref(ship["ref"])], ref[3], ship["shipped_us"] + days * DAY_US,
                    {"buyer": ship["buyer"], "transfer_id": tid, "receipt_within_days": days}))
        while self.due_reports.due(now_us):
            due, party, month = self.due_reports.pop()
            if (party, month) not in self.reports:
                f = Finding("reporting", "REPORT_MISSING", party,
                            f"no flow report for {month} by the due date {encoding.micros_to_time_text(due)}",
                            [_as_ref(self.month_refs[(party, month)])], ref[3], due,
                            {"month": month, "report_due_day": self.p("report_due_day")})
                d.findings.append(f)
                self._open(f, f"REPORT_MISSING/{party}/{month}")

    def _timeliness(self, d: Deltas, party: str, type: str, ref: RawRef, occ: int, rec: int) -> None:
        """Entering last month's flows up to the report deadline is lawful (Decree 71 Art. 10);
        beyond it, an entry recorded more than backdating_days after its business time is flagged."""
        days = self.p("backdating_days")
        month = month_of(occ)
        in_window = (month_of(rec) == _next_month(month)
                     and rec < report_due_us(month, self.p("report_due_day")))
        if rec - occ > days * DAY_US and not in_window:
            self._finding(d, "timeliness", "BACKDATED", party,
                          f"{type} recorded {encoding.micros_to_time_text(rec)}, {(rec - occ) // DAY_US} days after "
                          f"its business time {encoding.micros_to_time_text(occ)} (outside the reporting window of "
                          "its month)", [], ref, occ, days=(rec - occ) // DAY_US, backdating_days=days)
        elif occ - rec > DAY_US:
            self._finding(d, "timeliness", "FUTURE_DATED", party,
                          f"{type} has a business time {encoding.micros_to_time_text(occ)} after it was recorded",
                          [], ref, occ)


# entry type -> Projector._on_<type>
_HANDLERS = {name[4:]: fn for name, fn in vars(Projector).items() if name.startswith("_on_")}


_MIXED = frozenset({"MIXED_CARBONATE", "MIXED_CHLORIDE", "MIXED_OXIDE"})


def chain_of(ref: RawRef) -> str:
    return ref[0]


@functools.lru_cache(maxsize=16)
def _calendar(text: str) -> frozenset[str]:
    """The dates (YYYY-MM-DD) of a calendar parameter's value, all years together."""
    try:
        return frozenset().union(*calendar_dates(text).values())
    except ValueError:
        return frozenset()


def add_working_days(start_us: int, days: int, holidays: frozenset[str] = frozenset(),
                     makeup: frozenset[str] = frozenset()) -> int:
    """The end (24:00 CST) of the ``days``-th working day after the legal day of ``start_us``: a
    working day is Monday to Friday (legal time) and not one of ``holidays``, or one of the
    make-up working days ``makeup`` (调休), dates YYYY-MM-DD."""
    day = (start_us + LEGAL_OFFSET_US) // DAY_US
    n = 0
    while n < days:
        day += 1
        text = _day(day)[2]
        # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays
        if text in makeup or ((day + 3) % 7 < 5 and text not in holidays):
            n += 1
    return (day + 1) * DAY_US - LEGAL_OFFSET_US


def _next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + 1:04d}-01" if m == 12 else f"{y:04d}-{m + 1:02d}"


def _negative(a: int, b: int) -> bool:
    return a < 0 or b < 0


def _over(used: int, limit: int) -> bool:
    # the allocation is what was issued less what was reduced, never below zero: a cut recorded
    # before the year's quota is issued raises nothing by itself
    return used > (limit if limit > 0 else 0)


def _dedupe(refs: list[RawRef]) -> list[Ref]:
    seen, out = set(), []
    for r in refs:
        r = _as_ref(r)
        if r.index not in seen:
            seen.add(r.index)
            out.append(r)
    return out
