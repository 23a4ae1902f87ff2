"""The command API on a real LedgerStore (SQLite and PostgreSQL): every entry type accepted,
every kind of invalid field refused with its message and nothing written, the authorization
matrix, idempotency, group commit, and a property: any command gives receipts or a CommandError.
"""

from __future__ import annotations

import os
import uuid

import msgpack
import pytest
from hypothesis import event, given, settings, strategies as st

from reledger.commands.api import CommandAPI, CommandError, CommandReceipt
from reledger.commands.catalogue import ERROR_CODES, SCHEMAS, report_digest
from reledger.commands.validate import AUTHORITY_TYPES, AUTHORIZED_ROLES
from conftest import PG_URL, _with_schema, drop_schema, require_pg
from reledger.ledger import encoding
from reledger.ledger.entry import ENTRY_TAG, SignedEntry, make_entry
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey, key_id
from reledger.storage.store import LedgerStore

T0 = "2024-01-01T00:00:00Z"
CAST = {"CREG": ["GROUP"], "MINE01": ["MINE"], "SEP01": ["SEPARATION"], "SMELT01": ["SMELTER"],
        "RECY01": ["RECYCLER"], "EXPO01": ["EXPORTER"], "AUD01": ["AUDITOR"]}
ROLE_PARTY = {"REGULATOR": "MIIT", **{roles[0]: p for p, roles in CAST.items()}}


class World:
    """A ledger behind a CommandAPI, with the cast registered and their signers."""

    def __init__(self, url: str):
        self.store = LedgerStore(url)
        self.api = CommandAPI(self.store)
        self.reg = ChainSigner(SigningKey.generate("MIIT"))
        self.api.submit(genesis_entries(self.reg, SigningKey.generate("MIIT", "checkpoint"), name="MIIT",
                                        origin="reledger.test/log", at=T0))
        self.signers: dict[str, ChainSigner] = {"MIIT": self.reg}
        self.n = 0
        for party, roles in CAST.items():
            self.register(party, roles)
        self.spare = SigningKey.generate("MINE01")
        self.ok("MIIT", "KeyAuthorized", key_authorized_body(self.spare, T0))

    def close(self) -> None:
        self.api.close()
        self.store.close()

    def register(self, party: str, roles, **extra) -> ChainSigner:
        key = SigningKey.generate(party)
        body = {"party": party, "name": f"{party} Co., Ltd.", "roles": list(roles), "province": "Jiangxi",
                "valid_from": T0, **extra}
        self.group("MIIT", [("PartyRegistered", body), ("KeyAuthorized", key_authorized_body(key, T0))])
        self.signers[party] = ChainSigner(key)
        return self.signers[party]

    def group(self, party: str, items, at: str = T0) -> list[CommandReceipt]:
        s = self.signers[party]
        seq, head = s.seq, s.head
        entries = [s.sign(t, b, at) for t, b in items]
        try:
            return self.api.submit(entries)
        except CommandError:
            s.seq, s.head = seq, head
            raise

    def attempt(self, party: str, type: str, body: dict, at: str = T0):
        """The receipt, or the CommandError (the signer advances only on success)."""
        s = self.signers[party]
        e = s.peek(type, body, at)
        try:
            r = self.api.submit([e])
        except CommandError as err:
            return err
        s.advance(e)
        return r[0]

    def ok(self, party: str, type: str, body: dict, at: str = T0) -> CommandReceipt:
        r = self.attempt(party, type, body, at)
        assert isinstance(r, CommandReceipt), f"{type} by {party} refused: {r.code}: {r}"
        return r

    def ref(self, chain: str, seq: int) -> dict:
        rec = self.store.entry(chain, seq)
        return {"chain": chain, "seq": seq, "hash": rec.entry_hash}

    def uid(self) -> int:
        self.n += 1
        return self.n


def example(w: World, type: str, party: str) -> dict:
    """A schema-valid body of ``type`` as ``party`` would send it (ids fresh each call; references
    point at what exists when they can, so that an allowed party's attempt is not refused for
    its role)."""
    n = w.uid()
    other = "SEP01" if party != "SEP01" else "MINE01"
    own_seq = w.store.chain_head(party)[0]
    own_ref = w.ref(party, own_seq) if own_seq else w.ref("MIIT", 1)
    line = {"lot": f"M-{n}", "product": "RE_CONCENTRATE", "kg": "10500.5", "reo_kg": "5796.276"}
    bodies = {
        "PartyRegistered": {"party": f"NEW{n:04d}", "name": "New Mining Co.", "roles": ["MINE"],
                            "province": "Sichuan", "county": "Mianning", "licence": "C5100002009",
                            "capacity_t_reo": "5000", "valid_from": T0, "valid_until": "2026-12-31T00:00:00Z"},
        "PartyDesignationChanged": {"party": "MINE01", "valid_from": "2024-06-01T00:00:00Z",
                                    "licence": f"C36000020{n:02d}", "reason": "licence renewed"},
        "KeyAuthorized": key_authorized_body(SigningKey.generate("MINE01"), T0, reason="rotation"),
        "KeyRevoked": {"party": "MINE01", "key_id": w.spare.key_id, "reason": "rotated"},
        "GroupMembershipChanged": {"party": "SEP01", "group": "CREG", "action": "JOINED",
                                   "effective_from": T0, "reason": "merger"},
        "AnnualTotalApproved": {"year": 2024, "mining_rock_t_reo": "259860", "mining_ionic_t_reo": "10140",
                                "separation_t_reo": "254000", "approval_ref": f"GF-2024-{n}"},
        "QuotaBatchIssued": {"year": 2024, "batch_no": n % 100 + 1, "document_no": f"GXB-2024-{n}",
                             "holder": "CREG", "mining_rock_t_reo": "30280", "mining_ionic_t_reo": "10140",
                             "separation_t_reo": "38990", "basis": "OUTPUT", "reserve": False},
        "QuotaSubAllocated": {"batch": {"year": 2024, "batch_no": 1}, "enterprise": "MINE01",
                              "category": "MINING_ROCK", "t_reo": "1200.5"},
        "QuotaReduced": {"year": 2025, "holder": "SEP01", "category": "SEPARATION", "t_reo": "50",
                         "penalty": w.ref("MIIT", 1)},
        "MineralProductProduced": {"lot": f"M-{n}", "ore_type": "ROCK", "wet_kg": "12000", "dry_kg": "10500.5",
                                   "treo_pct": "55.2", "reo_kg": "5796.276",
                                   "element_distribution": {"La": "25", "Ce": "50", "Pr": "5", "Nd": "18",
                                                            "Sm": "2"}, "site": "Bayan Obo east pit"},
        "ImportReceived": {"lot": f"IMP-{n}", "customs_declaration_no": f"53162024000{n:04d}",
                           "hs_code": "2530902000", "origin_country": "MM", "form": "MONAZITE",
                           "dry_kg": "20000", "treo_pct": "60", "reo_kg": "12000"},
        "SecondaryFeedReceived": {"lot": f"SCR-{n}", "scrap_type": "MAGNET_SCRAP", "source": "Ningbo magnet works",
                                  "kg": "5000", "treo_pct": "30", "reo_kg": "1500"},
        "SeparationBatchRecorded": {"batch": f"SB-{n}", "period_start": "2024-02-01T00:00:00Z",
                                    "period_end": "2024-02-10T00:00:00Z",
                                    "inputs": [{"lot": "M-1", "reo_kg": "5796.276", "kg": "10500.5"}],
                                    "outputs": [{"lot": f"NDO-{n}", "product": "Nd2O3", "kg": "1000",
                                                 "purity_pct": "99.5", "reo_kg": "995"},
                                                {"lot": f"LAO-{n}", "product": "La2O3", "kg": "4500",
                                                 "purity_pct": "99.99", "reo_kg": "4495.5"}],
                                    "losses_reo_kg": "305.776"},
        "MetalSmelted": {"batch": f"MB-{n}", "inputs": [{"lot": "NDO-1", "kg": "1000", "reo_kg": "995"}],
                         "outputs": [{"lot": f"NDM-{n}", "product": "Nd_METAL", "kg": "850", "factor": "1.1664",
                                      "reo_kg": "991.44"}]},
        "TransferShipped": {"transfer_id": f"T-{n}", "buyer": other, "lines": [line],
                            "vat_invoice_no": f"0447{n:04d}", "shipped_at": "2024-01-20T08:00:00Z"},
        "TransferReceived": {"transfer_id": "T-1", "seller": "MINE01", "lines": [line],
                             "received_at": "2024-01-21T10:30:00Z"},
        "ExportDeclared": {"lot": "NDM-1", "product": "Nd_METAL", "kg": "850", "reo_kg": "991.44",
                           "customs_declaration_no": f"22012024{n:06d}", "export_licence_no": "EL-2024-33",
                           "destination_country": "JP"},
        "StockCounted": {"product": "Nd2O3", "counted_kg": "0", "location": "warehouse 2"},
        "MonthlyFlowReportSubmitted": {"month": "2024-01", "first_seq": 1, "last_seq": max(own_seq, 1),
                                       "totals": {"produced_reo_kg": "5796.276", "shipped_reo_kg": "0"},
                                       "digest": report_digest(
                                           w.store.entry(party, s).entry_hash for s in range(1, own_seq + 1))},
        "QuotaExecutionReported": {"period": "2024-03", "lines": [
            {"category": "MINING_ROCK", "used_t_reo": "310.2", "allocated_t_reo": "1200.5"}]},
        "InspectionRecorded": {"party": "SEP01", "inspection_no": f"JX-2024-{n}", "inspected_at": "2024-04-02T09:00:00Z",
                               "result": "ISSUES_FOUND", "notes": "stock differs", "evidence": [w.ref("MIIT", 1)]},
        "ViolationFound": {"party": "SEP01", "rule": "MASS_BALANCE", "article": "Decree 785 Art. 25",
                           "description": "output above input REO", "evidence": [w.ref("MIIT", 1)]},
        "PenaltyImposed": {"party": "SEP01", "violation": w.ref("MIIT", 1), "decision_no": f"JXGX-2024-{n}",
                           "article": "Decree 785 Art. 25", "fine_cny": "150000.5", "next_year_cut_t_reo": "50"},
        "CorrectionRecorded": {"corrects": own_ref, "reason": "INCORRECT_DATA",
                               "explanation": "counted the wrong warehouse"},
        "RuleParameterSet": {"name": "receipt_within_days", "value": "30", "reason": "MIIT notice"},
    }
    assert set(bodies) == set(SCHEMAS)
    return bodies[type]


