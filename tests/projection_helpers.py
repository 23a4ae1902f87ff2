"""Builders for the projection tests: a ledger behind a CommandAPI with a controlled record
clock, a registered cast with signers, fresh databases of the same backend, dumps of the
projection tables and copies of a log cut at a point.

Import from tests as ``from projection_helpers import ...``.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

from reledger.commands.api import CommandAPI, CommandError, CommandReceipt
from reledger.commands.catalogue import report_digest
from conftest import PG_URL, _with_schema, drop_schema
from reledger.ledger import encoding
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.storage.reader import DatabaseURL
from reledger.storage.store import LedgerStore
from reledger.projections.store import P, ProjectionStore

T0 = "2024-01-01T00:00:00Z"
HOUR = 3600 * 1_000_000
DAY = 24 * HOUR
ORIGIN = "reledger.test/projections"

#: party -> (roles, group)
CAST: dict[str, tuple[list[str], str | None]] = {
    "GRP01": (["GROUP"], None),
    "MINE01": (["MINE"], "GRP01"),
    "MINE02": (["MINE"], "GRP01"),
    "SEP01": (["SEPARATION"], "GRP01"),
    "SEP02": (["SEPARATION"], None),
    "SMELT01": (["SMELTER"], None),
    "EXPO01": (["EXPORTER"], None),
    "RECY01": (["RECYCLER"], None),
}

_seed = itertools.count(1)


def us(text: str) -> int:
    return encoding.time_to_micros(encoding.parse_time(text))


def ts(micros: int) -> str:
    return encoding.micros_to_time_text(micros - micros % 1_000_000)


def dt_us(*args: int) -> int:
    return encoding.time_to_micros(datetime(*args, tzinfo=timezone.utc))


def kg(g: int) -> str:
    return encoding.decimal_text(Decimal(g) / 1000)


def key_for(party: str, purpose: str = "entries") -> SigningKey:
    n = next(_seed)
    return SigningKey.from_seed(party, n.to_bytes(4, "big") * 8, purpose)


# --- databases ----------------------------------------------------------------------------

class Databases:
    """Fresh database URLs of the backend of ``base`` (a file beside it, or a new schema);
    :meth:`cleanup` drops what it made."""

    def __init__(self, base: str):
        self.base = base
        self.pg = DatabaseURL.parse(base).backend == "postgres"
        self.schemas: list[str] = []

    def fresh(self) -> str:
        if self.pg:
            schema = "t_" + uuid.uuid4().hex[:12]
            self.schemas.append(schema)
            return _with_schema(PG_URL, schema)
        path = Path(DatabaseURL.parse(self.base).path)
        return f"sqlite:///{path.parent / ('db_' + uuid.uuid4().hex[:10] + '.db')}"

    def cleanup(self) -> None:
        for s in self.schemas:
            drop_schema(s)
        self.schemas.clear()


# --- a ledger with a clock ------------------------------------------------------------------

class World:
    """A LedgerStore (record clock ``now``) behind a CommandAPI; the regulator and the cast."""

    def __init__(self, url: str, now: int | None = None, cast: dict | None = None):
        self.url = url
        self.now = dt_us(2024, 1, 1) if now is None else now
        self.store = LedgerStore(url, clock=lambda: self.now)
        self.api = CommandAPI(self.store)
        self.signers: dict[str, ChainSigner] = {}
        self.hashes: dict[str, list[bytes]] = {}
        self.reg = ChainSigner(key_for("MIIT"))
        self.signers["MIIT"] = self.reg
        self.ck = key_for("MIIT", "checkpoint")
        self.api.submit(genesis_entries(self.reg, self.ck, name="Ministry", origin=ORIGIN, at=T0))
        self.n = 0
        if cast is None:
            cast = CAST
        if cast:
            self.register_many(cast)

    def close(self) -> None:
        self.api.close()
        self.store.close()

    def uid(self) -> int:
        self.n += 1
        return self.n

    def register_many(self, cast: dict[str, tuple[list[str], str | None]], valid_from: str = T0) -> None:
        items = []
        keys = {}
        for party, (roles, group) in cast.items():
            keys[party] = key_for(party)
            body = {"party": party, "name": f"{party} Co.", "roles": list(roles), "province": "Jiangxi",
                    "valid_from": valid_from}
            if group:
                body["group"] = group
            items.append(("PartyRegistered", body))
            items.append(("KeyAuthorized", key_authorized_body(keys[party], valid_from)))
        # groups first (members name them)
        items.sort(key=lambda it: 0 if it[0] == "PartyRegistered" and "GROUP" in it[1]["roles"] else 1)
        self.group("MIIT", items, at=T0)
        for party, k in keys.items():
            self.signers[party] = ChainSigner(k)

    def register(self, party: str, roles: Sequence[str], group: str | None = None, **extra) -> ChainSigner:
        k = key_for(party)
        body = {"party": party, "name": f"{party} Co.", "roles": list(roles), "province": "Jiangxi",
                "valid_from": extra.pop("valid_from", T0), **extra}
        if group:
            body["group"] = group
        self.group("MIIT", [("PartyRegistered", body), ("KeyAuthorized", key_authorized_body(k, T0))], at=T0)
        self.signers[party] = ChainSigner(k)
        return self.signers[party]

    def group(self, party: str, items, at: str | None = None) -> list[CommandReceipt]:
        s = self.signers[party]
        seq, head = s.seq, s.head
        entries = [s.sign(t, b, at or ts(self.now)) for t, b in items]
        try:
            receipts = self.api.submit(entries)
        except CommandError:
            s.seq, s.head = seq, head
            raise
        self.hashes.setdefault(party, []).extend(e.hash for e in entries)
        return receipts

    def ok(self, party: str, type: str, body: dict, at: str | int | None = None) -> CommandReceipt:
        """Submit one entry (business time ``at``: text, micros or the clock) and return its receipt."""
        if isinstance(at, int):
            at = ts(at)
        return self.group(party, [(type, body)], at=at)[0]

    def raw(self, party: str, type: str, body: dict, at: Any = None):
        """Append past the command API (as another writer or a restored database could): the
        store's own checks only (keys, signatures, chains), no reference checks."""
        if isinstance(at, int):
            at = ts(at)
        s = self.signers[party]
        entry = s.peek(type, body, at or ts(self.now))
        receipt = self.store.append([entry])[0]
        s.advance(entry)
        self.hashes.setdefault(party, []).append(entry.hash)
        return receipt

    def ref(self, chain: str, seq: int) -> dict:
        rec = self.store.entry(chain, seq)
        return {"chain": chain, "seq": seq, "hash": rec.entry_hash}

    def head_seq(self, party: str) -> int:
        return self.signers[party].seq

    # --- common entries -----------------------------------------------------------------
    def produce(self, mine: str, lot: str, reo_g: int, ore: str = "ROCK", at: Any = None,
                product: str | None = None) -> CommandReceipt:
        dry = reo_g * 2
        body = {"lot": lot, "ore_type": ore, "wet_kg": kg(dry + dry // 10), "dry_kg": kg(dry), "treo_pct": "50",
                "reo_kg": kg(reo_g)}
        if product:
            body["product"] = product
        return self.ok(mine, "MineralProductProduced", body, at)

    def ship(self, seller: str, buyer: str, tid: str, lines: list[tuple[str, str, int, int]],
             at: Any = None) -> CommandReceipt:
        body = {"transfer_id": tid, "buyer": buyer, "vat_invoice_no": f"INV-{tid}",
                "shipped_at": ts(self.now) if at is None else (at if isinstance(at, str) else ts(at)),
                "lines": [{"lot": lot, "product": p, "kg": kg(g), "reo_kg": kg(r)} for lot, p, g, r in lines]}
        return self.ok(seller, "TransferShipped", body, at)

    def receive(self, buyer: str, seller: str, tid: str, lines: list[tuple[str, str, int, int]],
                at: Any = None) -> CommandReceipt:
        body = {"transfer_id": tid, "seller": seller, "received_at": ts(self.now),
                "lines": [{"lot": lot, "product": p, "kg": kg(g), "reo_kg": kg(r)} for lot, p, g, r in lines]}
        return self.ok(buyer, "TransferReceived", body, at)

    def report(self, party: str, month: str, first: int | None, last: int | None, digest: bytes | None = None,
               at: Any = None) -> CommandReceipt:
        body: dict[str, Any] = {"month": month, "totals": {}}
        if first is not None:
            body["first_seq"], body["last_seq"] = first, last
            covered = self.hashes[party][first - 1:last]
        else:
            covered = []
        body["digest"] = digest if digest is not None else report_digest(covered)
        if digest is not None and digest != report_digest(covered):
            # a wrong digest: the write path may refuse it, so it comes past the command API
            return self.raw(party, "MonthlyFlowReportSubmitted", body, at)
        return self.ok(party, "MonthlyFlowReportSubmitted", body, at)


# --- projection tables ----------------------------------------------------------------------

_DUMP = {
    "quota": "idx, occurred_us, year, party, category, kind, g, grp",
    "stock": "idx, occurred_us, party, lot, product, g, reo_g",
    "flow": "idx, occurred_us, kind, src_party, src_lot, dst_party, dst_lot, product, g, reo_g, ref",
    "lots": "idx, lot, party, product, origin",
    "parties": "idx, party, name, roles, province, grp, valid_from_us, valid_until_us",
    "credit": "idx, occurred_us, party, kind, article, fine, cut_g, detail",
    "findings": "idx, occurred_us, rule, code, party, message, evidence, params",
    # the quota totals kept at positions (multiples of QUOTA_SUMS_EVERY) up to n
    "quota_sums": "position, year, party, category, kind, grp, g",
    "quota_marks": "position, max_occurred_us",
}


def assert_rebuild_equals(w, got: dict[str, list[tuple]]) -> None:
    """A fresh rebuild of the ledger ``w`` writes exactly the rows ``got`` (a :func:`dump`):
    no row twice, none missing."""
    fresh = ProjectionStore(w.url)
    try:
        fresh.rebuild()
        assert dump(fresh) == got
    finally:
        fresh.close()


def dump(ps: ProjectionStore, n: int | None = None) -> dict[str, list[tuple]]:
    """Every projection row (of entries below log size ``n``), sorted: two projections are equal
    when their dumps are."""
    out = {}
    for table, cols in _DUMP.items():
        where = " WHERE position <= ?" if table.startswith("quota_") else " WHERE idx < ?"
        sql = f"SELECT {cols} FROM {P}{table}" + ("" if n is None else where)
        rows = ps.execute(sql, () if n is None else (n,))
        out[table] = sorted((tuple("" if v is None else (int(v) if isinstance(v, int) else str(v)) for v in r)
                             for r in rows), key=repr)
    return out


def copy_cut(src: LedgerStore, n: int, url: str) -> LedgerStore:
    """A new ledger at ``url`` holding the first ``n`` entries of ``src`` with their record times."""
    clock = {"t": 0}
    dst = LedgerStore(url, clock=lambda: clock["t"])
    group: list[bytes] = []
    for rec in src.records(0, n):
        if group and rec.recorded_us != clock["t"]:
            dst.append(group)
            group = []
        clock["t"] = rec.recorded_us
        group.append(rec.envelope)
    if group:
        dst.append(group)
    return dst


# --- findings ---------------------------------------------------------------------------------

def project(url: str) -> ProjectionStore:
    ps = ProjectionStore(url)
    ps.catch_up()
    return ps


def all_findings(url: str) -> list[dict]:
    from reledger.projections import queries

    ps = project(url)
    try:
        return queries.findings(ps)["findings"]
    finally:
        ps.close()


def ev(*receipts) -> list[tuple[str, int, str]]:
    """Evidence as (chain, seq, hash hex) of receipts (CommandReceipt / Receipt)."""
    return [(r.chain, r.seq, r.entry_hash.hex()) for r in receipts]


def summary(f: dict) -> tuple:
    """(code, party, evidence as (chain, seq, hash hex)) of a finding dict."""
    return f["code"], f["party"], [(e["chain"], e["seq"], e["hash"]) for e in f["evidence"]]


def flow_rows(ps, point=None, touching: str | None = None) -> list[dict[str, Any]]:
    """Every flow row at ``point`` (from or to ``touching`` only, when given), in log order, as
    the flow graph's dicts: the naive read of the whole table the graphs are checked against."""
    from reledger.projections.queries import Point

    n, t = (point or Point()).bounds(ps)
    where, params = "idx < ? AND occurred_us <= ?", (n, t)
    if touching is not None:
        where, params = where + " AND (src_party = ? OR dst_party = ?)", params + (touching, touching)
    rows = ps.execute(f"SELECT idx, occurred_us, kind, src_party, src_lot, dst_party, dst_lot, product, g, reo_g, ref "
                      f"FROM {P}flow WHERE {where} ORDER BY idx", params)
    return [{"index": int(i), "occurred_us": int(o), "kind": k, "src_party": sp, "src_lot": sl, "dst_party": dp,
             "dst_lot": dl, "product": pr, "g": int(g), "reo_g": int(r), "ref": ref}
            for i, o, k, sp, sl, dp, dl, pr, g, r, ref in rows]


def over_quota_and_checkpointed(w: "World") -> None:
    """A quota batch for GRP01, MINE01 producing over it and shipping to SEP01, then a
    checkpoint (the activity the read-only and replay-wait ledgers start from)."""
    from reledger.ledger.checkpoint import NoteSigner

    w.ok("MIIT", "QuotaBatchIssued", {"year": 2024, "batch_no": 1, "document_no": "Q-1", "holder": "GRP01",
                                      "mining_rock_t_reo": "10", "mining_ionic_t_reo": "0",
                                      "separation_t_reo": "10"}, at="2024-01-02T00:00:00Z")
    w.produce("MINE01", "L1", 20_000_000, at="2024-01-03T00:00:00Z")  # over its group's quota
    w.ship("MINE01", "SEP01", "T1", [("L1", "RE_CONCENTRATE", 1000, 500)], at="2024-01-04T00:00:00Z")
    w.store.checkpoint(NoteSigner("reledger.test/projections", w.ck.private_key))
