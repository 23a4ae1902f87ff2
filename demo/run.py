"""``reledger demo``: a year of rare earth flows, end to end, through the command API.

A deterministic simulation (``--seed``) of the 2024 control year: the regulator registers the
cast and their keys, approves the annual totals and issues two quota batches shaped like the
published 2024 figures; the two quota groups sub-allocate to their members; mines of both ore
types produce lots and ship them; separation plants receive, separate (yields inside the
recovery bands) and ship oxides; a plant imports monazite; a smelter makes metal; an exporter
exports with customs declarations; a recycler takes scrap; everyone counts stock and reports
monthly. Every entry is signed with the party's own key and goes through
:class:`reledger.commands.api.CommandAPI`; record times follow the simulated calendar (the store's clock).

A handful of violations are seeded (see :data:`SEEDED`); the projections must find each of them
with its evidence, and nothing else.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import Progress

from reledger.commands.api import CommandAPI
from reledger.commands.catalogue import report_digest
from reledger.ledger import encoding
from reledger.ledger.cosignature import log_signer
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.projections import queries
from reledger.projections.hooks import ProjectionFindings
from reledger.projections.store import ProjectionStore
from reledger.storage.reader import DatabaseURL, LogReader
from reledger.storage.store import LedgerStore

from .summary import print_summary, summarize

YEAR = 2024
UTC = timezone.utc
HOUR = 3600 * 1_000_000
DAY = 24 * HOUR
ORIGIN = "reledger.example/demo"

#: The seeded violations: what the projections must find (codes) and for whom.
SEEDED = {
    "over_separation_quota": {"codes": {"OVER_QUOTA"}, "what": "a separation plant over its separation quota"},
    "shipment_never_received": {"codes": {"SHIPMENT_NOT_RECEIVED"}, "what": "a shipment never received"},
    "yield_above_100": {"codes": {"YIELD_ABOVE_100", "MASS_IMBALANCE"},
                        "what": "a separation batch yielding more than 100% of its input REO"},
    "recycler_takes_concentrate": {"codes": {"RECYCLER_MINERAL_FEED"}, "what": "a recycler taking concentrate"},
    "late_monthly_report": {"codes": {"REPORT_MISSING", "REPORT_LATE"}, "what": "a late monthly report"},
    "backdated_entry": {"codes": {"BACKDATED"}, "what": "a backdated entry"},
    "under_declared_lot": {"codes": {"DECLARED_REO_MISMATCH"},
                           "what": "a mined lot declaring less REO than its dry mass x TREO % (written below the "
                                   "command API, which refuses it)"},
    "false_monthly_total": {"codes": {"FALSE_REPORT"},
                            "what": "a monthly flow report stating a production total the ledger does not show"},
}


def us(dt: datetime) -> int:
    return encoding.time_to_micros(dt)


def ts(micros: int) -> str:
    return encoding.micros_to_time_text(micros - micros % 1_000_000)


def kg(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1000)


def t_text(value: Decimal) -> str:
    return encoding.decimal_text(value.quantize(Decimal("0.001"), rounding=ROUND_DOWN))


def seeded_bytes(seed: int, label: str, n: int = 32) -> bytes:
    """``n`` bytes derived from the demo's seed and a label (HKDF-SHA256): a party's private
    key, the command ids. The same seed gives the same keys, entries and so the same root, on
    either backend; the keys of one party do not depend on who else is in the cast."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=n, salt=b"reledger demo " + str(seed).encode(),
                info=label.encode()).derive(b"reledger demo seed")


class SeededSigner(ChainSigner):
    """A chain signer whose command ids come from the seed (a random UUID would change every
    entry hash, and so the root, from one run to the next)."""

    def __init__(self, key: SigningKey, seed: int):
        super().__init__(key)
        self._seed, self._n = seed, 0

    def sign(self, type: str, body: dict, occurred_at: str, command_id: str | None = None):
        if command_id is None:
            import uuid

            self._n += 1
            raw = seeded_bytes(self._seed, f"command {self.chain} {self._n}", 16)
            command_id = str(uuid.UUID(bytes=raw, version=4))
        return super().sign(type, body, occurred_at, command_id)


@dataclass
class Party:
    id: str
    name: str
    roles: list[str]
    province: str
    group: str | None = None
    kind: str = ""  # mine-rock, mine-ionic, plant-rock, plant-ionic, plant-import, smelter, recycler, exporter
    key: SigningKey | None = None
    signer: ChainSigner | None = None
    hashes: list[bytes] = field(default_factory=list)  # entry hashes by seq - 1
    reported_seq: int = 0  # last seq covered by a monthly report
    inventory: dict[str, list] = field(default_factory=dict)  # lot -> [product, g, reo_g, origin]
    short: str = ""