def run_scenario(w: World) -> dict[str, CommandReceipt]:
    """One valid entry of every type, in a coherent story; type -> receipt."""
    got: dict[str, CommandReceipt] = {}

    def do(party: str, type: str, body: dict | None = None, at: str = T0) -> CommandReceipt:
        r = w.ok(party, type, body if body is not None else example(w, type, party), at)
        got.setdefault(type, r)
        return r

    do("MIIT", "PartyRegistered")
    do("MIIT", "PartyDesignationChanged")
    key = SigningKey.generate("SEP01")
    do("MIIT", "KeyAuthorized", key_authorized_body(key, T0, reason="second terminal"))
    do("MIIT", "KeyRevoked", {"party": "SEP01", "key_id": key.key_id, "reason": "terminal retired"})
    do("MIIT", "GroupMembershipChanged")
    do("MIIT", "AnnualTotalApproved")
    do("MIIT", "QuotaBatchIssued", {**example(w, "QuotaBatchIssued", "MIIT"), "batch_no": 1})
    do("CREG", "QuotaSubAllocated")
    do("MINE01", "MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": "M-1"})
    ship = {**example(w, "TransferShipped", "MINE01"), "transfer_id": "T-1"}
    ship["lines"][0]["lot"] = "M-1"
    do("MINE01", "TransferShipped", ship)
    do("SEP01", "TransferReceived", {**example(w, "TransferReceived", "SEP01"), "lines": ship["lines"]})
    do("SEP01", "ImportReceived")
    sep = example(w, "SeparationBatchRecorded", "SEP01")
    sep["outputs"][0]["lot"] = "NDO-1"
    do("SEP01", "SeparationBatchRecorded", sep)
    do("SEP01", "TransferShipped", {"transfer_id": "T-2", "buyer": "SMELT01", "lines": [
        {"lot": "NDO-1", "product": "Nd2O3", "kg": "1000", "reo_kg": "995"}], "vat_invoice_no": "0447-2",
        "shipped_at": "2024-02-11T08:00:00Z"})
    do("SMELT01", "TransferReceived", {"transfer_id": "T-2", "seller": "SEP01", "lines": [
        {"lot": "NDO-1", "product": "Nd2O3", "kg": "999.5"}], "received_at": "2024-02-12T08:00:00Z"})
    smelt = example(w, "MetalSmelted", "SMELT01")
    smelt["outputs"][0]["lot"] = "NDM-1"
    do("SMELT01", "MetalSmelted", smelt)
    do("RECY01", "SecondaryFeedReceived")
    do("EXPO01", "ExportDeclared")
    stock = do("SEP01", "StockCounted", {"lot": "NDO-1", "counted_kg": "0.5", "counted_reo_kg": "0.497"})
    do("SEP01", "MonthlyFlowReportSubmitted")
    do("MINE01", "QuotaExecutionReported")
    insp = do("MIIT", "InspectionRecorded", {**example(w, "InspectionRecorded", "MIIT"),
                                             "evidence": [w.ref("SEP01", stock.seq)]})
    viol = do("MIIT", "ViolationFound", {**example(w, "ViolationFound", "MIIT"), "evidence": [
        w.ref("SEP01", stock.seq), w.ref("MINE01", 1)], "inspection": w.ref("MIIT", insp.seq)})
    pen = do("MIIT", "PenaltyImposed", {**example(w, "PenaltyImposed", "MIIT"), "violation": w.ref("MIIT", viol.seq)})
    do("MIIT", "QuotaReduced", {**example(w, "QuotaReduced", "MIIT"), "penalty": w.ref("MIIT", pen.seq)})
    do("MIIT", "RuleParameterSet")
    do("SEP01", "CorrectionRecorded", {"corrects": w.ref("SEP01", stock.seq), "reason": "INCORRECT_DATA",
                                       "explanation": "counted the wrong warehouse",
                                       "replaced_by": [w.ref("SEP01", stock.seq + 1)]})
    return got


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def world(db_url):
    w = World(db_url)
    yield w
    w.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def mworld(request, tmp_path_factory):
    """A module-wide world with the scenario run, on each backend (refusals write nothing, so
    the tests that only provoke refusals share it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'ledger.db'}"
        schema = None
    else:
        require_pg()
        schema = "t_" + uuid.uuid4().hex[:12]
        url = _with_schema(PG_URL, schema)
    w = World(url)
    run_scenario(w)
    yield w
    w.close()
    if schema:
        drop_schema(schema)


# --- every type accepted ----------------------------------------------------------------------

def test_every_entry_type_accepted(world):
    got = run_scenario(world)
    assert set(got) == set(SCHEMAS)
    size = world.store.size()
    assert all(0 < r.index < size and not r.duplicate and r.findings == () for r in got.values())
    # the log verifies, and a fresh API over the same store rebuilds the same write state
    from reledger.storage.verify import verify_database

    assert verify_database(world.store.url, workers=1).ok
    fresh = CommandAPI(world.store)
    fresh._catch_up()
    a, b = world.api.state, fresh.state
    assert (a.size, a.heads, a.parties, a.shipments, a.quota_batches, a.lots, a.batches) == \
           (b.size, b.heads, b.parties, b.shipments, b.quota_batches, b.lots, b.batches)
    s = a.shipments[("MINE01", "T-1")]
    assert s.buyer == "SEP01" and s.received_index == got["TransferReceived"].index
    assert a.lots["NDO-1"].type == "SeparationBatchRecorded" and a.lots["M-1"].chain == "MINE01"


# --- invalid commands: refused with their message, nothing written ---------------------------------

def _mut(type_, party, change, code, field, text):
    return pytest.param(type_, party, change, code, field, text, id=f"{type_}-{code}-{field}")


def _set(path, value):
    def change(body):
        *parents, last = path
        d = body
        for p in parents:
            d = d[p]
        if value is _DEL:
            del d[last]
        else:
            d[last] = value
    return change


_DEL = object()

INVALID = [
    _mut("MineralProductProduced", "MINE01", _set(["dry_kg"], _DEL), "missing_field", "body.dry_kg", "missing"),
    _mut("MineralProductProduced", "MINE01", _set(["colour"], "red"), "unknown_field", "body.colour",
         "not a field"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], 12000), "wrong_type", "body.wet_kg",
         "must be decimal text in kg"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "12000.50"), "bad_value", "body.wet_kg", "normal form"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "1.2e4"), "bad_value", "body.wet_kg", "normal form"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "12000.0001"), "bad_value", "body.wet_kg",
         "more than 3 decimals"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "-12000"), "out_of_range", "body.wet_kg",
         "must not be negative"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "2000000000"), "out_of_range", "body.wet_kg",
         "absurd"),
    _mut("MineralProductProduced", "MINE01", _set(["wet_kg"], "0"), "out_of_range", "body.wet_kg", "more than 0"),
    _mut("MineralProductProduced", "MINE01", _set(["treo_pct"], "100.5"), "out_of_range", "body.treo_pct", "absurd"),
    _mut("MineralProductProduced", "MINE01", _set(["ore_type"], "SAND"), "bad_enum", "body.ore_type",
         "'SAND' is not one of ROCK, IONIC"),
    _mut("MineralProductProduced", "MINE01", _set(["element_distribution", "Xx"], "3"), "bad_enum",
         "body.element_distribution.Xx", "not one of"),
    _mut("MineralProductProduced", "MINE01", _set(["dry_kg"], "13000"), "inconsistent", "body.dry_kg",
         "dry mass above wet mass"),
    _mut("MineralProductProduced", "MINE01", _set(["lot"], "M 1"), "bad_value", "body.lot", "is not like"),
    _mut("MineralProductProduced", "MINE01", _set(["site"], ""), "bad_value", "body.site", "must not be empty"),
    _mut("MineralProductProduced", "MINE01", _set(["site"], "x" * 201), "out_of_range", "body.site",
         "at most 200 characters"),
    _mut("MineralProductProduced", "MINE01", _set(["lot"], "M-1"), "duplicate", "body.lot",
         "lot M-1 was already created by MINE01"),
    _mut("ImportReceived", "SEP01", _set(["lot"], "M-1"), "duplicate", "body.lot", "lot id M-1 is already taken"),
    _mut("TransferShipped", "MINE01", _set(["shipped_at"], "2024-01-20 08:00:00"), "bad_value",
         "body.shipped_at", "RFC 3339"),
    _mut("TransferShipped", "MINE01", _set(["shipped_at"], "1024-01-20T08:00:00Z"), "out_of_range",
         "body.shipped_at", "absurd"),
    _mut("TransferShipped", "MINE01", _set(["buyer"], "sep01"), "bad_value", "body.buyer", "is not like"),
    _mut("TransferShipped", "MINE01", _set(["buyer"], "NOBODY"), "unknown_reference", "body.buyer",
         "party NOBODY is not registered"),
    _mut("TransferShipped", "MINE01", _set(["buyer"], "MINE01"), "inconsistent", "body.buyer", "itself"),
    _mut("TransferShipped", "MINE01", _set(["lines"], []), "out_of_range", "body.lines", "at least 1"),
    _mut("TransferShipped", "MINE01", _set(["lines"], "M-1"), "wrong_type", "body.lines", "must be a list"),
    _mut("TransferShipped", "MINE01", _set(["lines", 0, "kg"], "-1"), "out_of_range", "body.lines[0].kg",
         "negative"),
    _mut("TransferShipped", "MINE01", _set(["lines", 0, "product"], "GOLD"), "bad_enum", "body.lines[0].product",
         "products of reference data 2024.1"),
    _mut("TransferShipped", "MINE01", _set(["transfer_id"], "T-1"), "duplicate", "body.transfer_id",
         "already shipped"),
    _mut("TransferReceived", "SEP01", _set(["transfer_id"], "T-404"), "unknown_reference", "body.transfer_id",
         "no shipment T-404 from MINE01 to SEP01"),
    _mut("TransferReceived", "SMELT01", _set(["transfer_id"], "T-1"), "unknown_reference", "body.transfer_id",
         "no shipment T-1 from MINE01 to SMELT01"),
    _mut("TransferReceived", "SEP01", _set(["transfer_id"], "T-1"), "already_received", "body.transfer_id",
         "already received"),
    _mut("SeparationBatchRecorded", "SEP01", _set(["outputs", 0, "purity_pct"], "101"), "out_of_range",
         "body.outputs[0].purity_pct", "absurd"),
    _mut("SeparationBatchRecorded", "SEP01", _set(["outputs", 1, "lot"], "NDO-X"), None, None, None),
    _mut("SeparationBatchRecorded", "SEP01", _set(["outputs", 1, "product"], "Nd_METAL"), "inconsistent",
         "body.outputs[1].product", "is a METAL product; here it must be SEPARATED or MINERAL"),
    _mut("MetalSmelted", "SMELT01", _set(["outputs", 0, "product"], "Nd2O3"), "inconsistent",
         "body.outputs[0].product", "must be METAL or ALLOY"),
    _mut("MineralProductProduced", "MINE01", _set(["product"], "Dy2O3"), "inconsistent", "body.product",
         "must be MINERAL"),
    _mut("SeparationBatchRecorded", "SEP01", _set(["period_end"], "2024-01-01T00:00:00Z"), "inconsistent",
         "body.period_end", "later than period_start"),
    _mut("SeparationBatchRecorded", "SEP01", _set(["inputs", 0, "extra"], "1"), "unknown_field",
         "body.inputs[0].extra", "not a field"),
    _mut("QuotaBatchIssued", "MIIT", _set(["year"], 1800), "out_of_range", "body.year", "between 1990 and 2099"),
    _mut("QuotaBatchIssued", "MIIT", _set(["year"], "2024"), "wrong_type", "body.year", "must be an integer"),
    _mut("QuotaBatchIssued", "MIIT", _set(["reserve"], "no"), "wrong_type", "body.reserve", "true or false"),
    _mut("QuotaBatchIssued", "MIIT", _set(["basis"], "MIXED"), "bad_enum", "body.basis", "OUTPUT, INPUT"),
    _mut("QuotaBatchIssued", "MIIT", _set(["mining_rock_t_reo"], "20000000"), "out_of_range",
         "body.mining_rock_t_reo", "absurd"),
    _mut("QuotaBatchIssued", "MIIT", _set(["batch_no"], 1), "duplicate", "body.batch_no", "already issued"),
    _mut("QuotaSubAllocated", "CREG", _set(["batch"], {"year": 2031, "batch_no": 7}), "unknown_reference",
         "body.batch", "CREG holds no batch 7 of 2031"),
    _mut("QuotaSubAllocated", "CREG", _set(["category"], "MINING"), "bad_enum", "body.category", "not one of"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["digest"], b"\x00" * 31), "bad_value", "body.digest",
         "32 bytes"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["digest"], "00" * 32), "wrong_type", "body.digest",
         "binary"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["month"], "2024-13"), "bad_value", "body.month",
         "is not like"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["last_seq"], 10_000), "unknown_reference", "body.last_seq",
         "earlier entries"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["first_seq"], 10**6), "inconsistent", "body.last_seq",
         "below first_seq"),
    _mut("MonthlyFlowReportSubmitted", "SEP01", _set(["first_seq"], _DEL), "missing_field", "body.first_seq",
         "come together"),
    _mut("ViolationFound", "MIIT", _set(["evidence"], [{"chain": "SEP01", "seq": 1, "hash": b"\x01" * 32}]),
         "reference_mismatch", "body.evidence[0].hash", "has hash"),
    _mut("ViolationFound", "MIIT", _set(["evidence"], [{"chain": "SEP01", "seq": 999, "hash": b"\x01" * 32}]),
         "unknown_reference", "body.evidence[0]", "no entry SEP01:999"),
    _mut("ViolationFound", "MIIT", _set(["evidence"], [{"chain": "SEP01", "seq": 1}]),
         "missing_field", "body.evidence[0].hash", "missing"),
    _mut("PenaltyImposed", "MIIT", _set(["fine_cny"], "100.001"), "bad_value", "body.fine_cny", "more than 2"),
    _mut("PenaltyImposed", "MIIT", _set(["party"], "GHOST"), "unknown_reference", "body.party", "not registered"),
    _mut("PenaltyImposed", "MIIT", lambda b: None, "reference_mismatch", "body.violation",
         "is a KeyAuthorized, not a ViolationFound"),
    _mut("CorrectionRecorded", "SEP01", _set(["corrects", "chain"], "MINE01"), "reference_mismatch",
         "body.corrects.chain", "its own chain (SEP01)"),
    _mut("KeyAuthorized", "MIIT", _set(["key_id"], "0123456789abcdef"), "inconsistent", "body.key_id",
         "does not match the public key"),
    _mut("KeyAuthorized", "MIIT", _set(["public_key"], b"\x01" * 33), "bad_value", "body.public_key", "32 bytes"),
    _mut("KeyAuthorized", "MIIT", lambda b: b.update(public_key=bytes([1]) + bytes(31),  # the identity point
                                                      key_id=key_id(bytes([1]) + bytes(31))),
         "body", "body.public_key", "small order"),
    _mut("KeyRevoked", "MIIT", _set(["key_id"], "0123456789abcdef"), "unknown_reference", "body.key_id",
         "has no key"),
    _mut("PartyDesignationChanged", "MIIT", lambda b: b.update(party="MIIT", roles=["AUDITOR"]), "body",
         "body.roles", "the root regulator keeps the REGULATOR role"),
    _mut("PartyRegistered", "MIIT", _set(["roles"], ["MINE", "MINE"]), "inconsistent", "body.roles[1]", "repeats"),
    _mut("PartyRegistered", "MIIT", _set(["roles"], ["MINER"]), "bad_enum", "body.roles[0]", "not one of"),
    _mut("PartyRegistered", "MIIT", _set(["party"], "SEP01"), "duplicate", "body.party", "already registered"),
    _mut("PartyRegistered", "MIIT", _set(["group"], "MINE01"), "reference_mismatch", "body.group",
         "not a GROUP party"),
    _mut("StockCounted", "SEP01", _set(["product"], _DEL), "missing_field", "body.lot", "at least one of lot, product"),
]


@pytest.mark.parametrize("type_,party,change,code,field,text", INVALID)
def test_invalid_body_refused(mworld, type_, party, change, code, field, text):
    w = mworld
    body = example(w, type_, party)
    change(body)
    size = w.store.size()
    r = w.attempt(party, type_, body)
    if code is None:  # a control: the same example with a harmless change is accepted
        assert isinstance(r, CommandReceipt)
        return
    assert isinstance(r, CommandError), f"accepted: {body}"
    assert (r.code, r.field) == (code, field), str(r)
    assert text in r.message and r.message.startswith(field + ": ")
    assert r.position == 0 and r.chain == party and r.status == ERROR_CODES[code][0]
    assert w.store.size() == size


def test_unknown_type_and_bad_time(mworld):
    w = mworld
    size = w.store.size()
    r = w.attempt("MINE01", "MiningOutput", {"qty": "1"})
    assert (r.code, r.field, r.status) == ("unknown_type", "type", 400) and "'MiningOutput'" in r.message
    r = w.attempt("MINE01", "StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, at="1970-01-01T00:00:00Z")
    assert (r.code, r.field) == ("out_of_range", "occurred_at")
    assert w.store.size() == size


def _raw_envelope(signer: ChainSigner, body: dict) -> bytes:
    """An envelope whose content holds a float (what a careless encoder would send)."""
    content = {"body": body, "chain": signer.chain, "command_id": str(uuid.uuid4()), "key_id": signer.key.key_id,
               "occurred_at": T0, "prev": signer.head, "seq": signer.seq + 1, "type": "StockCounted", "v": 1}
    raw = msgpack.packb(dict(sorted(content.items())), use_bin_type=True)
    return msgpack.packb({"entry": raw, "sig": signer.key.sign(ENTRY_TAG, raw)}, use_bin_type=True)


def test_malformed_bytes_and_floats_refused(mworld):
    w = mworld
    size = w.store.size()
    s = w.signers["SEP01"]
    with pytest.raises(CommandError) as ei:
        w.api.submit([_raw_envelope(s, {"product": "Nd2O3", "counted_kg": 12.5})])
    assert ei.value.code == "malformed" and "floats are not allowed" in ei.value.message and ei.value.status == 400
    with pytest.raises(CommandError) as ei:
        w.api.submit([b"\x93\x01\x02"])
    assert ei.value.code == "malformed" and ei.value.position == 0
    good = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, T0)
    with pytest.raises(CommandError) as ei:
        w.api.submit([good.envelope[:-1] + bytes([good.envelope[-1] ^ 1])])
    assert (ei.value.code, ei.value.status) == ("signature", 403)
    with pytest.raises(CommandError) as ei:  # a group: the second entry is bad, nothing is written
        w.api.submit([good, b"junk"])
    assert ei.value.position == 1 and ei.value.code == "malformed"
    with pytest.raises(CommandError) as ei:
        w.api.submit([])
    assert ei.value.code == "malformed"
    assert w.store.size() == size


def test_chain_continuity_and_idempotency(mworld):
    w = mworld
    s = w.signers["SEP01"]
    body = {"product": "Nd2O3", "counted_kg": "3"}
    e = s.peek("StockCounted", body, T0)
    # a fork attempt: seq that does not continue, prev of another entry
    gap = make_entry(s.key, seq=s.seq + 2, prev=s.head, type="StockCounted", occurred_at=T0, body=body)
    r = _err(w, [gap])
    assert (r.code, r.field, r.status) == ("conflict", "seq", 409) and f"must have seq {s.seq + 1}" in r.message
    fork = make_entry(s.key, seq=s.seq + 1, prev=bytes(32), type="StockCounted", occurred_at=T0, body=body)
    assert (_err(w, [fork]).code, _err(w, [fork]).field) == ("conflict", "prev")
    first = w.api.submit([e])[0]
    s.advance(e)
    again = w.api.submit([e])[0]  # a retry: the original receipt
    assert again.duplicate and (again.index, again.entry_hash) == (first.index, first.entry_hash)
    size = w.store.size()
    other = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "4"}, T0, command_id=e.entry.command_id)
    r = _err(w, [other])
    assert (r.code, r.field, r.status) == ("command_conflict", "command_id", 409)
    twice = s.peek("StockCounted", body, T0)
    clash = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "5"}, T0, command_id=twice.entry.command_id)
    r = _err(w, [twice, clash])
    assert r.code == "command_conflict" and r.position == 1 and "two different entries" in r.message
    assert w.store.size() == size
    # the same entry twice in one group: recorded once (as the store does), the second a duplicate
    a, b = w.api.submit([twice, twice])
    s.advance(twice)
    assert not a.duplicate and b.duplicate and a.index == b.index == size
    assert w.store.size() == size + 1


def _err(w: World, entries) -> CommandError:
    with pytest.raises(CommandError) as ei:
        w.api.submit(entries)
    return ei.value


def test_group_all_or_nothing_and_group_commit(mworld):
    w = mworld
    size = w.store.size()
    m = w.signers["MINE01"]
    a = m.sign("MineralProductProduced", example(w, "MineralProductProduced", "MINE01"), T0)
    bad_body = example(w, "MineralProductProduced", "MINE01")
    bad_body["lot"] = a.entry.body["lot"]  # the same new lot twice in one group
    b = m.sign("MineralProductProduced", bad_body, T0)
    r = _err(w, [a, b])
    assert (r.code, r.position, r.field) == ("duplicate", 1, "body.lot")
    assert w.store.size() == size and a.entry.body["lot"] not in w.api.state.lots
    m.seq, m.head = a.entry.seq - 1, a.entry.prev
    # group commit: the first and third groups pass, the second (a receipt of a shipment made in
    # the first group, by the wrong party) is refused alone; one shipment received in group 3
    ship = m.sign("TransferShipped", {**example(w, "TransferShipped", "MINE01"), "buyer": "SMELT01"}, T0)
    tid = ship.entry.body["transfer_id"]
    recv = {"transfer_id": tid, "seller": "MINE01", "lines": ship.entry.body["lines"],
            "received_at": "2024-01-21T10:30:00Z"}
    wrong = w.signers["SEP01"].peek("TransferReceived", recv, T0)
    right = w.signers["SMELT01"].peek("TransferReceived", recv, T0)
    results = w.api.submit_groups([[ship], [wrong], [right]])
    assert isinstance(results[0], list) and isinstance(results[2], list)
    assert isinstance(results[1], CommandError) and results[1].code == "unknown_reference" and results[1].group == 1
    assert results[2][0].index == results[0][0].index + 1 == size + 1
    w.signers["SMELT01"].advance(right)
    assert w.store.size() == size + 2
    assert w.api.state.shipments[("MINE01", tid)].received_index == results[2][0].index
    assert results[0][0].to_dict()["findings"] == []


def test_same_command_in_two_groups_of_one_call(mworld):
    """Two retries of one command landing in the same group commit: one entry, two receipts."""
    w = mworld
    size = w.store.size()
    s = w.signers["SEP01"]
    x = s.peek("StockCounted", {"product": "CeO2", "counted_kg": "7"}, T0)
    y = s.peek("StockCounted", {"product": "CeO2", "counted_kg": "8"}, T0, command_id=x.entry.command_id)
    first, again, other = w.api.submit_groups([[x], [x], [y]])
    s.advance(x)
    assert not first[0].duplicate and again[0].duplicate and again[0].index == first[0].index
    assert isinstance(other, CommandError) and other.code == "command_conflict" and other.group == 2
    assert w.store.size() == size + 1
    # the first occurrence refused: the repeat is refused with it, nothing written
    bad = s.peek("StockCounted", {"product": "CeO2", "counted_kg": "-1"}, T0)
    r1, r2 = w.api.submit_groups([[bad], [bad]])
    assert r1.code == "out_of_range" and isinstance(r2, CommandError) and w.store.size() == size + 1


# --- authorization ------------------------------------------------------------------------------

def test_authorization_matrix(mworld):
    """Each role x each type, on the party's own chain: refused with ``forbidden`` exactly when
    the documented table says so (other refusals are references, not roles)."""
    w = mworld
    wrong = []
    for role, party in ROLE_PARTY.items():
        for type_ in SCHEMAS:
            allowed = role in AUTHORIZED_ROLES[type_]
            r = w.attempt(party, type_, example(w, type_, party))
            forbidden = isinstance(r, CommandError) and r.code == "forbidden"
            if isinstance(r, CommandError):
                assert r.code == "forbidden" or r.status != 403, f"{role} {type_}: {r.code} {r}"
            if forbidden == allowed:
                wrong.append((role, type_, getattr(r, "code", "accepted"), str(r)))
    assert not wrong, wrong
    # on another party's chain nothing is allowed, whatever the role and the type
    size = w.store.size()
    for role, party in ROLE_PARTY.items():
        victim = "MINE01" if party != "MINE01" else "SEP01"
        vs = w.signers[victim]
        for type_ in SCHEMAS:
            e = make_entry(w.signers[party].key, seq=vs.seq + 1, prev=vs.head, type=type_, occurred_at=T0,
                           body=example(w, type_, victim), chain=victim)
            r = _err(w, [e])
            assert (r.code, r.status) == ("foreign_key", 403), (role, type_, r.code)
    assert w.store.size() == size
    assert AUTHORIZED_ROLES["MineralProductProduced"] == {"MINE"} and "AUDITOR" not in set().union(
        *AUTHORIZED_ROLES.values())
    assert all(AUTHORIZED_ROLES[t] == {"REGULATOR"} for t in AUTHORITY_TYPES)


def test_keys_chains_and_registration(mworld):
    w = mworld
    size = w.store.size()
    body = {"product": "Nd2O3", "counted_kg": "1"}
    mine = w.signers["MINE01"]
    # another party's chain, signed with my key
    other = make_entry(mine.key, seq=w.signers["SEP01"].seq + 1, prev=w.signers["SEP01"].head, type="StockCounted",
                       occurred_at=T0, body=body, chain="SEP01")
    r = _err(w, [other])
    assert (r.code, r.status, r.field) == ("foreign_key", 403, "key_id")
    # an unregistered party
    ghost = ChainSigner(SigningKey.generate("GHOST01"))
    r = _err(w, [ghost.peek("StockCounted", body, T0)])
    assert (r.code, r.status) == ("unregistered", 403) and "not registered" in r.message
    # an unknown key for a registered party
    r = _err(w, [ChainSigner(SigningKey.generate("MINE01"), seq=mine.seq, head=mine.head).peek("StockCounted", body, T0)])
    assert (r.code, r.status) == ("unknown_key", 403)
    # a non-regulator may not register anybody (the key registry's rule, same code)
    r = _err(w, [mine.peek("PartyRegistered", example(w, "PartyRegistered", "MIIT"), T0)])
    assert (r.code, r.status) == ("forbidden", 403)
    assert w.store.size() == size


def test_revoked_and_expired_keys(world):
    w = world
    s = w.register("MINE02", ["MINE"])
    w.ok("MINE02", "StockCounted", {"product": "RE_CONCENTRATE", "counted_kg": "5"})
    w.ok("MIIT", "KeyRevoked", {"party": "MINE02", "key_id": s.key.key_id, "reason": "compromised"})
    size = w.store.size()
    r = w.attempt("MINE02", "StockCounted", {"product": "RE_CONCENTRATE", "counted_kg": "6"})
    assert (r.code, r.status) == ("revoked_key", 403) and w.store.size() == size
    k = SigningKey.generate("MINE02")
    w.ok("MIIT", "KeyAuthorized", key_authorized_body(k, T0, valid_until="2024-06-01T00:00:00Z"))
    late = ChainSigner(k, seq=s.seq, head=s.head)
    r = _err(w, [late.peek("StockCounted", {"product": "RE_CONCENTRATE", "counted_kg": "6"}, T0)])
    assert (r.code, r.status) == ("expired_key", 403) and "expired" in r.message
    # every role, with a revoked key, for every type its role allows: refused
    for role in ROLE_PARTY:
        party = f"REVOKED-{role}"
        signer = w.register(party, [role])
        w.ok("MIIT", "KeyRevoked", {"party": party, "key_id": signer.key.key_id, "reason": "compromised"})
        for type_ in (t for t, roles in AUTHORIZED_ROLES.items() if role in roles):
            r = w.attempt(party, type_, example(w, type_, party))
            assert (r.code, r.status) == ("revoked_key", 403), (role, type_, r.code)
    # an unregistered party, for every type: refused
    w.signers["NOBODY01"] = ChainSigner(SigningKey.generate("NOBODY01"))
    size = w.store.size()
    for type_ in SCHEMAS:
        r = w.attempt("NOBODY01", type_, example(w, type_, "NOBODY01"))
        assert (r.code, r.status) == ("unregistered", 403), (type_, r.code)
    assert w.store.size() == size


def test_designation_expiry_is_accepted_not_refused(world):
    """A mine outside its designation still records its output (projections flag it); a party
    that never was a mine is refused."""
    w = world
    w.register("MINE09", ["MINE"], valid_until="2024-03-01T00:00:00Z")
    body = example(w, "MineralProductProduced", "MINE09")
    r = w.ok("MINE09", "MineralProductProduced", body, at="2024-05-01T00:00:00Z")
    info = w.api.state.parties["MINE09"]
    t = encoding.time_to_micros(encoding.parse_time("2024-05-01T00:00:00Z"))
    assert r.index > 0 and not info.designated("MINE", t) and info.designated("MINE", t - 10**13)
    # suspension: roles emptied from June on; a late entry about April is still accepted
    w.ok("MIIT", "PartyDesignationChanged", {"party": "MINE01", "roles": [], "valid_from": "2024-06-01T00:00:00Z"})
    w.ok("MINE01", "MineralProductProduced", example(w, "MineralProductProduced", "MINE01"), at="2024-04-01T00:00:00Z")
    assert w.api.state.parties["MINE01"].roles_at(t) == frozenset({"MINE"})
    assert w.api.state.parties["MINE01"].roles_at(t + 10**14) == frozenset()
    r = w.attempt("SMELT01", "MineralProductProduced", example(w, "MineralProductProduced", "SMELT01"))
    assert r.code == "forbidden" and "MINE" in r.message and "SMELTER" in r.message


def test_regulator_role_removed_is_current(world):
    w = world
    reg2 = w.register("MNR", ["REGULATOR"])
    w.ok("MNR", "InspectionRecorded", example(w, "InspectionRecorded", "MNR"))
    w.ok("MIIT", "PartyDesignationChanged", {"party": "MNR", "roles": ["AUDITOR"], "valid_from": T0})
    r = w.attempt("MNR", "InspectionRecorded", example(w, "InspectionRecorded", "MNR"))
    assert r.code == "forbidden" and reg2.seq == 1


def test_regulator_outside_its_designation_asserts_nothing(world):
    """A regulator-only type counts the designation in force when the entry is recorded: an
    authority whose designation has ended, is suspended or has not begun asserts nothing (and
    nothing is written); restored, it asserts again."""
    w = world
    w.register("MNR", ["REGULATOR"])
    w.register("NDRC", ["REGULATOR"], valid_from="2098-01-01T00:00:00Z")  # not begun
    w.ok("MNR", "InspectionRecorded", example(w, "InspectionRecorded", "MNR"))

    def refused(party: str) -> None:
        size = w.store.size()
        r = w.attempt(party, "InspectionRecorded", example(w, "InspectionRecorded", party))
        assert isinstance(r, CommandError) and (r.code, r.status) == ("forbidden", 403), r
        assert f"{party} holds now no role" in str(r), str(r)
        assert w.store.size() == size

    refused("NDRC")
    for change in ({"valid_until": "2025-01-01T00:00:00Z"}, {"roles": []}):  # ended; suspended
        w.ok("MIIT", "PartyDesignationChanged", {"party": "MNR", "valid_from": T0, **change})
        refused("MNR")
        w.ok("MIIT", "PartyDesignationChanged", {"party": "MNR", "roles": ["REGULATOR"], "valid_from": T0,
                                                 "valid_until": "2098-01-01T00:00:00Z"})
        w.ok("MNR", "InspectionRecorded", example(w, "InspectionRecorded", "MNR"))


# --- store refusals translated, reads, hooks --------------------------------------------------------

def test_store_refusal_is_translated(mworld):
    from reledger.commands.api import from_append_error
    from reledger.storage.store import AppendError

    e = from_append_error(AppendError("revoked_key", "key_id: key k was revoked", field="key_id", position=2,
                                      chain="X1", seq=3))
    assert isinstance(e, CommandError) and isinstance(e, ValueError)
    assert (e.code, e.status, e.field, e.position, e.chain, e.seq, str(e)) == (
        "revoked_key", 403, "key_id", 2, "X1", 3, "key_id: key k was revoked")
    assert from_append_error(AppendError("conflict", "seq: x")).status == 409


def test_another_writer_is_caught_up(mworld):
    """Entries appended behind the API's back (store directly, another process) are seen."""
    w = mworld
    s = w.signers["MINE01"]
    ship = s.sign("TransferShipped", {**example(w, "TransferShipped", "MINE01"), "buyer": "SMELT01"}, T0)
    w.store.append([ship])
    body = {"transfer_id": ship.entry.body["transfer_id"], "seller": "MINE01", "lines": ship.entry.body["lines"],
            "received_at": "2024-01-22T00:00:00Z"}
    w.ok("SMELT01", "TransferReceived", body)
    assert w.attempt("SMELT01", "TransferReceived", body).code == "already_received"


