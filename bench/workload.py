"""The benchmark's workload: a small cast of parties and many pre-signed entries.

Everything is deterministic (keys from fixed seeds, command ids from positions), so the same
byte-identical envelopes can be appended to every backend and every database of a run.

The log it builds, in order:

* log index 0-2: the genesis (``reledger.ledger.genesis.genesis_entries``) on the regulator's chain;
* then, for each of ``parties`` enterprises, ``PartyRegistered`` + ``KeyAuthorized`` from the
  regulator's chain (so every later entry is valid: registered party, authorized key);
* then business entries (``TransferShipped``, ``MineralProductProduced``, ``StockCounted``)
  spread round-robin over the enterprises' chains.

Signing is the slow part of building a run (every entry is built, encoded and signed by
``reledger.ledger.entry.make_entry``), so business entries are signed one chain per task in a pool of
forked processes: a chain's entries depend only on its own key and previous hash.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.processes.start import context, main_importable

REGULATOR = "MIIT"
ORIGIN = "bench.reledger.example/log"
AT = "2020-01-01T00:00:00Z"  # valid_from of every key: before any record time of a run
ROLES = ("MINE", "SEPARATION", "SMELTER", "RECYCLER", "EXPORTER")
PROVINCES = ("Inner Mongolia", "Jiangxi", "Guangdong", "Sichuan", "Fujian", "Hunan", "Guangxi", "Yunnan")


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"reledger-bench/" + name.encode()).digest()


def party_id(i: int) -> str:
    """An 18-character unified-social-credit-code-like id."""
    return f"91{150200 + i:06d}MA0B{i:04d}X{i % 10}"


def regulator_key() -> SigningKey:
    return SigningKey.from_seed(REGULATOR, _seed(REGULATOR))


def checkpoint_key() -> SigningKey:
    return SigningKey.from_seed(REGULATOR, _seed("checkpoint"), purpose="checkpoint")


def party_key(i: int) -> SigningKey:
    return SigningKey.from_seed(party_id(i), _seed(party_id(i)))


def setup_entries(parties: int) -> list[bytes]:
    """Genesis plus the registration and key of each party: the first 3 + 2 * parties entries."""
    reg = ChainSigner(regulator_key())
    out = genesis_entries(reg, checkpoint_key(), name="Ministry of Industry and Information Technology",
                          origin=ORIGIN, at=AT)
    for i in range(parties):
        key = party_key(i)
        out.append(reg.sign("PartyRegistered", {
            "party": key.party, "name": f"Bench Rare Earth Co. {i}", "roles": [ROLES[i % len(ROLES)]],
            "province": PROVINCES[i % len(PROVINCES)], "licence": f"LIC-{i:06d}",
            "capacity_t_reo": "5000", "valid_from": AT}, AT))
        out.append(reg.sign("KeyAuthorized", key_authorized_body(key, AT, name=f"bench party {i}"), AT))
    return [s.envelope for s in out]


def _occurred_at(n: int) -> str:
    day = n % 28 + 1
    month = (n // 28) % 12 + 1
    return f"2024-{month:02d}-{day:02d}T{n % 24:02d}:{(n * 7) % 60:02d}:{(n * 13) % 60:02d}Z"


def _body(kind: int, n: int, chain: int) -> tuple[str, dict]:
    """A realistic body (a few hundred bytes once encoded)."""
    lot = f"LOT-{chain:03d}-{n:08d}"
    if kind == 0:
        return "TransferShipped", {
            "transfer_id": f"TR-{chain:03d}-{n:08d}", "buyer": party_id((chain + 1) % 97),
            "vat_invoice": f"{44000000 + n:08d}", "shipped_at": _occurred_at(n),
            "lines": [
                {"lot": lot, "product": "PrNd oxide", "kg": f"{1000 + n % 500}.5", "reo_kg": f"{990 + n % 500}.125"},
                {"lot": lot + "-B", "product": "Dy2O3", "kg": f"{20 + n % 30}", "reo_kg": f"{19 + n % 30}.8"},
            ]}
    if kind == 1 and ROLES[chain % len(ROLES)] != "MINE":
        # only a mine asserts mining output (ledger/authority.py: `reledger verify` would fail the
        # log); the other parties record an import of about the same size
        return "ImportReceived", {
            "lot": lot, "customs_declaration_no": f"{220100000000 + n:018d}", "hs_code": "2846901100",
            "origin_country": "MM", "form": "CONCENTRATE", "ore_type": "IONIC" if n % 2 else "ROCK",
            "dry_kg": f"{21000 + n % 9000}.25", "treo_pct": "92.5", "reo_kg": f"{19000 + n % 8000}.75",
            "distribution_pct": {"La2O3": "25.1", "CeO2": "48.7", "Pr6O11": "5.2", "Nd2O3": "17.3",
                                 "Tb4O7": "0.1", "Dy2O3": "0.3", "Y2O3": "3.3"}}
    if kind == 1:
        return "MineralProductProduced", {
            "lot": lot, "ore_type": "IONIC" if n % 2 else "ROCK", "wet_kg": f"{25000 + n % 9000}",
            "dry_kg": f"{21000 + n % 9000}.25", "treo_pct": "92.5", "reo_kg": f"{19000 + n % 8000}.75",
            "distribution_pct": {"La2O3": "25.1", "CeO2": "48.7", "Pr6O11": "5.2", "Nd2O3": "17.3",
                                 "Tb4O7": "0.1", "Dy2O3": "0.3", "Y2O3": "3.3"}}
    return "StockCounted", {"lot": lot, "product": "mixed carbonate", "counted_kg": f"{5000 + n % 3000}.5",
                            "warehouse": f"WH-{chain:02d}", "counted_by": "inventory team"}


def _sign_chain(args: tuple[int, int, int]) -> list[bytes]:
    """Entries 1..count of chain ``chain`` (a task of the signing pool)."""
    chain, count, first_global = args
    signer = ChainSigner(party_key(chain))
    out = []
    for k in range(count):
        n = first_global + k  # a number unique across the run
        type_, body = _body(n % 3, n, chain)
        cid = str(uuid.UUID(int=(chain << 64) | k))
        out.append(signer.sign(type_, body, _occurred_at(n), command_id=cid).envelope)
    return out


@dataclass
class Workload:
    """The envelopes of a run: ``setup`` (registry) then ``entries`` (business), in log order."""

    parties: int
    setup: list[bytes]
    entries: list[bytes]

    @property
    def all(self) -> list[bytes]:
        return self.setup + self.entries

    def mean_size(self) -> float:
        sample = self.entries[:2000] or self.setup
        return sum(map(len, sample)) / len(sample)


def build(count: int, parties: int = 8, workers: int | None = None) -> Workload:
    """Sign ``count`` business entries spread round-robin over ``parties`` chains."""
    per_chain = [count // parties + (1 if j < count % parties else 0) for j in range(parties)]
    tasks = [(j, per_chain[j], j * 10_000_000) for j in range(parties)]
    workers = max(1, min(workers or os.cpu_count() or 1, parties))
    if workers > 1 and count > 2000 and main_importable():
        with ProcessPoolExecutor(max_workers=workers, mp_context=context()) as pool:
            chains = list(pool.map(_sign_chain, tasks))
    else:
        chains = [_sign_chain(t) for t in tasks]
    entries: list[bytes] = []
    for k in range(max(per_chain, default=0)):
        for j in range(parties):
            if k < per_chain[j]:
                entries.append(chains[j][k])
    return Workload(parties, setup_entries(parties), entries)