class Demo:
    year = YEAR  # the control year simulated
    seeded = SEEDED  # the seeded violations (what the summary checks the findings against)

    def __init__(self, url: str, out: Path, seed: int, scale: str, log: Callable[[str], None]):
        self.url, self.out, self.seed, self.scale, self.log = url, out, seed, scale, log
        self.rng = random.Random(seed)
        self.now = us(datetime(YEAR, 1, 1, tzinfo=UTC))
        self.store = LedgerStore(url, clock=lambda: self.now)
        self.projections = ProjectionStore(url)
        # at small scale every append answers its findings (as the HTTP API does); at year scale
        # the projections catch up once at the end (a rebuild's speed, not one per batch)
        self.api = CommandAPI(self.store, findings_hook=ProjectionFindings(self.projections)
                              if scale == "small" else None)
        self.window = HOUR if scale == "small" else 6 * HOUR
        self.heap: list[tuple[int, int, Callable[[], None]]] = []
        self._n = 0
        self.parties: dict[str, Party] = {}
        self.pending: list[tuple[Party, Any]] = []
        self.pending_since = 0
        self.batch_size = 1 if scale == "small" else 400
        self.entries = 0
        self.seeded_where: dict[str, dict[str, Any]] = {}
        self.lot_no = 0
        self.transfer_no = 0
        self.raised: list[dict] = []

    # --- plumbing ------------------------------------------------------------------------
    def at(self, when_us: int, action: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self.heap, (when_us, self._n, action))

    def submit(self, p: Party, type: str, body: dict, occurred_us: int) -> None:
        if not self.pending:
            self.pending_since = self.now
        signed = p.signer.sign(type, body, ts(occurred_us))
        p.hashes.append(signed.hash)
        self.pending.append((p, signed))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        groups = [[s] for _, s in self.pending]
        results = self.api.submit_groups(groups)
        for (p, s), r in zip(self.pending, results):
            if isinstance(r, Exception):
                raise RuntimeError(f"demo entry refused: {p.id} {s.entry.type}: {r}")
            for rec in r:
                self.raised += list(rec.findings)
        self.entries += len(self.pending)
        self.pending = []

    def run_until(self, end_us: int, progress: Callable[[int], None] | None = None) -> None:
        while self.heap and self.heap[0][0] <= end_us:
            when, _, action = heapq.heappop(self.heap)
            if self.pending and when - self.pending_since > self.window:
                self.flush()  # a batch spans at most `window` of simulated time (its record time)
            self.now = max(self.now, when)
            action()
            if progress:
                progress(self.now)
        self.flush()

    def new_lot(self, prefix: str) -> str:
        self.lot_no += 1
        return f"{prefix}-{self.lot_no:06d}"

    # --- the cast --------------------------------------------------------------------------
    #: readable, fixed ids (shaped like unified social credit codes: 91 + admin code + 10) for the
    #: small scale, so that README's walk-through can name them
    SMALL_IDS = {"mine-rock-N": "BAYANOBO", "mine-rock-C": "MIANNING", "mine-ionic-J": "LONGNAN1",
                 "mine-ionic-G": "PINGYUAN", "plant-rock-N": "BAOTOUSP", "plant-rock-C": "LESHANSP",
                 "plant-ionic": "GANZHOUS", "plant-import": "LIYANGSP", "smelter": "GZSMELT1",
                 "exporter": "SHEXPORT", "recycler": "GZRECYCL"}
    KIND_CODES = {"mine": "11", "plant": "22", "smelter": "33", "exporter": "44", "recycler": "55"}

    def credit_code(self, admin: str, kind: str, i: int) -> str:
        code = self.KIND_CODES[kind.split("-")[0]]
        if self.scale == "small":
            return "91" + admin + code + self.SMALL_IDS[kind]
        return "91" + admin + code + f"{kind.split('-')[-1][:2].upper()}{i + 1:06d}"

    def cast(self) -> None:
        rng = self.rng
        reg = Party("MIIT", "Ministry of Industry and Information Technology", ["REGULATOR"], "Beijing", kind="regulator")
        rng.randbytes(64)  # (the keys once came from here: kept, so that the simulation draws as before)
        reg.key = SigningKey.from_seed("MIIT", seeded_bytes(self.seed, "key MIIT"))
        reg.signer = SeededSigner(reg.key, self.seed)
        self.reg = reg
        # the log's checkpoint key pair: Ed25519 and its ML-DSA-44 half (post-quantum checkpoints,
        # FORMAT.md 5.4), both from the seed; ML-DSA-44 signatures are randomized, so a re-run
        # gives the same ledger and roots with other ML-DSA-44 signature bytes
        self.operator = SigningKey.from_seed("MIIT", seeded_bytes(self.seed, "checkpoint key"), "checkpoint", name=ORIGIN,
                                             mldsa_seed=seeded_bytes(self.seed, "checkpoint ML-DSA-44 key"))
        self.parties["MIIT"] = reg
        n_mines = {"small": (1, 1, 1, 1), "year": (10, 6, 8, 6)}[self.scale]
        n_plants = {"small": (1, 1, 1, 1), "year": (14, 10, 12, 4)}[self.scale]
        cast: list[Party] = [
            Party("CHINA-NORTHERN-RE", "China Northern Rare Earth (Group) High-Tech Co.", ["GROUP"], "Inner Mongolia",
                  kind="group"),
            Party("CHINA-RE-GROUP", "China Rare Earth Group Co.", ["GROUP"], "Jiangxi", kind="group"),
            Party("NAO-AUDIT", "National Audit Office, resources audit", ["AUDITOR"], "Beijing", kind="auditor"),
        ]
        places = {
            "mine-rock-N": ("150200", "Inner Mongolia", "Bayan Obo mine", "CHINA-NORTHERN-RE"),
            "mine-rock-C": ("513400", "Sichuan", "Mianning Maoniuping mine", "CHINA-RE-GROUP"),
            "mine-ionic-J": ("360700", "Jiangxi", "Longnan ion-adsorption mine", "CHINA-RE-GROUP"),
            "mine-ionic-G": ("441400", "Guangdong", "Pingyuan ion-adsorption mine", "CHINA-RE-GROUP"),
            "plant-rock-N": ("150200", "Inner Mongolia", "Baotou separation plant", "CHINA-NORTHERN-RE"),
            "plant-rock-C": ("511100", "Sichuan", "Leshan separation plant", "CHINA-RE-GROUP"),
            "plant-ionic": ("360700", "Jiangxi", "Ganzhou separation plant", "CHINA-RE-GROUP"),
            "plant-import": ("320481", "Jiangsu", "Liyang separation plant (monazite importer)", "CHINA-RE-GROUP"),
        }
        for kinds, counts in ((("mine-rock-N", "mine-rock-C", "mine-ionic-J", "mine-ionic-G"), n_mines),
                              (("plant-rock-N", "plant-rock-C", "plant-ionic", "plant-import"), n_plants)):
            for kind, count in zip(kinds, counts):
                admin, prov, name, group = places[kind]
                for i in range(count):
                    role = "MINE" if kind.startswith("mine") else "SEPARATION"
                    label = name if count == 1 else f"{name} no. {i + 1}"
                    p = Party(self.credit_code(admin, kind, i), label, [role], prov, group, kind)
                    p.short = kind.split("-")[0][0].upper() + kind.split("-")[-1][:1].upper() + f"{i + 1:02d}"
                    cast.append(p)
        others = {"small": 1, "year": 6}[self.scale]
        for i in range(others):
            cast.append(Party(self.credit_code("360700", "smelter", i), f"Ganzhou rare earth metal smelter no. {i + 1}", ["SMELTER"],
                              "Jiangxi", "CHINA-RE-GROUP", "smelter", short=f"SM{i + 1:02d}"))
            cast.append(Party(self.credit_code("310115", "exporter", i), f"Shanghai rare earth trading and export co. no. {i + 1}",
                              ["EXPORTER"], "Shanghai", None, "exporter", short=f"EX{i + 1:02d}"))
            cast.append(Party(self.credit_code("360700", "recycler", i), f"Ganzhou magnet recycling co. no. {i + 1}", ["RECYCLER"],
                              "Jiangxi", None, "recycler", short=f"RC{i + 1:02d}"))
        for p in cast:
            rng.randbytes(32)
            p.key = SigningKey.from_seed(p.id, seeded_bytes(self.seed, f"key {p.id}"))
            p.signer = SeededSigner(p.key, self.seed)
            self.parties[p.id] = p
        self.cast_list = cast
        keys = self.out / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        for p in [reg] + cast:  # run_demo refused a folder that already held key files
            p.key.write(keys / f"{p.id}.key", overwrite=True)
        self.operator.write(keys / "operator.key", overwrite=True)

    def of(self, kind: str) -> list[Party]:
        return [p for p in self.cast_list if p.kind == kind or p.kind.startswith(kind + "-") or
                (kind.endswith("*") and p.kind.startswith(kind[:-1]))]

    # --- registration and quota ----------------------------------------------------------------
    def register(self) -> None:
        t0 = self.now
        reg = self.reg
        self.store.append(genesis_entries(reg.signer, self.operator, name=reg.name, origin=ORIGIN, at=ts(t0)))
        reg.hashes = [b"\0" * 32] * 3  # genesis entries: not covered by reports
        self.entries += 3
        self.signer = log_signer(self.operator)
        t = t0 + HOUR
        for p in self.cast_list:
            body = {"party": p.id, "name": p.name, "roles": p.roles, "province": p.province,
                    "valid_from": ts(t0)}
            if p.group and "GROUP" not in p.roles and p.kind != "smelter":
                body["group"] = p.group
            if "MINE" in p.roles:
                body["licence"] = f"C{p.id[2:8]}2024{self.rng.randint(1000, 9999)}"
            self.submit(reg, "PartyRegistered", body, t)
            self.submit(reg, "KeyAuthorized", key_authorized_body(p.key, ts(t0), reason="registration"), t)
            t += 60 * 1_000_000
        self.now = t
        self.flush()

    def quota(self) -> None:
        """Annual totals and two batches shaped like 2024's; the groups sub-allocate within
        ten working days. The demo's members receive their modelled share."""
        reg = self.reg
        jan3 = us(datetime(YEAR, 1, 3, 9, tzinfo=UTC))
        self.at(jan3, lambda: self.submit(reg, "AnnualTotalApproved", {
            "year": YEAR, "mining_rock_t_reo": "250850", "mining_ionic_t_reo": "19150", "separation_t_reo": "254000",
            "approval_ref": "State Council approval 2024-RE-01"}, jan3))
        batches = [  # (day, batch, {group: (rock, ionic, separation)})
            (datetime(YEAR, 1, 5, 9, tzinfo=UTC), 1, {"CHINA-NORTHERN-RE": ("94580", "0", "88010"),
                                                      "CHINA-RE-GROUP": ("30280", "10140", "38990")}),
            (datetime(YEAR, 7, 1, 9, tzinfo=UTC), 2, {"CHINA-NORTHERN-RE": ("101000", "0", "100000"),
                                                      "CHINA-RE-GROUP": ("24990", "9010", "27000")}),
        ]
        for day, no, holders in batches:
            for i, (holder, (rock, ionic, sep)) in enumerate(holders.items()):
                when = us(day) + i * 60_000_000
                body = {"year": YEAR, "batch_no": no, "document_no": f"MIIT-MNR-{YEAR}-{no}-{i + 1}", "holder": holder,
                        "mining_rock_t_reo": rock, "mining_ionic_t_reo": ionic, "separation_t_reo": sep,
                        "basis": "OUTPUT"}
                self.at(when, lambda b=body, w=when: self.submit(reg, "QuotaBatchIssued", b, w))
            alloc_day = us(day) + 7 * DAY
            share = Decimal("0.5")
            for j, p in enumerate(self.of("mine") + self.of("plant")):
                when = alloc_day + j * 600_000_000
                self.at(when, lambda p=p, no=no, share=share, w=when: self._suballocate(p, no, share, w))

    def _suballocate(self, p: Party, no: int, share: Decimal, when: int) -> None:
        group = self.parties[p.group]
        cat = ("MINING_IONIC" if p.kind.startswith("mine-ionic") else
               "MINING_ROCK" if p.kind.startswith("mine-rock") else "SEPARATION")
        annual = self.annual_allocation(p)
        if p.kind == "plant-ionic" and p is self.of("plant-ionic")[0]:
            # the seeded over-quota plant: its allocation is below what its feed will give
            annual = annual * Decimal("0.80")
            share = Decimal("0.62") if no == 1 else Decimal("0.38")
        self.submit(group, "QuotaSubAllocated", {"batch": {"year": YEAR, "batch_no": no}, "enterprise": p.id,
                                                 "category": cat, "t_reo": t_text(annual * share)}, when)

    # expected annual REO (t) per producer: lots a month x lot size
    LOTS_PER_MONTH = {"small": 2, "year": 185}
    #: the year scale models the whole national indicator: mines use about 80% of their group's
    GROUP_ISSUED_T = {("CHINA-NORTHERN-RE", "mine-rock"): Decimal("195580"),
                      ("CHINA-RE-GROUP", "mine-rock"): Decimal("55270"),
                      ("CHINA-RE-GROUP", "mine-ionic"): Decimal("19150")}

    def lot_reo_t(self, p: Party) -> Decimal:
        if self.scale == "small":
            return Decimal("180") if p.kind.startswith("mine-rock") else Decimal("55")
        family = "mine-rock" if p.kind.startswith("mine-rock") else "mine-ionic"
        peers = [q for q in self.of("mine") if q.group == p.group and q.kind.startswith(family)]
        issued = self.GROUP_ISSUED_T[(p.group, family)]
        return (issued * Decimal("0.8") / (len(peers) * self.LOTS_PER_MONTH["year"] * 12)).quantize(Decimal("0.001"))

    def annual_allocation(self, p: Party) -> Decimal:
        lots = self.LOTS_PER_MONTH[self.scale] * 12
        if p.kind.startswith("mine"):
            return self.lot_reo_t(p) * lots * Decimal("1.15")
        feeders = {"plant-rock-N": "mine-rock-N", "plant-rock-C": "mine-rock-C", "plant-ionic": "mine-ionic"}
        if p.kind == "plant-import":
            return Decimal("1200") if self.scale == "small" else Decimal("300")
        mines = self.of(feeders[p.kind])
        plants = self.of(p.kind)
        per_mine = self.lot_reo_t(mines[0]) * lots
        return per_mine * len(mines) / len(plants) * Decimal("1.10")

    # --- the year of material flows --------------------------------------------------------------
    def schedule_year(self) -> None:
        rng = self.rng
        lots = self.LOTS_PER_MONTH[self.scale]
        start = us(datetime(YEAR, 1, 15, tzinfo=UTC))
        end = us(datetime(YEAR, 12, 20, tzinfo=UTC))
        mines = self.of("mine")
        plants_for = {"mine-rock-N": self.of("plant-rock-N"), "mine-rock-C": self.of("plant-rock-C"),
                      "mine-ionic-J": self.of("plant-ionic"), "mine-ionic-G": self.of("plant-ionic")}
        step = (end - start) // (lots * 12)
        for m in mines:
            targets = plants_for[m.kind]
            for k in range(lots * 12):
                when = start + k * step + rng.randint(0, step // 2)
                self.at(when, lambda m=m, t=targets[k % len(targets)], k=k: self.produce_and_ship(m, t, k))
        # plants separate twice a month; ship oxides on; smelters smelt monthly; exporters export
        for month in range(1, 13):
            for day in (14, 28):
                for p in self.of("plant"):
                    when = us(datetime(YEAR, month, day, 10, tzinfo=UTC)) + rng.randint(0, 6) * HOUR
                    self.at(when, lambda p=p: self.separate(p))
            for p in self.of("smelter"):
                self.at(us(datetime(YEAR, month, 20, 9, tzinfo=UTC)), lambda p=p: self.smelt(p))
            for p in self.of("exporter"):
                self.at(us(datetime(YEAR, month, 25, 9, tzinfo=UTC)), lambda p=p: self.export(p))
            for p in self.of("recycler"):
                self.at(us(datetime(YEAR, month, 8, 9, tzinfo=UTC)), lambda p=p: self.scrap(p))
            if month % 3 == 1:
                for p in self.of("plant-import"):
                    self.at(us(datetime(YEAR, month, 6, 9, tzinfo=UTC)), lambda p=p: self.import_monazite(p))
            if month == 8:  # the seeded backdated entry: an import recorded 46 days after arrival
                p = self.of("plant-import")[0]
                self.at(us(datetime(YEAR, 8, 21, 9, tzinfo=UTC)), lambda p=p: self.import_monazite(p, True))
            if month % 3 == 0:
                for p in self.of("plant") + self.of("recycler"):
                    self.at(us(datetime(YEAR, month, 27, 16, tzinfo=UTC)), lambda p=p: self.count_stock(p))
            # monthly reports for the previous month, before the 10th
            first = datetime(YEAR, month, 1, tzinfo=UTC)
            nxt = datetime(YEAR + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            for p in [q for q in self.cast_list if q.kind not in ("group", "auditor")]:
                day = rng.randint(2, 7)
                when = us(nxt + timedelta(days=day, hours=rng.randint(1, 8)))
                if p is self.late_reporter and month == 3:
                    when = us(datetime(YEAR, 4, 18, 10, tzinfo=UTC))
                    self.seeded_where["late_monthly_report"] = {"party": p.id, "month": first.strftime("%Y-%m")}
                self.at(when, lambda p=p, m=first.strftime("%Y-%m"): self.report(p, m))
            # a checkpoint at every month's end
            self.at(us(nxt) - 1, lambda: self.checkpoint())

    def next_year_quota(self) -> None:
        """The 2025 first batch (illustrative: from 2025 the figures are confidential) and the
        groups' sub-allocations."""
        reg = self.reg
        day = us(datetime(YEAR + 1, 1, 6, 9, tzinfo=UTC))
        for i, (holder, (rock, ionic, sep)) in enumerate({"CHINA-NORTHERN-RE": ("95000", "0", "90000"),
                                                           "CHINA-RE-GROUP": ("31000", "10000", "40000")}.items()):
            body = {"year": YEAR + 1, "batch_no": 1, "document_no": f"MIIT-MNR-{YEAR + 1}-1-{i + 1}", "holder": holder,
                    "mining_rock_t_reo": rock, "mining_ionic_t_reo": ionic, "separation_t_reo": sep, "basis": "OUTPUT"}
            self.at(day + i * 60_000_000, lambda b=body, w=day + i * 60_000_000: self.submit(reg, "QuotaBatchIssued", b, w))
        for j, p in enumerate(self.of("mine") + self.of("plant")):
            when = day + DAY + j * 600_000_000
            cat = ("MINING_IONIC" if p.kind.startswith("mine-ionic") else
                   "MINING_ROCK" if p.kind.startswith("mine-rock") else "SEPARATION")
            amount = self.annual_allocation(p) * Decimal("0.55")
            self.at(when, lambda p=p, c=cat, a=amount, w=when: self.submit(self.parties[p.group], "QuotaSubAllocated", {
                "batch": {"year": YEAR + 1, "batch_no": 1}, "enterprise": p.id, "category": c, "t_reo": t_text(a)}, w))

    def enforce(self) -> None:
        """The regulator closes the loop on the over-quota plant: inspection, violation citing the
        ledger's evidence, penalty (Decree 785 Art. 21) and the cut of next year's indicator
        (Decree 71 Art. 14)."""
        self.flush()
        where = self.seeded_where.get("over_separation_quota", {})
        plant = where.get("party")
        self.projections.catch_up()
        found = [f for f in queries.findings(self.projections, plant)["findings"] if f["code"] == "OVER_QUOTA"]
        if not found:
            return
        f = found[0]
        evidence = [{"chain": e["chain"], "seq": e["seq"], "hash": bytes.fromhex(e["hash"])} for e in f["evidence"]]
        reg = self.reg

        def ref_of_last() -> dict:
            return {"chain": reg.id, "seq": reg.signer.seq, "hash": reg.signer.head}

        excess = Decimal(f["params"]["used_kg"]) - Decimal(f["params"]["limit_kg"])
        cut_t = t_text(max(excess / 1000, Decimal(1)).to_integral_value(rounding="ROUND_CEILING"))
        self.submit(reg, "InspectionRecorded", {"party": plant, "inspection_no": f"JX-{YEAR + 1}-0007",
                                                "inspected_at": ts(self.now), "result": "ISSUES_FOUND",
                                                "notes": "separation output above the cumulative indicator",
                                                "evidence": evidence}, self.now)
        inspection = ref_of_last()
        self.submit(reg, "ViolationFound", {"party": plant, "rule": "QUOTA", "article": "Decree 785 Art. 21",
                                            "description": f["message"], "evidence": evidence,
                                            "inspection": inspection}, self.now)
        violation = ref_of_last()
        self.submit(reg, "PenaltyImposed", {"party": plant, "violation": violation,
                                            "decision_no": f"MIIT-PEN-{YEAR + 1}-003", "article": "Decree 785 Art. 21",
                                            "fine_cny": "1500000", "next_year_cut_t_reo": cut_t}, self.now)
        penalty = ref_of_last()
        self.submit(reg, "QuotaReduced", {"year": YEAR + 1, "holder": plant, "category": "SEPARATION",
                                          "t_reo": cut_t, "penalty": penalty,
                                          "reason": "Decree 71 Art. 14: a penalty cuts the next year's indicator"},
                    self.now)
        self.seeded_where["over_separation_quota"]["penalty_cut_t"] = cut_t

    def checkpoint(self) -> None:
        self.flush()
        self.store.checkpoint(self.signer)

    def produce_and_ship(self, m: Party, plant: Party, k: int) -> None:
        rng = self.rng
        ionic = m.kind.startswith("mine-ionic")
        treo = Decimal(rng.choice(["91.5", "92", "92.8", "93.4"]) if ionic else rng.choice(["50.2", "55.5", "58", "61.3"]))
        reo_t = self.lot_reo_t(m) * Decimal(rng.randint(90, 110)) / 100
        reo_g = int(reo_t * 1_000_000)
        dry_g = int(Decimal(reo_g) * 100 / treo)
        wet_g = dry_g + dry_g // rng.randint(8, 14)
        lot = self.new_lot(m.short)
        product = "IONIC_CONCENTRATE" if ionic else "BASTNAESITE_CONCENTRATE"
        dist = ({"Y": "62.4", "Dy": "6.8", "Tb": "1.2", "Nd": "12.1", "Pr": "3.3", "La": "9.1", "Gd": "5.1"} if ionic
                else {"La": "26.1", "Ce": "50.3", "Pr": "5.1", "Nd": "16.2", "Sm": "1.2", "Eu": "0.2", "Gd": "0.9"})
        body = {"lot": lot, "ore_type": "IONIC" if ionic else "ROCK", "product": product, "wet_kg": kg(wet_g),
                "dry_kg": kg(dry_g), "treo_pct": encoding.decimal_text(treo), "reo_kg": kg(reo_g),
                "element_distribution": dist}
        if not ionic and m is self.of("mine-rock-N")[0] and k == 9 and "under_declared_lot" not in self.seeded_where:
            # the seeded under-declared lot: 80 % of its REO declared, written into the database
            # below the command API (which refuses it); the computed REO counts against quota
            reo_g = reo_g * 8 // 10
            body["reo_kg"] = kg(reo_g)
            self.flush()
            signed = m.signer.sign("MineralProductProduced", body, ts(self.now))
            m.hashes.append(signed.hash)
            self.store.append([signed])
            self.entries += 1
            self.seeded_where["under_declared_lot"] = {"party": m.id, "lot": lot}
        else:
            self.submit(m, "MineralProductProduced", body, self.now)
        m.inventory[lot] = [product, dry_g, reo_g, "MINE"]
        buyer = plant
        seeded = None
        if ionic and m is self.of("mine-ionic")[0] and k == 6 and "recycler_takes_concentrate" not in self.seeded_where:
            buyer, seeded = self.of("recycler")[0], "recycler_takes_concentrate"
        elif m is self.of("mine-rock-C")[0] and k == 16 and "shipment_never_received" not in self.seeded_where:
            seeded = "shipment_never_received"
        self.ship(m, buyer, [lot], self.now + rng.randint(2, 20) * HOUR, receive=(seeded != "shipment_never_received"),
                  seeded=seeded)

    def ship(self, seller: Party, buyer: Party, lots: list[str], when: int, receive: bool = True,
             seeded: str | None = None) -> None:
        def do() -> None:
            self.transfer_no += 1
            tid = f"T{YEAR}-{seller.short}-{self.transfer_no:06d}"
            lines = []
            for lot in lots:
                product, g, reo, origin = seller.inventory.pop(lot)
                lines.append({"lot": lot, "product": product, "kg": kg(g), "reo_kg": kg(reo)})
            self.submit(seller, "TransferShipped", {
                "transfer_id": tid, "buyer": buyer.id, "lines": lines,
                "vat_invoice_no": f"{self.rng.randint(10**7, 10**8 - 1)}", "shipped_at": ts(self.now)}, self.now)
            if seeded:  # the party the finding is about: the recycler that took it, the seller that shipped it
                who = buyer if seeded == "recycler_takes_concentrate" else seller
                self.seeded_where[seeded] = {"party": who.id, "seller": seller.id, "buyer": buyer.id,
                                             "transfer_id": tid}
            if receive:
                arrive = self.now + self.rng.randint(20, 90) * HOUR
                self.at(arrive, lambda: self.receive(buyer, seller, tid, lines))
        self.at(when, do)

    def receive(self, buyer: Party, seller: Party, tid: str, lines: list[dict]) -> None:
        self.submit(buyer, "TransferReceived", {"transfer_id": tid, "seller": seller.id, "lines": lines,
                                                "received_at": ts(self.now)}, self.now)
        for line in lines:
            buyer.inventory[line["lot"]] = [line["product"], int(Decimal(line["kg"]) * 1000),
                                            int(Decimal(line["reo_kg"]) * 1000), "RECEIVED"]

    OUTPUTS = {
        "rock": [("La2O3", "26"), ("CeO2", "50"), ("PrNd_OXIDE", "21"), ("SEG_ENRICHED", "3")],
        "ionic": [("Y2O3", "60"), ("Dy2O3", "7"), ("Tb4O7", "1.5"), ("PrNd_OXIDE", "16"), ("La2O3", "9.5"),
                  ("Gd2O3", "6")],
        "import": [("La2O3", "23"), ("CeO2", "46"), ("PrNd_OXIDE", "22"), ("Y2O3", "3"), ("SEG_ENRICHED", "6")],
    }

    def separate(self, p: Party) -> None:
        feed = [lot for lot, v in p.inventory.items() if v[3] in ("RECEIVED", "IMPORT") and
                v[0] in ("BASTNAESITE_CONCENTRATE", "IONIC_CONCENTRATE", "MONAZITE_CONCENTRATE")]
        if not feed:
            return
        rng = self.rng
        inputs, reo_in = [], 0
        for lot in feed:
            product, g, reo, _ = p.inventory.pop(lot)
            inputs.append({"lot": lot, "kg": kg(g), "reo_kg": kg(reo)})
            reo_in += reo
        yield_pct = Decimal(rng.randint(9660, 9840)) / 100
        if p is self.of("plant-rock-N")[0] and "yield_above_100" not in self.seeded_where and self.now > us(
                datetime(YEAR, 6, 1, tzinfo=UTC)):
            yield_pct = Decimal("103.5")
        reo_out = int(Decimal(reo_in) * yield_pct / 100)
        kind = "ionic" if p.kind == "plant-ionic" else ("import" if p.kind == "plant-import" else "rock")
        mix = self.OUTPUTS[kind]
        total = sum(Decimal(s) for _, s in mix)
        outputs, left = [], reo_out
        batch = f"{p.short}-{self.now // DAY}"
        for i, (product, share) in enumerate(mix):
            reo = left if i == len(mix) - 1 else int(Decimal(reo_out) * Decimal(share) / total)
            left -= reo
            purity = Decimal(rng.choice(["99.5", "99.9", "99.95"]))
            g = int(Decimal(reo) * 100 / purity) + 1
            lot = self.new_lot(f"{p.short}-{product}")
            outputs.append({"lot": lot, "product": product, "kg": kg(g), "purity_pct": encoding.decimal_text(purity),
                            "reo_kg": kg(reo)})
            p.inventory[lot] = [product, g, reo, "OUTPUT"]
        losses = max(0, reo_in - reo_out)
        self.submit(p, "SeparationBatchRecorded", {
            "batch": batch, "period_start": ts(self.now - 2 * DAY), "period_end": ts(self.now - HOUR),
            "inputs": inputs, "outputs": outputs, "losses_reo_kg": kg(losses)}, self.now)
        if yield_pct > 100:
            self.seeded_where["yield_above_100"] = {"party": p.id, "batch": batch}
        if p.kind == "plant-ionic" and p is self.of("plant-ionic")[0]:
            self.seeded_where.setdefault("over_separation_quota", {"party": p.id})
        # ship on: PrNd, Dy, Tb to the smelter; La, Ce, Y to the exporter (a day later)
        smelter = self.of("smelter")[self.rng.randrange(len(self.of("smelter")))]
        exporter = self.of("exporter")[self.rng.randrange(len(self.of("exporter")))]
        to_smelter = [o["lot"] for o in outputs if o["product"] in ("PrNd_OXIDE", "Dy2O3", "Tb4O7")]
        to_export = [o["lot"] for o in outputs if o["product"] in ("La2O3", "CeO2", "Y2O3")]
        if to_smelter:
            self.ship(p, smelter, to_smelter, self.now + DAY)
        if to_export:
            self.ship(p, exporter, to_export, self.now + DAY + HOUR)

    def smelt(self, p: Party) -> None:
        feed = [lot for lot, v in p.inventory.items() if v[0] in ("PrNd_OXIDE", "Dy2O3", "Tb4O7")]
        if not feed:
            return
        factors = {"PrNd_OXIDE": ("PrNd_METAL", Decimal("1.1727")), "Dy2O3": ("DyFe_ALLOY", Decimal("1.1477")),
                   "Tb4O7": ("Tb_METAL", Decimal("1.1762"))}
        inputs, outputs = [], []
        for lot in feed:
            product, g, reo, _ = p.inventory.pop(lot)
            inputs.append({"lot": lot, "kg": kg(g), "reo_kg": kg(reo)})
            out_product, factor = factors[product]
            metal_g = int(Decimal(reo) * Decimal("0.985") / factor)
            out_reo = int(Decimal(metal_g) * factor)
            out_lot = self.new_lot(f"{p.short}-{out_product}")
            outputs.append({"lot": out_lot, "product": out_product, "kg": kg(metal_g),
                            "factor": encoding.decimal_text(factor), "reo_kg": kg(out_reo)})
            p.inventory[out_lot] = [out_product, metal_g, out_reo, "OUTPUT"]
        self.submit(p, "MetalSmelted", {"batch": f"{p.short}-{self.now // DAY}", "inputs": inputs,
                                        "outputs": outputs}, self.now)

    def export(self, p: Party) -> None:
        for lot, (product, g, reo, _) in list(p.inventory.items()):
            p.inventory.pop(lot)
            self.submit(p, "ExportDeclared", {
                "lot": lot, "product": product, "kg": kg(g), "reo_kg": kg(reo),
                "customs_declaration_no": f"2200{self.rng.randint(10**13, 10**14 - 1)}",
                "export_licence_no": f"EL-{YEAR}-{self.rng.randint(1000, 9999)}",
                "destination_country": self.rng.choice(["JP", "DE", "KR", "US", "NL"])}, self.now)

    def scrap(self, p: Party) -> None:
        g = self.rng.randint(8_000, 25_000) * 1000
        treo = Decimal(self.rng.choice(["28", "30.5", "31.2"]))
        lot = self.new_lot(f"{p.short}-SCRAP")
        reo = int(Decimal(g) * treo / 100)
        self.submit(p, "SecondaryFeedReceived", {"lot": lot, "scrap_type": "MAGNET_SCRAP",
                                                 "source": "Ningbo sintered NdFeB magnet plant", "kg": kg(g),
                                                 "treo_pct": encoding.decimal_text(treo), "reo_kg": kg(reo)},
                    self.now)
        p.inventory[lot] = ["MAGNET_SCRAP", g, reo, "SCRAP"]

    def import_monazite(self, p: Party, seeded_backdate: bool = False) -> None:
        g = (self.rng.randint(300, 450) if self.scale == "small" else self.rng.randint(60, 90)) * 1_000_000
        treo = Decimal("55.5")
        lot = self.new_lot(f"{p.short}-MZ")
        reo = int(Decimal(g) * treo / 100)
        occurred = self.now
        backdate = seeded_backdate
        body = {"lot": lot, "customs_declaration_no": f"2201{self.rng.randint(10**13, 10**14 - 1)}",
                "hs_code": "2612200000", "origin_country": self.rng.choice(["MM", "AU", "LA"]), "form": "MONAZITE",
                "product": "MONAZITE_CONCENTRATE", "dry_kg": kg(g), "treo_pct": "55.5", "reo_kg": kg(reo)}
        if backdate:
            # recorded 46 days after the goods arrived: possible backdating
            self.seeded_where["backdated_entry"] = {"party": p.id, "lot": lot}
            occurred = self.now - 46 * DAY  # in July, a month the plant reported
        self.submit(p, "ImportReceived", body, occurred)
        p.inventory[lot] = ["MONAZITE_CONCENTRATE", g, reo, "IMPORT"]

    def count_stock(self, p: Party) -> None:
        if not p.inventory:
            return
        lot = sorted(p.inventory)[0]
        product, g, reo, _ = p.inventory[lot]
        self.submit(p, "StockCounted", {"lot": lot, "counted_kg": kg(g), "counted_reo_kg": kg(reo),
                                        "location": "main warehouse"}, self.now)

    def report(self, p: Party, month: str) -> None:
        first, last = p.reported_seq + 1, p.signer.seq
        if last < first:
            return
        hashes = p.hashes[first - 1:last]
        totals = {}
        if p is self.of("mine-rock-C")[0] and month == "2024-05":
            # the seeded false monthly total: a production far below what the ledger shows
            totals = {"produced_reo_kg": "1000"}
            self.seeded_where["false_monthly_total"] = {"party": p.id, "month": month}
        self.submit(p, "MonthlyFlowReportSubmitted", {
            "month": month, "first_seq": first, "last_seq": last,
            "totals": totals, "digest": report_digest(hashes)}, self.now)
        p.reported_seq = p.signer.seq

    # --- run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.cast()
        self.late_reporter = self.of("mine-ionic-G")[0]
        self.register()
        self.quota()
        self.schedule_year()
        self.next_year_quota()
        self.at(us(datetime(YEAR + 1, 1, 8, 10, tzinfo=UTC)), self.enforce)
        end = us(datetime(YEAR + 1, 1, 9, 23, tzinfo=UTC))
        bar = None
        progress = None
        if self.scale == "year" and sys.stderr.isatty():
            bar = Progress(transient=True)
            task = bar.add_task("simulating 2024", total=end - self.now)
            start = self.now
            bar.start()
            progress = lambda now: bar.update(task, completed=now - start)  # noqa: E731
        else:  # not a terminal (a log), or the small scale: a line a simulated month
            last = [0]

            def progress(now: int) -> None:
                month = datetime.fromtimestamp(now / 1e6, tz=UTC).strftime("%Y-%m")
                if month != last[0]:
                    last[0] = month
                    self.log(f"  simulating {month}: {self.entries:,} entries so far")
        try:
            self.run_until(end, progress)
        finally:
            if bar:
                bar.stop()
        self.checkpoint()
        elapsed = time.perf_counter() - t0
        return {"entries": self.store.size(), "seconds": round(elapsed, 1)}


def _default_db(out: Path) -> str:
    return f"sqlite:///{out / 'ledger.db'}"


class Refused(Exception):
    """The demo will not run here (exit 2): it never deletes or overwrites a ledger or keys."""


def _check_target(url: str, out: Path) -> None:
    """The demo writes a new ledger: refuse a target that already holds one (or anything that
    is not a ledger), and a key folder that already holds key files. Nothing is deleted."""
    from reledger.storage.reader import DatabaseURLError

    keys = out / "keys"
    if out.exists() and not out.is_dir():
        raise Refused(f"--out {out} is a file, not a directory")
    _check_database(url)
    if keys.is_dir() and any(keys.glob("*.key")):
        raise Refused(f"{keys} already holds key files (of an earlier demo?): the demo never overwrites keys; "
                      "pass another --out DIR, or remove that folder yourself")


def _check_database(url: str) -> None:
    from reledger.storage.reader import DatabaseURLError

    try:
        u = DatabaseURL.parse(url)
    except DatabaseURLError as e:
        raise Refused(str(e)) from e
    if u.backend == "sqlite":
        p = Path(u.path)
        if p.is_dir():
            raise Refused(f"--db {url}: {p} is a directory")
        if p.exists() and p.stat().st_size > 0:
            raise Refused(f"{p} already exists: the demo never deletes or overwrites a ledger; pass another "
                          "--db (or --out DIR), or remove that file yourself")
        return
    import psycopg

    try:
        with psycopg.connect(u.conninfo(), connect_timeout=5, autocommit=True) as conn:
            tables = conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                                  (f"{u.schema}.reledger_log", f"{u.schema}.reledger_events")).fetchone()
            n = 0
            if tables[0] is not None:
                n = conn.execute(f'SELECT COUNT(*) FROM "{u.schema}".reledger_log').fetchone()[0]
            if tables[1] is not None:
                n = max(n, conn.execute(f'SELECT COUNT(*) FROM "{u.schema}".reledger_events').fetchone()[0])
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Refused(f"cannot reach {url}: {first}") from e
    if n:
        raise Refused(f"the ledger at {url} is not empty ({n} entries): the demo never overwrites a ledger; use "
                      "an empty database or schema (e.g. ...?schema=demo2)")


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    url = args.db or _default_db(out)
    try:
        _check_target(url, out)
        out.mkdir(parents=True, exist_ok=True)
        u = DatabaseURL.parse(url)
        if u.backend == "sqlite":
            Path(u.path).parent.mkdir(parents=True, exist_ok=True)
    except (Refused, OSError) as e:
        print(f"reledger demo: {e}", file=sys.stderr)
        return 2
    con = Console(highlight=False, soft_wrap=True, stderr=args.json,
                  width=None if sys.stdout.isatty() else 150)
    say = con.print  # on stderr under --json
    progress = Console(highlight=False, soft_wrap=True, stderr=True).print  # progress lines: always stderr
    say(f"[bold]reledger demo[/bold]: the {YEAR} control year at {args.scale} scale (seed {args.seed}) -> {url}")
    demo = Demo(url, out, args.seed, args.scale, progress)
    stats = demo.run()
    result = summarize(demo, url, out, stats)
    demo.projections.close()
    demo.store.close()
    result["files"]["summary"] = str(out / "summary.json")
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_summary(con, result)
    ok = result["verified"] and result["seeded_all_found"] and not result["unexpected_findings"]
    return 0 if ok else 1