def test_reads(mworld):
    w = mworld
    seq, h = w.api.head("SEP01")
    rec = w.api.entry("SEP01", seq)
    assert rec.entry_hash == h and SignedEntry.parse(rec.envelope).entry.chain == "SEP01"
    assert w.api.head("NOBODY1") == (0, bytes(32))
    with pytest.raises(CommandError) as ei:
        w.api.entry("SEP01", seq + 100)
    assert (ei.value.code, ei.value.status) == ("not_found", 404)
    with pytest.raises(CommandError) as ei:
        w.api.head("bad chain")
    assert ei.value.status == 400
    assert "MineralProductProduced" in w.api.entry_types()
    assert set(w.api.json_schema()["$defs"]) == set(SCHEMAS)


def test_findings_hook(sqlite_url):
    w = World(sqlite_url)
    try:
        seen = []

        def hook(signed, receipt):
            seen.append((signed.entry.type, receipt.index))
            return [{"rule": "TEST", "entry": receipt.index}] if signed.entry.type == "StockCounted" else []

        w.api.findings_hook = hook
        r = w.ok("SEP01", "StockCounted", {"product": "Nd2O3", "counted_kg": "1"})
        assert r.findings == ({"rule": "TEST", "entry": r.index},) and r.to_dict()["findings"] == [
            {"rule": "TEST", "entry": r.index}]
        e = w.signers["SEP01"].peek("StockCounted", {"product": "Nd2O3", "counted_kg": "2"}, T0)
        w.api.submit([e])
        w.signers["SEP01"].advance(e)
        assert w.api.submit([e])[0].findings == ()  # a duplicate: the hook is not asked again
        assert len(seen) == 2

        def broken(signed, receipt):
            raise RuntimeError("rule engine down")

        w.api.findings_hook = broken
        assert w.ok("SEP01", "StockCounted", {"product": "Nd2O3", "counted_kg": "3"}).findings == ()
    finally:
        w.close()


