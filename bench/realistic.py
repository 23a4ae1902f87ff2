"""A realistic log, fast: the registry and quota of a control year, then mines producing lots
and shipping them to separation plants, plants receiving, separating (inputs -> oxide lots,
yield inside the band), counting stock, and every producer's monthly flow report (digest of
its own chain). Every entry is a valid catalogue entry (the command API accepts each one).

The plan (types, bodies, business times, log order) is made in this process; the entries are
signed one chain per task in a pool of forked processes (a chain's entries depend only on its
own key and previous hash), then put back in log order. Record times follow the business
times: :meth:`Log.batches` gives each batch the record time its clock must answer.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

from reledger.ledger import encoding
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.processes.start import context, main_importable

ORIGIN = "bench.reledger.example/realistic"
REGULATOR = "MIIT"
GROUPS = ("CHINA-NORTHERN-RE", "CHINA-RE-GROUP")
MINUTE = 60 * 1_000_000
DAY = 24 * 60 * MINUTE


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"reledger-bench-realistic/" + name.encode()).digest()


def key_of(party: str, purpose: str = "entries") -> SigningKey:
    return SigningKey.from_seed(party, _seed(party + "/" + purpose), purpose)


def mine_id(i: int) -> str:
    return f"91150200MN{i:06d}"


def plant_id(i: int) -> str:
    return f"91360700SP{i:06d}"


def kg(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1000)


def ts(micros: int) -> str:
    return encoding.micros_to_time_text(micros - micros % 1_000_000)


@dataclass
class Plan:
    """Entries in log order: (chain, type, body, occurred_us); a body ``{"__report__": month}``
    is a monthly report the signer completes from its own chain."""

    items: list[tuple[str, str, Any, int]] = field(default_factory=list)

    def add(self, chain: str, type_: str, body: Any, occurred_us: int) -> None:
        self.items.append((chain, type_, body, occurred_us))


def setup_plan(plan: Plan, year: int, mines: list[str], plants: list[str], t0: int) -> None:
    """Registry (groups, mines, plants with a key each), the year's totals, one quota batch
    per group and the groups' sub-allocations."""
    reg = REGULATOR
    t = t0
    for g in GROUPS:
        plan.add(reg, "PartyRegistered", {"party": g, "name": f"{g} Co.", "roles": ["GROUP"], "province": "Beijing",
                                          "valid_from": ts(t0)}, t)
        plan.add(reg, "KeyAuthorized", ("__key__", g), t)
    for i, m in enumerate(mines):
        plan.add(reg, "PartyRegistered", {"party": m, "name": f"Bench mine {i}", "roles": ["MINE"],
                                          "province": "Inner Mongolia", "valid_from": ts(t0),
                                          "group": GROUPS[i % 2], "licence": f"C1502002024{i:04d}"}, t)
        plan.add(reg, "KeyAuthorized", ("__key__", m), t)
    for i, p in enumerate(plants):
        plan.add(reg, "PartyRegistered", {"party": p, "name": f"Bench separation plant {i}", "roles": ["SEPARATION"],
                                          "province": "Jiangxi", "valid_from": ts(t0), "group": GROUPS[i % 2]}, t)
        plan.add(reg, "KeyAuthorized", ("__key__", p), t)
    t += MINUTE
    plan.add(reg, "AnnualTotalApproved", {"year": year, "mining_rock_t_reo": "250850", "mining_ionic_t_reo": "19150",
                                          "separation_t_reo": "254000", "approval_ref": f"bench {year}"}, t)
    for gi, g in enumerate(GROUPS):
        plan.add(reg, "QuotaBatchIssued", {"year": year, "batch_no": 1, "document_no": f"BENCH-{year}-{gi}",
                                           "holder": g, "mining_rock_t_reo": "120000", "mining_ionic_t_reo": "0",
                                           "separation_t_reo": "120000", "basis": "OUTPUT"}, t)
    t += MINUTE
    for who, cat, share in ([(m, "MINING_ROCK", 2 * 100_000 // max(1, len(mines))) for m in mines]
                            + [(p, "SEPARATION", 2 * 100_000 // max(1, len(plants))) for p in plants]):
        grp = GROUPS[(mines.index(who) if who in mines else plants.index(who)) % 2]
        plan.add(grp, "QuotaSubAllocated", {"batch": {"year": year, "batch_no": 1}, "enterprise": who,
                                            "category": cat, "t_reo": str(share)}, t)


def business_plan(plan: Plan, count: int, mines: list[str], plants: list[str], start: int, step: int) -> None:
    """About ``count`` business entries from ``start``, one every ``step`` microseconds."""
    n0 = len(plan.items)
    now = start
    month = ts(now)[:7]
    active: dict[str, bool] = {}
    received: dict[str, list[tuple[str, int, int]]] = {p: [] for p in plants}  # plant -> (lot, g, reo_g)
    k = 0
    tr = 0
    pending: list[tuple[int, str, str, dict, int]] = []  # (due, chain, type, body, seq) receipts to come
    while len(plan.items) - n0 < count:
        now += step
        m_now = ts(now)[:7]
        if m_now != month:  # monthly reports for the month that ended, early in the next one
            for party in list(active):
                plan.add(party, "MonthlyFlowReportSubmitted", {"__report__": month}, now)
            active.clear()
            month = m_now
        # receipts whose time came
        while pending and pending[0][0] <= k:
            _, chain, type_, body, _ = pending.pop(0)
            plan.add(chain, type_, body, now)
            active[chain] = True
            for line in body["lines"]:
                received[chain].append((line["lot"], _grams(line["kg"]), _grams(line["reo_kg"])))
            if len(received[chain]) >= 4:
                _separate(plan, chain, received[chain], now)
                received[chain] = []
            continue
        m = mines[k % len(mines)]
        p = plants[k % len(plants)]
        dry = 100_000_000 + (k % 997) * 2_000  # grams, even: REO = dry x 50% exactly
        reo = dry // 2
        lot = f"LOT-{m[-6:]}-{k:08d}"
        plan.add(m, "MineralProductProduced", {
            "lot": lot, "ore_type": "ROCK", "product": "BASTNAESITE_CONCENTRATE", "wet_kg": kg(dry + dry // 10),
            "dry_kg": kg(dry), "treo_pct": "50", "reo_kg": kg(reo),
            "element_distribution": {"La": "26.1", "Ce": "50.3", "Pr": "5.1", "Nd": "16.2", "Sm": "1.2", "Eu": "0.2",
                                     "Gd": "0.9"}}, now)
        tr += 1
        tid = f"T-{m[-6:]}-{tr:08d}"
        lines = [{"lot": lot, "product": "BASTNAESITE_CONCENTRATE", "kg": kg(dry), "reo_kg": kg(reo)}]
        plan.add(m, "TransferShipped", {"transfer_id": tid, "buyer": p, "lines": lines,
                                        "vat_invoice_no": f"{44000000 + tr:08d}", "shipped_at": ts(now)}, now)
        active[m] = True
        pending.append((k + 3, p, "TransferReceived", {"transfer_id": tid, "seller": m, "lines": lines,
                                                       "received_at": "__now__"}, 0))
        k += 1
    # receipts still due (so that nothing stays unreceived)
    for _, chain, type_, body, _ in pending:
        now += step
        plan.add(chain, type_, body, now)


def _grams(text: str) -> int:
    return int(Decimal(text) * 1000)


def _separate(plan: Plan, plant: str, lots: list[tuple[str, int, int]], now: int) -> None:
    reo_in = sum(r for _, _, r in lots)
    reo_out = reo_in * 98 // 100
    pr = reo_out * 21 // 100
    la = reo_out - pr
    batch = f"B-{plant[-6:]}-{now // MINUTE}"
    outputs = [{"lot": f"{batch}-PRND", "product": "PrNd_OXIDE", "kg": kg(pr * 1000 // 995 + 1), "purity_pct": "99.5",
                "reo_kg": kg(pr)},
               {"lot": f"{batch}-LA", "product": "La2O3", "kg": kg(la * 1000 // 995 + 1), "purity_pct": "99.5",
                "reo_kg": kg(la)}]
    plan.add(plant, "SeparationBatchRecorded", {
        "batch": batch, "period_start": ts(now - 2 * DAY), "period_end": ts(now - MINUTE),
        "inputs": [{"lot": lot, "kg": kg(g), "reo_kg": kg(r)} for lot, g, r in lots],
        "outputs": outputs, "losses_reo_kg": kg(reo_in - reo_out)}, now)
    plan.add(plant, "StockCounted", {"lot": outputs[0]["lot"], "counted_kg": outputs[0]["kg"],
                                     "counted_reo_kg": outputs[0]["reo_kg"], "location": "main warehouse"}, now)


# --- signing ---------------------------------------------------------------------------------

def sign_chain(args: tuple[str, list[tuple]]) -> tuple[str, list[bytes]]:
    """One chain's envelopes: ``args`` is (chain, its plan items in order); in a worker process
    (spawned: everything it needs comes in ``args``)."""
    chain, items = args
    signer = ChainSigner(key_of(chain))
    hashes: list[bytes] = []
    reported = 0
    out = []
    for _, type_, body, occ in items:
        if isinstance(body, tuple) and body[0] == "__key__":
            body = key_authorized_body(key_of(body[1]), ts(occ - MINUTE), name=f"bench key {body[1]}")
        elif isinstance(body, dict) and "__report__" in body:
            first, last = reported + 1, signer.seq
            body = {"month": body["__report__"], "totals": {}}
            if last >= first:
                body.update(first_seq=first, last_seq=last, digest=hashlib.sha256(b"".join(hashes[first - 1:last])).digest())
            else:
                body["digest"] = hashlib.sha256(b"").digest()
            reported = last
        elif isinstance(body, dict) and body.get("received_at") == "__now__":
            body = {**body, "received_at": ts(occ)}
        s = signer.sign(type_, body, ts(occ))
        hashes.append(s.hash)
        out.append(s.envelope)
    return chain, out


@dataclass
class Log:
    envelopes: list[bytes]
    occurred_us: list[int]
    genesis: int  # entries of the genesis (appended first, on their own)
    year: int
    mines: list[str]
    plants: list[str]

    def batches(self, size: int, start: int = 0, stop: int | None = None,
                lag_us: int = 5 * MINUTE) -> Iterator[tuple[int, list[bytes]]]:
        """(record time, envelopes) batches: each recorded a little after its last business time."""
        stop = len(self.envelopes) if stop is None else stop
        for i in range(start, stop, size):
            j = min(stop, i + size)
            yield max(self.occurred_us[i:j]) + lag_us, self.envelopes[i:j]


def sign_plan(plan: Plan, reg: ChainSigner, workers: int | None = None) -> list[bytes]:
    """The envelopes of ``plan`` in its order: the regulator's chain here (continuing ``reg``),
    every other chain in a pool of worker processes."""
    by_chain: dict[str, list[int]] = {}
    for pos, item in enumerate(plan.items):
        by_chain.setdefault(item[0], []).append(pos)
    reg_positions = by_chain.pop(REGULATOR, [])
    envs: list[bytes | None] = [None] * len(plan.items)
    for pos in reg_positions:
        _, type_, body, occ = plan.items[pos]
        if isinstance(body, tuple):
            body = key_authorized_body(key_of(body[1]), ts(occ - MINUTE), name=f"bench key {body[1]}")
        envs[pos] = reg.sign(type_, body, ts(occ)).envelope
    tasks = [(chain, [plan.items[pos] for pos in positions])
             for chain, positions in sorted(by_chain.items(), key=lambda kv: -len(kv[1]))]
    workers = max(1, workers or os.cpu_count() or 1)
    if workers > 1 and len(plan.items) > 4000 and main_importable():
        with ProcessPoolExecutor(max_workers=workers, mp_context=context()) as pool:
            results = list(pool.map(sign_chain, tasks))
    else:
        results = [sign_chain(t) for t in tasks]
    for chain, out in results:
        for pos, env in zip(by_chain[chain], out):
            envs[pos] = env
    return envs  # type: ignore[return-value]


def genesis(t0: int) -> tuple[ChainSigner, list[bytes]]:
    reg = ChainSigner(key_of(REGULATOR))
    ck = key_of(REGULATOR, "checkpoint")
    return reg, [s.envelope for s in genesis_entries(reg, ck, name="Ministry (bench)", origin=ORIGIN, at=ts(t0))]


def build(count: int, *, mines: int = 24, plants: int = 8, year: int = 2024, start_us: int | None = None,
          span_days: int = 330, workers: int | None = None) -> Log:
    """The genesis, the registry and quota of ``year``, then about ``count`` business entries."""
    t0 = start_us if start_us is not None else encoding.time_to_micros(datetime(year, 1, 2, tzinfo=timezone.utc))
    mine_ids = [mine_id(i) for i in range(mines)]
    plant_ids = [plant_id(i) for i in range(plants)]
    reg, gen = genesis(t0)
    plan = Plan()
    # the regulator's genesis entries are signed here: its chain continues from them
    setup_plan(plan, year, mine_ids, plant_ids, t0 + MINUTE)
    step = max(1_000_000, min(5 * MINUTE, span_days * DAY // max(1, count)))
    business_plan(plan, count, mine_ids, plant_ids, t0 + 10 * MINUTE, step)
    envs = sign_plan(plan, reg, workers)
    return Log(gen + envs, [t0] * len(gen) + [item[3] for item in plan.items], len(gen), year, mine_ids, plant_ids)  # type: ignore[operator]
