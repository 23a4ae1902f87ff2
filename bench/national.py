"""A national log, as long as you like, made a piece at a time (``reledger bench --suite scale``).

The cast follows DOMAIN.md "Volumes": the regulator, the two quota groups, 30 mines (8 of them
ion-adsorption), 40 separation plants (10 ion-adsorption), and 400 other obliged enterprises
(90 metal smelters, 220 magnet makers, 50 exporters, 40 recyclers). The business, on the
business-time axis, ``per_year`` entries a year (default 10^6, so that 10^7 entries are ten
years):

* every year: the annual totals and the first quota batch of each group in mid-December of the
  year before, the second batch on 1 July, each followed within a week by the groups'
  sub-allocations to every member mine and plant (each member's allocation is its expected
  output plus a half: the log breaks no quota rule);
* mines produce lots (REO = dry kg x TREO %, exactly) and ship each to a plant of their ore type,
  which receives it one to three days later;
* a plant separates every four lots received (yield 97-99 %, inside the bands), counts the
  stock of its PrNd oxide lot, ships it to a smelter and its La/Ce oxides to an exporter;
* a smelter smelts each PrNd oxide lot it receives into PrNd metal (the reference table's factor)
  and ships it to a magnet maker; an exporter declares each lot it receives for export;
* recyclers receive magnet scrap every week;
* every party with entries in a month reports the month (MonthlyFlowReportSubmitted: the range
  of its chain covered and its digest) between the 2nd and the 6th of the next month (months
  and days in China Standard Time, as the rules count them).

:class:`NationalLog` is a simulation that carries on where it stopped: :meth:`NationalLog.take`
gives the next ``n`` entries, signed, in log order, with the record time each batch must carry
(the business time of its last entry plus five minutes). Chains are signed in worker processes
(a chain's next entries depend only on its key, its head and what its last monthly report
covered: that state travels with each task and comes back), the regulator's chain here.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from reledger.ledger import encoding
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.processes.start import context, main_importable

from .realistic import GROUPS, key_of, kg

REGULATOR = "MIIT"
ORIGIN = "bench.reledger.example/national"
MINUTE = 60 * 1_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
YEAR_US = 365 * DAY
ENTRIES_PER_LOT = 5.7  # what one mined lot brings into the log, its downstream included (measured)

CAST = {"mine": 30, "plant": 40, "smelter": 90, "magnet": 220, "exporter": 50, "recycler": 40}
IONIC_MINES, IONIC_PLANTS = 8, 10
ROLE = {"mine": "MINE", "plant": "SEPARATION", "smelter": "SMELTER", "magnet": "MAGNET", "exporter": "EXPORTER",
        "recycler": "RECYCLER"}
PREFIX = {"mine": "91150200MN", "plant": "91360700SP", "smelter": "91360700SM", "magnet": "91330200MG",
          "exporter": "91310000EX", "recycler": "91360700RC"}
PROVINCE = {"mine": "Inner Mongolia", "plant": "Jiangxi", "smelter": "Jiangxi", "magnet": "Zhejiang",
            "exporter": "Shanghai", "recycler": "Jiangxi"}
PRND_FACTOR = Decimal("1.1727")


def ts(micros: int) -> str:
    return encoding.micros_to_time_text(micros - micros % 1_000_000)


def us(dt: datetime) -> int:
    return encoding.time_to_micros(dt)


def cst_month(micros: int) -> str:
    return ts(micros + 8 * HOUR)[:7]


def party_ids(kind: str) -> list[str]:
    return [f"{PREFIX[kind]}{i:06d}" for i in range(CAST[kind])]


# --- signing (worker processes) ----------------------------------------------------------------

def sign_chain(task: tuple[str, tuple, list[tuple[str, Any, int]]]) -> tuple[str, tuple, list[bytes]]:
    """Sign a chain's next entries: ``task`` is (chain, state, items); state is (seq, head,
    reported_seq, hashes of the entries after reported_seq); a body ``{"__report__": month}`` is
    the monthly report, completed here from the chain itself. Gives (chain, new state, envelopes)."""
    chain, (seq, head, reported, hashes), items = task
    signer = ChainSigner(key_of(chain), seq=seq, head=head)
    hashes = list(hashes)
    out = []
    for type_, body, occ in items:
        if isinstance(body, dict) and "__report__" in body:
            first, last = reported + 1, signer.seq
            body = {"month": body["__report__"], "totals": {}}
            if last >= first:
                body.update(first_seq=first, last_seq=last, digest=_digest(hashes))
            else:
                body["digest"] = _digest([])
            reported, hashes = last, []
        s = signer.sign(type_, body, ts(occ))
        hashes.append(s.hash)
        out.append(s.envelope)
    return chain, (signer.seq, signer.head, reported, hashes), out


def _digest(hashes: list[bytes]) -> bytes:
    h = hashlib.sha256()
    for x in hashes:
        h.update(x)
    return h.digest()


# --- the simulation ------------------------------------------------------------------------------

@dataclass
class Batch:
    record_us: int
    envelopes: list[bytes]


class NationalLog:
    """The national log from its genesis on; :meth:`take` the next entries (signed)."""

    def __init__(self, per_year: int = 1_000_000, first_year: int = 2016, workers: int = 2):
        self.per_year = max(1000, per_year)
        self.first_year = first_year
        self.workers = max(1, workers)
        self.t0 = us(datetime(first_year - 1, 12, 1, tzinfo=timezone.utc))
        self.now = self.t0
        self.ids = {k: party_ids(k) for k in CAST}
        self.ore = {m: ("IONIC" if i < IONIC_MINES else "ROCK") for i, m in enumerate(self.ids["mine"])}
        self.plant_ore = {p: ("IONIC" if i < IONIC_PLANTS else "ROCK") for i, p in enumerate(self.ids["plant"])}
        self.group = {}
        for kind in ("mine", "plant"):
            for i, p in enumerate(self.ids[kind]):
                ionic = (self.ore if kind == "mine" else self.plant_ore)[p] == "IONIC"
                self.group[p] = GROUPS[1] if ionic else GROUPS[i % 2]
        lots_a_year = self.per_year / ENTRIES_PER_LOT
        self.lot_interval = max(1, int(YEAR_US / lots_a_year))
        # lot size: the nation mines ~240 kt REO a year, whatever the entries a year
        self.lot_reo_g = max(1_000_000, int(240_000 * 1_000_000 / lots_a_year))
        self.mine_alloc_t = int(self.lot_reo_g * lots_a_year / CAST["mine"] * 1.5 / 1_000_000) + 1
        ionic_reo = self.lot_reo_g * lots_a_year * IONIC_MINES / CAST["mine"]
        rock_reo = self.lot_reo_g * lots_a_year - ionic_reo
        self.plant_alloc_t = {"IONIC": int(ionic_reo / IONIC_PLANTS * 1.5 / 1_000_000) + 1,
                              "ROCK": int(rock_reo / (CAST["plant"] - IONIC_PLANTS) * 1.5 / 1_000_000) + 1}
        self.queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.out: list[tuple[str, str, Any, int]] = []  # (chain, type, body, occurred) not yet taken
        self.states: dict[str, tuple] = {}
        self.reg: ChainSigner | None = None
        self.genesis_envelopes: list[bytes] = []
        self.active: set[str] = set()
        self.month = ""
        self.n_lot = 0
        self.n_transfer = 0
        self.k = 0
        self.shipped_ore: dict[str, int] = {}
        self.received: dict[str, list[tuple[str, int, int, str]]] = {p: [] for p in self.ids["plant"]}
        self.pool: ProcessPoolExecutor | None = None
        self.emitted = 0
        self.last_occ = self.t0
        self._start()

    # --- the calendar ------------------------------------------------------------------------
    def at(self, when: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self._seq), fn))

    def add(self, chain: str, type_: str, body: Any) -> None:
        self.out.append((chain, type_, body, self.now))
        if chain != REGULATOR and chain not in GROUPS:
            self.active.add(chain)

    def _start(self) -> None:
        reg = ChainSigner(key_of(REGULATOR))
        ck = key_of(REGULATOR, "checkpoint")
        self.genesis_envelopes = [s.envelope for s in genesis_entries(reg, ck, name="MIIT (national bench)",
                                                                       origin=ORIGIN, at=ts(self.t0))]
        self.reg = reg
        self.now = self.t0 + HOUR
        for g in GROUPS:
            self._register(g, "GROUP", "Beijing", None)
        for kind, ids in self.ids.items():
            for p in ids:
                self._register(p, ROLE[kind], PROVINCE[kind], self.group.get(p))
        self.month = cst_month(self.now)
        for y in range(self.first_year, self.first_year + 40):
            self.at(us(datetime(y - 1, 12, 14, 9, tzinfo=timezone.utc)), lambda y=y: self._year(y))
            self.at(us(datetime(y, 7, 1, 9, tzinfo=timezone.utc)), lambda y=y: self._batch(y, 2))
        first_lot = us(datetime(self.first_year, 1, 1, 1, tzinfo=timezone.utc))
        self.at(first_lot, self._produce)
        for i, r in enumerate(self.ids["recycler"]):
            self.at(first_lot + i * HOUR, lambda r=r: self._scrap(r))

    def _register(self, party: str, role: str, province: str, group: str | None) -> None:
        body = {"party": party, "name": f"{party} Co.", "roles": [role], "province": province,
                "valid_from": ts(self.t0)}
        if group:
            body["group"] = group
        if role == "MINE":
            body["licence"] = f"C{party[2:8]}2015{party[-4:]}"
        self.add(REGULATOR, "PartyRegistered", body)
        self.add(REGULATOR, "KeyAuthorized", ("__key__", party))

    def _year(self, y: int) -> None:
        members = self.ids["mine"] + self.ids["plant"]
        rock = sum(self.mine_alloc_t for m in self.ids["mine"] if self.ore[m] == "ROCK")
        ionic = sum(self.mine_alloc_t for m in self.ids["mine"] if self.ore[m] == "IONIC")
        sep = sum(self.plant_alloc_t[self.plant_ore[p]] for p in self.ids["plant"])
        self.add(REGULATOR, "AnnualTotalApproved", {"year": y, "mining_rock_t_reo": str(rock),
                                                    "mining_ionic_t_reo": str(ionic), "separation_t_reo": str(sep),
                                                    "approval_ref": f"State Council {y}-RE"})
        self.members = members
        self._batch(y, 1)

    def _share(self, party: str, no: int) -> tuple[str, int]:
        if party in self.ore:
            cat = "MINING_IONIC" if self.ore[party] == "IONIC" else "MINING_ROCK"
            total = self.mine_alloc_t
        else:
            cat, total = "SEPARATION", self.plant_alloc_t[self.plant_ore[party]]
        first = total * 6 // 10
        return cat, first if no == 1 else total - first

    def _batch(self, y: int, no: int) -> None:
        for gi, g in enumerate(GROUPS):
            sums = {"MINING_ROCK": 0, "MINING_IONIC": 0, "SEPARATION": 0}
            for p in self.ids["mine"] + self.ids["plant"]:
                if self.group[p] == g:
                    cat, t = self._share(p, no)
                    sums[cat] += t
            self.add(REGULATOR, "QuotaBatchIssued", {
                "year": y, "batch_no": no, "document_no": f"MIIT-MNR-{y}-{no}-{gi + 1}", "holder": g,
                "mining_rock_t_reo": str(sums["MINING_ROCK"]), "mining_ionic_t_reo": str(sums["MINING_IONIC"]),
                "separation_t_reo": str(sums["SEPARATION"]), "basis": "OUTPUT"})
        when = self.now + 3 * DAY
        for j, p in enumerate(self.ids["mine"] + self.ids["plant"]):
            self.at(when + j * MINUTE, lambda p=p: self._suballocate(y, no, p))

    def _suballocate(self, y: int, no: int, p: str) -> None:
        cat, t = self._share(p, no)
        self.add(self.group[p], "QuotaSubAllocated", {"batch": {"year": y, "batch_no": no}, "enterprise": p,
                                                      "category": cat, "t_reo": str(t)})

    # --- the material flow ---------------------------------------------------------------------
    def _lot(self, tag: str) -> str:
        self.n_lot += 1
        return f"L-{tag}-{self.n_lot:09d}"

    def _ship(self, seller: str, buyer: str, lines: list[dict], after: int, then: Callable[[], None] | None = None
              ) -> None:
        def do() -> None:
            self.n_transfer += 1
            tid = f"T-{seller[-8:]}-{self.n_transfer:09d}"
            self.add(seller, "TransferShipped", {"transfer_id": tid, "buyer": buyer, "lines": lines,
                                                 "vat_invoice_no": f"{40000000 + self.n_transfer % 59999999:08d}",
                                                 "shipped_at": ts(self.now)})

            def receive() -> None:
                self.add(buyer, "TransferReceived", {"transfer_id": tid, "seller": seller, "lines": lines,
                                                     "received_at": ts(self.now)})
                if then:
                    then()
            self.at(self.now + DAY + (self.n_transfer % 48) * HOUR, receive)
        self.at(self.now + after, do)

    def _produce(self) -> None:
        k = self.k
        self.k += 1
        mines = self.ids["mine"]
        m = mines[k % len(mines)]
        ionic = self.ore[m] == "IONIC"
        reo = self.lot_reo_g * (95 + k % 11) // 100
        treo = 92 if ionic else 50
        dry = reo * 100 // treo
        reo = dry * treo // 100
        product = "IONIC_CONCENTRATE" if ionic else "BASTNAESITE_CONCENTRATE"
        lot = self._lot(m[-6:])
        dist = ({"Y": "62.4", "Dy": "6.8", "Tb": "1.2", "Nd": "12.1", "Pr": "3.3", "La": "9.1", "Gd": "5.1"} if ionic
                else {"La": "26.1", "Ce": "50.3", "Pr": "5.1", "Nd": "16.2", "Sm": "1.2", "Eu": "0.2", "Gd": "0.9"})
        self.add(m, "MineralProductProduced", {
            "lot": lot, "ore_type": "IONIC" if ionic else "ROCK", "product": product, "wet_kg": kg(dry + dry // 10),
            "dry_kg": kg(dry), "treo_pct": str(treo), "reo_kg": kg(reo), "element_distribution": dist})
        plants = [p for p in self.ids["plant"] if self.plant_ore[p] == self.ore[m]]
        n_ore = self.shipped_ore[self.ore[m]] = self.shipped_ore.get(self.ore[m], -1) + 1
        p = plants[n_ore % len(plants)]
        line = {"lot": lot, "product": product, "kg": kg(dry), "reo_kg": kg(reo)}
        self._ship(m, p, [line], 2 * HOUR, lambda: self._received(p, lot, dry, reo, self.ore[m]))
        self.at(self.now + self.lot_interval, self._produce)

    def _received(self, plant: str, lot: str, g: int, reo: int, ore: str) -> None:
        got = self.received[plant]
        got.append((lot, g, reo, ore))
        if len(got) >= 4:
            self.received[plant] = []
            self.at(self.now + 6 * HOUR, lambda: self._separate(plant, got))

    def _separate(self, plant: str, lots: list[tuple[str, int, int, str]]) -> None:
        reo_in = sum(r for _, _, r, _ in lots)
        reo_out = reo_in * (97 + self.k % 3) // 100
        mix = ([("PrNd_OXIDE", 16), ("La2O3", 10), ("Y2O3", 60), ("Dy2O3", 8), ("Gd2O3", 6)]
               if self.plant_ore[plant] == "IONIC" else [("PrNd_OXIDE", 21), ("La2O3", 26), ("CeO2", 53)])
        outputs, left = [], reo_out
        batch = f"B-{plant[-6:]}-{self.n_lot + 1:09d}"
        for i, (product, share) in enumerate(mix):
            reo = left if i == len(mix) - 1 else reo_out * share // 100
            left -= reo
            g = reo * 1000 // 995 + 1
            outputs.append({"lot": self._lot(f"{plant[-6:]}-{product}"), "product": product, "kg": kg(g),
                            "purity_pct": "99.5", "reo_kg": kg(reo)})
        self.add(plant, "SeparationBatchRecorded", {
            "batch": batch, "period_start": ts(self.now - 2 * DAY), "period_end": ts(self.now - HOUR),
            "inputs": [{"lot": lot, "kg": kg(g), "reo_kg": kg(r)} for lot, g, r, _ in lots],
            "outputs": outputs, "losses_reo_kg": kg(reo_in - reo_out)})
        prnd = outputs[0]
        if (self.n_lot // 7) % 4 == 0:
            self.add(plant, "StockCounted", {"lot": prnd["lot"], "counted_kg": prnd["kg"],
                                             "counted_reo_kg": prnd["reo_kg"], "location": "main warehouse"})
        smelters, exporters = self.ids["smelter"], self.ids["exporter"]
        s = smelters[self.n_lot % len(smelters)]
        e = exporters[self.n_lot % len(exporters)]
        self._ship(plant, s, [{k: prnd[k] for k in ("lot", "product", "kg", "reo_kg")}], DAY,
                   lambda: self.at(self.now + 6 * HOUR, lambda: self._smelt(s, prnd)))
        exported = [{k: o[k] for k in ("lot", "product", "kg", "reo_kg")} for o in outputs
                    if o["product"] in ("La2O3", "CeO2")]
        self._ship(plant, e, exported, DAY + HOUR, lambda: self.at(self.now + 2 * DAY, lambda: self._export(e, exported)))

    def _smelt(self, smelter: str, oxide: dict) -> None:
        reo = int(Decimal(oxide["reo_kg"]) * 1000)
        metal_g = int(Decimal(reo) * Decimal("0.985") / PRND_FACTOR)
        out_reo = int(Decimal(metal_g) * PRND_FACTOR)
        out = {"lot": self._lot(f"{smelter[-6:]}-PRND"), "product": "PrNd_METAL", "kg": kg(metal_g),
               "factor": encoding.decimal_text(PRND_FACTOR), "reo_kg": kg(out_reo)}
        self.add(smelter, "MetalSmelted", {"batch": f"S-{smelter[-6:]}-{self.n_lot:09d}",
                                           "inputs": [{"lot": oxide["lot"], "kg": oxide["kg"], "reo_kg": oxide["reo_kg"]}],
                                           "outputs": [out]})
        magnets = self.ids["magnet"]
        mg = magnets[self.n_lot % len(magnets)]
        self._ship(smelter, mg, [{k: out[k] for k in ("lot", "product", "kg", "reo_kg")}], DAY)

    def _export(self, exporter: str, lines: list[dict]) -> None:
        for line in lines:
            self.n_transfer += 1
            self.add(exporter, "ExportDeclared", {
                "lot": line["lot"], "product": line["product"], "kg": line["kg"], "reo_kg": line["reo_kg"],
                "customs_declaration_no": f"2200{self.n_transfer:014d}",
                "export_licence_no": f"EL-{ts(self.now)[:4]}-{self.n_transfer % 10000:04d}",
                "destination_country": ("JP", "DE", "KR", "US", "NL")[self.n_transfer % 5]})

    def _scrap(self, r: str) -> None:
        g = (8_000 + self.n_lot % 17_000) * 1000
        reo = g * 30 // 100
        self.add(r, "SecondaryFeedReceived", {"lot": self._lot(f"{r[-6:]}-SCRAP"), "scrap_type": "MAGNET_SCRAP",
                                              "source": "sintered NdFeB magnet plant", "kg": kg(g), "treo_pct": "30",
                                              "reo_kg": kg(reo)})
        self.at(self.now + 7 * DAY, lambda: self._scrap(r))

    def _month_turn(self) -> None:
        month = cst_month(self.now)  # legal months are China Standard Time's (DOMAIN.md)
        if month == self.month:
            return
        ended, self.month = self.month, month
        start = us(datetime.fromisoformat(month + "-01T00:00:00+08:00"))
        for i, party in enumerate(sorted(self.active)):
            self.at(start + DAY + (i % 5) * DAY + (i % 97) * MINUTE,
                    lambda party=party: self.out.append((party, "MonthlyFlowReportSubmitted", {"__report__": ended},
                                                         self.now)))
        self.active = set()

    def _run(self, n: int) -> None:
        while len(self.out) < n:
            when, _, fn = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            self._month_turn()
            fn()

    # --- signed batches ------------------------------------------------------------------------
    def genesis(self) -> list[bytes]:
        return list(self.genesis_envelopes)

    def take(self, n: int, batch: int = 1000) -> list[Batch]:
        """The next ``n`` entries, signed, in batches of at most ``batch`` (cut earlier when a batch
        would span more than six hours of business time): each with its record time."""
        self._run(n)
        items, self.out = self.out[:n], self.out[n:]
        if items:
            self.last_occ = items[-1][3]
        envs = self._sign(items)
        self.emitted += len(items)
        out: list[Batch] = []
        i = 0
        while i < len(items):
            j = i + 1
            while j < len(items) and j - i < batch and items[j][3] - items[i][3] <= 6 * HOUR:
                j += 1
            out.append(Batch(items[j - 1][3] + 5 * MINUTE, envs[i:j]))
            i = j
        return out

    def _sign(self, items: list[tuple[str, str, Any, int]]) -> list[bytes]:
        by_chain: dict[str, list[int]] = {}
        for pos, it in enumerate(items):
            by_chain.setdefault(it[0], []).append(pos)
        envs: list[bytes | None] = [None] * len(items)
        for pos in by_chain.pop(REGULATOR, []):
            _, type_, body, occ = items[pos]
            if isinstance(body, tuple):
                body = key_authorized_body(key_of(body[1]), ts(occ - MINUTE), name=f"key of {body[1]}")
            envs[pos] = self.reg.sign(type_, body, ts(occ)).envelope
        zero = (0, b"\0" * 32, 0, [])
        tasks = [(chain, self.states.get(chain, zero), [items[p][1:] for p in positions])
                 for chain, positions in sorted(by_chain.items(), key=lambda kv: -len(kv[1]))]
        if self.workers > 1 and len(items) > 4000 and main_importable():
            if self.pool is None:
                self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context())
            results = list(self.pool.map(sign_chain, tasks, chunksize=8))
        else:
            results = [sign_chain(t) for t in tasks]
        for chain, state, out in results:
            self.states[chain] = state
            for pos, env in zip(by_chain[chain], out):
                envs[pos] = env
        return envs  # type: ignore[return-value]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def sample_parties(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.ids.items()}

    def business_span(self) -> tuple[int, int]:
        """(first, last) business time of the entries taken so far."""
        return us(datetime(self.first_year, 1, 1, tzinfo=timezone.utc)), self.last_occ