def test_dry_run_check_writes_nothing(mworld):
    w = mworld
    size, state_size = w.store.size(), w.api.state.size
    e = w.signers["MINE01"].peek("MineralProductProduced", example(w, "MineralProductProduced", "MINE01"), T0)
    w.api.check([e])
    assert w.store.size() == size and w.api.state.size == state_size and e.entry.body["lot"] not in w.api.state.lots
    with pytest.raises(CommandError):
        w.api.check([w.signers["MINE01"].peek("MineralProductProduced", {"lot": "x"}, T0)])


# --- property: nothing but receipts or CommandError ------------------------------------------------

@pytest.fixture(scope="module")
def prop_world(tmp_path_factory):
    """One ledger for all generated commands (module scope: hypothesis runs many examples). Its
    command API keeps two values of its rows in memory and writes them every three entries (the
    property compares it to the in-memory state folded from the log)."""
    w = World(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'ledger.db'}")
    w.api.close()
    w.api = CommandAPI(w.store, cache_entries=2, flush_every=3)
    run_scenario(w)
    yield w
    w.close()


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=12),
                  st.binary(max_size=40), st.sampled_from(["0", "1.5", "-1", "1e3", "99.9999", "2024-01-01T00:00:00Z",
                                                           "MINE01", "ROCK", "Nd2O3"]))
_value = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c,
                                                                                           max_size=3)), max_leaves=6)


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


_PLAN = st.fixed_dictionaries({
    "kind": st.sampled_from(["valid", "mutated", "mutated", "bytes", "flipped"]),
    "party": st.sampled_from(sorted(ROLE_PARTY.values())),
    "type": st.sampled_from(sorted(SCHEMAS) + ["MiningOutput"]),
    "op": st.sampled_from(["set", "delete", "add"]),
    "path": st.integers(0, 10**6), "key": st.text(max_size=8), "value": _value,
    "at": st.sampled_from([T0, "2024-07-01T12:30:00.5Z", "2099-12-31T23:59:59Z"]),
    "flip": st.integers(0, 10**6), "bit": st.integers(0, 7), "raw": st.binary(max_size=300),
})


def build_command(w: World, plan: dict):
    """(party, envelope bytes or SignedEntry) from a drawn plan (the draw does not depend on
    the ledger's state; the command built from it does)."""
    party, type_ = plan["party"], plan["type"]
    if plan["kind"] == "bytes":
        return party, plan["raw"]
    body = example(w, type_, party) if type_ in SCHEMAS else {"qty": "1"}
    if plan["kind"] == "mutated":
        paths = [p for p in _paths(body) if p]
        path = paths[plan["path"] % len(paths)]
        parent = body
        for p in path[:-1]:
            parent = parent[p]
        if plan["op"] == "add" and isinstance(parent, dict):
            parent[plan["key"]] = plan["value"]
        elif plan["op"] == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = plan["value"]
    try:
        e = w.signers[party].peek(type_, body, plan["at"])
    except ValueError:  # not encodable by the client library at all (e.g. a too deep value)
        return party, b"\x80"
    if plan["kind"] == "flipped":
        env = bytearray(e.envelope)
        env[plan["flip"] % len(env)] ^= 1 << plan["bit"]
        return party, bytes(env)
    return party, e


@settings(max_examples=int(os.environ.get("RELEDGER_PROP_EXAMPLES", "60")), deadline=None)
@given(plan=_PLAN)
def test_property_only_receipts_or_command_errors(prop_world, plan):
    w = prop_world
    party, item = build_command(w, plan)
    size = w.store.size()
    try:
        receipts = w.api.submit([item])
    except CommandError as err:
        event(err.code)
        assert err.code in ERROR_CODES and err.message and err.status in (400, 403, 404, 409)
        assert w.store.size() == size
        return
    event("accepted")
    assert len(receipts) == 1
    if isinstance(item, SignedEntry) and not receipts[0].duplicate:
        w.signers[party].advance(item)
        assert w.store.size() == size + 1
    # the incremental write state is the state folded from the log
    from reledger.commands.state import WriteState

    fresh = WriteState()
    fresh.catch_up(w.store.records(0))
    a = w.api.state
    assert a.rows is not None and a.rows.cached() <= 2 * 2 + 3 * 8  # bounded: the cache, and what 3 entries touch
    assert (a.size, a.heads, a.parties, a.shipments, a.quota_batches, a.lots, a.batches, a.registry.roles,
            set(a.registry.keys)) == (fresh.size, fresh.heads, fresh.parties, fresh.shipments, fresh.quota_batches,
                                      fresh.lots, fresh.batches, fresh.registry.roles, set(fresh.registry.keys))


def test_writer_between_check_and_append(sqlite_url):
    """Another writer appends between the API's checks and its append: the store finds the log
    longer than the state the API checked against and writes nothing; the API catches up and
    checks again (so the conflicting entry is refused against the log as it is), and its state
    is never left half-true."""
    w = World(sqlite_url)
    other = LedgerStore(sqlite_url)
    try:
        real = w.store.append_groups
        m = w.signers["MINE01"]
        sneaky = m.sign("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": "SNEAK"},
                        T0)

        calls = []

        def interleaved(groups, **kw):
            if not calls:
                other.append([sneaky])  # same chain: the API's MINE01 entry now conflicts
            calls.append(kw)
            return real(groups, **kw)

        w.store.append_groups = interleaved
        mine = ChainSigner(m.key, seq=sneaky.entry.seq - 1, head=sneaky.entry.prev).peek(
            "MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": "MINE-LOT"}, T0)
        sep = w.signers["SEP01"].peek("StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, T0)
        r_mine, r_sep = w.api.submit_groups([[mine], [sep]])
        w.store.append_groups = real
        assert len(calls) == 2 and calls[1]["expect_size"] == calls[0]["expect_size"] + 1  # the retry
        assert isinstance(r_mine, CommandError) and r_mine.code == "conflict" and r_mine.status == 409
        assert isinstance(r_sep, list) and r_sep[0].index == w.store.size() - 1
        st_ = w.api.state
        assert "SNEAK" in st_.lots and "MINE-LOT" not in st_.lots and st_.size == w.store.size()
        assert st_.head("MINE01") == (sneaky.entry.seq, sneaky.hash)
    finally:
        other.close()
        w.close()


def test_rule_violations_are_accepted_not_refused(world):
    """Facts that break the regulation are recorded (projections flag them): over-allocation,
    a separation yield above 100 %, stock counted below the book, a receipt whose lines differ,
    shipping and exporting a lot nobody produced, a late monthly report, a sub-allocation to a
    non-member."""
    w = world
    run_scenario(w)
    size = w.store.size()
    w.ok("CREG", "QuotaSubAllocated", {"batch": {"year": 2024, "batch_no": 1}, "enterprise": "SMELT01",
                                       "category": "SEPARATION", "t_reo": "9999999"})
    sep = example(w, "SeparationBatchRecorded", "SEP01")
    sep["inputs"] = [{"lot": "NEVER-PRODUCED", "reo_kg": "1"}]
    w.ok("SEP01", "SeparationBatchRecorded", sep)
    w.ok("SEP01", "StockCounted", {"lot": "NDO-1", "counted_kg": "999999"})
    ship = {**example(w, "TransferShipped", "SEP01"), "buyer": "SMELT01"}
    ship["lines"][0]["lot"] = "GHOST-LOT"
    w.ok("SEP01", "TransferShipped", ship)
    w.ok("SMELT01", "TransferReceived", {"transfer_id": ship["transfer_id"], "seller": "SEP01", "lines": [
        {"lot": "GHOST-LOT", "product": "RE_CONCENTRATE", "kg": "1"}], "received_at": "2025-06-01T00:00:00Z"})
    w.ok("EXPO01", "ExportDeclared", {**example(w, "ExportDeclared", "EXPO01"), "lot": "GHOST-LOT"})
    w.ok("MINE01", "MonthlyFlowReportSubmitted", {**example(w, "MonthlyFlowReportSubmitted", "MINE01"),
                                                 "digest": bytes(32)}, at="2024-09-30T00:00:00Z")
    w.ok("RECY01", "MonthlyFlowReportSubmitted", {"month": "2024-02", "totals": {}, "digest": report_digest([])})
    assert w.store.size() == size + 8


def test_concurrent_submitters(sqlite_url):
    """Threads submitting for different parties at once: every entry accepted once, the state
    equal to one rebuilt from the log."""
    import threading

    w = World(sqlite_url)
    try:
        errors: list = []

        def work(party: str) -> None:
            try:
                for i in range(15):
                    w.ok(party, "StockCounted", {"product": "Nd2O3", "counted_kg": str(i)})
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(p,)) for p in ("MINE01", "SEP01", "SMELT01", "EXPO01")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        fresh = CommandAPI(w.store)
        fresh._catch_up()
        assert fresh.state.heads == w.api.state.heads and fresh.state.size == w.store.size()
        assert all(w.api.state.head(p)[0] == 15 for p in ("MINE01", "SEP01", "SMELT01", "EXPO01"))
    finally:
        w.close()


def test_parallel_signature_checks(mworld):
    """Signatures of a large submission are checked in parallel: a bad one among many is still
    refused (alone), and a key authorized earlier in the same submission is checked too."""
    w = mworld
    size = w.store.size()
    s = w.signers["SMELT01"]
    good = [[s.sign("StockCounted", {"product": "Nd_METAL", "counted_kg": str(i + 1)}, T0)] for i in range(12)]
    victim = good[5][0]
    forged = SignedEntry.from_parts(victim.content, bytes(64))
    new_party_key = SigningKey.generate("NEWCO1")
    reg_group = [w.reg.peek("PartyRegistered", {"party": "NEWCO1", "name": "New Co", "roles": ["SMELTER"],
                                                "province": "Fujian", "valid_from": T0}, T0)]
    results = w.api.submit_groups(good[:5] + [[forged]] + [reg_group])
    assert [isinstance(r, list) for r in results] == [True] * 5 + [False, True]
    assert results[5].code == "signature" and results[5].status == 403
    w.reg.advance(reg_group[0])
    ka = w.reg.peek("KeyAuthorized", key_authorized_body(new_party_key, T0), T0)
    n = ChainSigner(new_party_key)
    entries = [n.sign("StockCounted", {"product": "Nd_METAL", "counted_kg": str(i + 1)}, T0) for i in range(10)]
    bad = SignedEntry.from_parts(entries[3].content, bytes(64))
    r = w.api.submit_groups([[ka], entries[:3] + [bad] + entries[4:]])
    assert isinstance(r[0], list) and r[1].code == "signature" and r[1].position == 3
    w.reg.advance(ka)
    assert w.api.submit([*entries])[-1].seq == 10
    s.seq, s.head = good[4][0].entry.seq, good[4][0].hash
    assert w.store.size() == size + 5 + 1 + 1 + 10


def test_registry_changes_of_a_refused_group_are_undone(mworld):
    """Group commit with registry entries: a refused group's registrations and keys vanish from
    the write state, an accepted group's stay, and a later group may use them."""
    w = mworld
    reg = w.reg
    kp, kq = SigningKey.generate("PCO1"), SigningKey.generate("QCO1")
    body = lambda p: {"party": p, "name": p, "roles": ["SMELTER"], "province": "Hunan", "valid_from": T0}  # noqa: E731
    g1 = [reg.sign("PartyRegistered", body("PCO1"), T0), reg.sign("KeyAuthorized", key_authorized_body(kp, T0), T0)]
    g2 = [reg.sign("PartyRegistered", body("QCO1"), T0), reg.sign("KeyAuthorized", key_authorized_body(kq, T0), T0),
          reg.sign("KeyRevoked", {"party": "QCO1", "key_id": "0123456789abcdef", "reason": "x"}, T0)]
    reg.seq, reg.head = g1[-1].entry.seq, g1[-1].hash  # g2 will be refused: its seqs are reused
    g3 = [ChainSigner(kp).sign("StockCounted", {"product": "Nd_METAL", "counted_kg": "1"}, T0)]
    r1, r2, r3 = w.api.submit_groups([g1, g2, g3])
    assert isinstance(r1, list) and isinstance(r3, list)
    assert r2.code == "unknown_reference" and r2.position == 2
    st_ = w.api.state
    assert "PCO1" in st_.registry.roles and kp.key_id in st_.registry.keys
    assert "QCO1" not in st_.registry.roles and kq.key_id not in st_.registry.keys and "QCO1" not in st_.parties
    assert st_.registry.size == st_.size == w.store.size()
    fresh = CommandAPI(w.store)
    fresh._catch_up()
    assert fresh.state.registry.roles == st_.registry.roles and set(fresh.state.registry.keys) == set(st_.registry.keys)
    fresh.close()


def test_designations_over_business_time(world):
    """PartyInfo answers the designation at any business time: registration window, a change
    from a date on, a backdated change recorded later, suspension."""
    w = world
    us = lambda t: encoding.time_to_micros(encoding.parse_time(t))  # noqa: E731
    w.register("PLANT7", ["SEPARATION"], valid_until="2025-01-01T00:00:00Z")
    w.ok("MIIT", "PartyDesignationChanged", {"party": "PLANT7", "roles": ["SEPARATION", "SMELTER"],
                                             "valid_from": "2024-07-01T00:00:00Z"})
    w.ok("MIIT", "PartyDesignationChanged", {"party": "PLANT7", "roles": [], "valid_from": "2024-10-01T00:00:00Z",
                                             "reason": "suspended"})
    w.ok("MIIT", "PartyDesignationChanged", {"party": "PLANT7", "roles": ["SEPARATION"],
                                             "valid_from": "2024-03-01T00:00:00Z", "reason": "late record"})
    info = w.api.state.parties["PLANT7"]
    assert info.roles_at(us("2023-12-31T00:00:00Z")) == frozenset()
    assert info.roles_at(us("2024-02-01T00:00:00Z")) == {"SEPARATION"}
    assert info.roles_at(us("2024-08-01T00:00:00Z")) == {"SEPARATION", "SMELTER"}
    assert info.roles_at(us("2024-11-01T00:00:00Z")) == frozenset()
    assert info.roles_at(us("2025-06-01T00:00:00Z")) == frozenset()  # the registration's end carries on
    assert info.designation_at(us("2024-04-01T00:00:00Z")).index > info.designation_at(us("2024-08-01T00:00:00Z")).index
    assert info.roles_ever == {"SEPARATION", "SMELTER"}
    # suspended now, but SMELTER was held: a smelting entry is recorded (and flagged), a mine's is not
    w.ok("PLANT7", "MetalSmelted", example(w, "MetalSmelted", "PLANT7"), at="2024-11-15T00:00:00Z")
    assert w.attempt("PLANT7", "MineralProductProduced", example(w, "MineralProductProduced", "PLANT7")).code == \
        "forbidden"


def test_prepare_is_only_a_cache(mworld):
    """CommandAPI.prepare parses and checks signatures ahead of submit: what does not parse comes
    back as it was and submit refuses it with the same error; a forged signature is still
    refused; an entry prepared against a key that then changes is checked again."""
    w = mworld
    size = w.store.size()
    s = w.signers["SEP01"]
    good = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "7"}, T0)
    forged = SignedEntry.from_parts(good.content, bytes(64))
    junk = b"\x93\x01\x02"
    prepared = w.api.prepare([good.envelope, junk, forged.envelope])
    assert isinstance(prepared[0], SignedEntry) and prepared[0].hash == good.hash and prepared[1] is junk
    for bad, code in (([prepared[0], prepared[1]], "malformed"), ([prepared[2]], "signature")):
        r = _err(w, bad)
        assert r.code == code
        assert (r.code, r.message, r.field, r.position) == (lambda e: (e.code, e.message, e.field, e.position))(
            _err(w, [good.envelope, junk] if code == "malformed" else [forged.envelope]))
    assert w.store.size() == size
    assert w.api.submit([prepared[0]])[0].index == size
    s.advance(good)
    # a key unknown when prepared (authorized by a later submission) is checked at submit
    newcomer = SigningKey.generate("SEP01")
    n = ChainSigner(newcomer, seq=s.seq, head=s.head)
    e = n.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "8"}, T0)
    early = w.api.prepare([e.envelope])[0]
    assert _err(w, [early]).code == "unknown_key"
    w.ok("MIIT", "KeyAuthorized", key_authorized_body(newcomer, T0))
    assert w.api.submit([early])[0].seq == e.entry.seq
    s.seq, s.head = e.entry.seq, e.hash


def test_deferred_findings(sqlite_url):
    """submit_groups(defer_findings=True) answers at once with receipts listing no findings;
    add_findings asks the hook (in log order, new entries only) and fills them in, once."""
    w = World(sqlite_url)
    try:
        asked = []

        def hook(signed, receipt):
            asked.append(receipt.index)
            return [{"rule": "TEST", "index": receipt.index}]

        w.api.findings_hook = hook
        s = w.signers["SEP01"]
        a = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, T0)
        b = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "2"}, T0)
        answer = w.api.submit_groups([[a], [b, a], [b"junk"]], defer_findings=True)
        assert asked == [] and all(r.findings == () for r in answer[0] + answer[1])
        assert isinstance(answer[2], CommandError)
        w.api.add_findings(answer)
        i = answer[0][0].index
        assert asked == [i, i + 1]  # the repeat of a (a duplicate) is not asked about
        assert answer[0][0].findings == ({"rule": "TEST", "index": i},)
        assert answer[1][0].findings == ({"rule": "TEST", "index": i + 1},) and answer[1][1].findings == ()
        assert answer[1][1].duplicate and answer[1][1].index == i
        w.api.add_findings(answer)
        assert asked == [i, i + 1]
        # without deferring, the answer lists them at once (the Python API's answer)
        c = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "3"}, T0)
        assert w.api.submit([c])[0].findings == ({"rule": "TEST", "index": i + 2},)
    finally:
        w.close()


def test_a_batch_findings_hook_is_asked_once_per_answer(sqlite_url):
    """A hook with ``findings_of`` (the projections' hooks) is asked once for all the new
    entries of an answer, with the entries themselves (log order, duplicates left out), and
    each finding lands in its entry's receipt. A hook that cannot say (``None``) leaves the
    questions on the answer, for another hook."""
    w = World(sqlite_url)
    try:
        calls = []

        class Batch:
            def __call__(self, signed, receipt):  # never used when findings_of exists
                raise AssertionError("asked entry by entry")

            def findings_of(self, entries):
                calls.append(entries)
                return {e[0]: [{"rule": "TEST", "index": e[0]}] for e in entries[1:]}

        w.api.findings_hook = Batch()
        s = w.signers["SEP01"]
        a = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, T0)
        b = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "2"}, T0)
        answer = w.api.submit_groups([[a], [b, a]])
        i = answer[0][0].index
        assert len(calls) == 1
        assert calls[0] == [(i, answer[0][0].recorded_at, "SEP01", a.entry.seq, a.hash, a),
                            (i + 1, answer[1][0].recorded_at, "SEP01", b.entry.seq, b.hash, b)]
        assert answer[0][0].findings == () and answer[1][0].findings == ({"rule": "TEST", "index": i + 1},)
        assert answer[1][1].duplicate and answer[1][1].findings == ()

        class CannotSay(Batch):
            def findings_of(self, entries):
                calls.append(entries)
                return None

        w.api.findings_hook = CannotSay()
        c = s.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "3"}, T0)
        answer = w.api.submit_groups([[c]], defer_findings=True)
        assert not w.api.add_findings(answer) and len(calls) == 2
        assert [(r[pos].index, signed) for r, pos, signed in answer.findings_asks] == [(i + 2, c)]
        class Every(Batch):
            def findings_of(self, entries):
                return {e[0]: [{"rule": "TEST", "index": e[0]}] for e in entries}

        w.api.findings_hook = Every()  # another hook answers what the first could not
        assert w.api.add_findings(answer) and answer[0][0].findings == ({"rule": "TEST", "index": i + 2},)
        assert answer.findings_asks == [] and w.api.add_findings(answer)  # a second call: nothing to ask
    finally:
        w.close()


def test_retry_after_restart_is_a_duplicate(mworld):
    """A retry sent to a new CommandAPI (a restarted server: its state, and its command id
    filter, rebuilt from the log) answers the original receipt; a reused command id with other
    bytes is still a command_conflict."""
    w = mworld
    s = w.signers["SMELT01"]
    e = s.peek("StockCounted", {"product": "Nd_METAL", "counted_kg": "9"}, T0)
    first = w.api.submit([e])[0]
    s.advance(e)
    fresh = CommandAPI(w.store)
    try:
        again = fresh.submit([e])[0]
        assert again.duplicate and (again.index, again.entry_hash) == (first.index, first.entry_hash)
        other = s.peek("StockCounted", {"product": "Nd_METAL", "counted_kg": "10"}, T0, command_id=e.entry.command_id)
        with pytest.raises(CommandError) as ei:
            fresh.submit([other])
        assert ei.value.code == "command_conflict" and f"log index {first.index}" in ei.value.message
    finally:
        fresh.close()
