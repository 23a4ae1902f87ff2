"""DOMAIN.md "The rules, precisely", story by story on SQLite and PostgreSQL: each story raises
exactly the expected finding, and its near miss raises nothing (a false alarm is a defect too)."""

from __future__ import annotations

import pytest

from reledger.commands.api import CommandError
from projection_helpers import DAY, HOUR, all_findings, dt_us, ev, kg, summary, ts
from reledger.projections import queries
from reledger.projections.store import ProjectionStore
from test_rules import Y, bare, codes, issue, mined_lot, only, separate, suballoc, w  # noqa: F401 (fixtures)


def used(w, party, cat, year=Y):
    ps = ProjectionStore(w.url)
    try:
        rows = [r for r in queries.quota(ps, year)["enterprises"] if r["party"] == party and r["category"] == cat]
        return rows[0]["used_t"] if rows else None
    finally:
        ps.close()


def mined(lot, dry="100000", treo="50", reo="50000", ore="ROCK"):
    return {"lot": lot, "ore_type": ore, "wet_kg": dry, "dry_kg": dry, "treo_pct": treo, "reo_kg": reo}


# --- declared quantities -------------------------------------------------------------------------

def test_under_declared_lot_is_refused_naming_the_field_and_the_computed_value(w):
    with pytest.raises(CommandError) as err:
        w.ok("MINE01", "MineralProductProduced", mined("L1", reo="10000"))
    assert err.value.code == "inconsistent" and err.value.field == "body.reo_kg"
    assert "50000.000" in str(err.value)
    assert codes(w) == [] and used(w, "MINE01", "MINING_ROCK") in (None, "0")  # nothing written


def test_under_declared_lot_below_the_api_is_a_finding_and_the_computed_reo_counts(w):
    r = w.raw("MINE01", "MineralProductProduced", mined("L1", reo="10000"))
    f = only(w)
    assert summary(f) == ("DECLARED_REO_MISMATCH", "MINE01", ev(r))
    assert f["params"]["computed_kg"] == "50000" and f["params"]["declared_kg"] == "10000"
    assert f["params"]["reo_tolerance_pct"] == "0.1"
    assert used(w, "MINE01", "MINING_ROCK") == "50"


def test_declared_reo_within_the_tolerance_is_accepted(w):
    w.ok("MINE01", "MineralProductProduced", mined("L1", reo="49960"))   # 0.08 % off
    w.ok("SEP02", "ImportReceived", {"lot": "IMP-1", "customs_declaration_no": "1", "hs_code": "2612200000",
                                     "origin_country": "MM", "form": "CONCENTRATE", "dry_kg": "2000",
                                     "treo_pct": "50", "reo_kg": "1000.9"})
    with pytest.raises(CommandError) as err:
        w.ok("SEP02", "ImportReceived", {"lot": "IMP-2", "customs_declaration_no": "2", "hs_code": "2612200000",
                                         "origin_country": "MM", "form": "CONCENTRATE", "dry_kg": "2000",
                                         "treo_pct": "50", "reo_kg": "900"})
    assert err.value.field == "body.reo_kg" and "1000.000" in str(err.value)
    assert codes(w) == []


def test_the_write_path_checks_declared_reo_with_the_tolerance_the_regulator_set(w):
    """RuleParameterSet reo_tolerance_pct 1: a lot 0.5 % off is accepted (and no finding); at
    the default 0.1 % the same lot is refused naming the field and the computed value."""
    with pytest.raises(CommandError) as err:
        w.ok("MINE01", "MineralProductProduced", mined("L1", reo="49750"))    # 0.5 % under
    assert err.value.code == "inconsistent" and err.value.field == "body.reo_kg"
    assert "50000.000" in str(err.value) and "reo_tolerance_pct 0.1" in str(err.value)
    w.ok("MIIT", "RuleParameterSet", {"name": "reo_tolerance_pct", "value": "1", "reason": "decision 7"})
    w.ok("MINE01", "MineralProductProduced", mined("L1", reo="49750"))
    assert codes(w) == [] and used(w, "MINE01", "MINING_ROCK") == "49.75"
    with pytest.raises(CommandError) as err:                                 # 2 % off: still refused
        w.ok("MINE01", "MineralProductProduced", mined("L2", reo="49000"))
    assert "reo_tolerance_pct 1 %" in str(err.value) and "50000.000" in str(err.value)
    # a fresh command API (catching up from the log) knows the parameter too
    from reledger.commands.api import CommandAPI

    w.api.close()
    w.api = CommandAPI(w.store)
    w.ok("MINE01", "MineralProductProduced", mined("L3", reo="50400"))       # 0.8 % over


def test_a_tolerance_set_below_the_api_by_a_mine_changes_nothing(w):
    w.raw("MINE01", "RuleParameterSet", {"name": "reo_tolerance_pct", "value": "50"})
    from reledger.commands.api import CommandAPI

    w.api.close()
    w.api = CommandAPI(w.store)
    with pytest.raises(CommandError) as err:
        w.ok("MINE01", "MineralProductProduced", mined("L1", reo="49750"))
    assert err.value.field == "body.reo_kg"


def _smelt(w, factor, reo, raw=False):
    (_, _, _), line = mined_lot(w)
    _, outs = separate(w, "SEP01", [(line[0], line[2], line[3])], 970)
    ce = outs[0]
    w.ship("SEP01", "SMELT01", "T-CE", [ce])
    w.receive("SMELT01", "SEP01", "T-CE", [ce])
    body = {"batch": "SM1", "inputs": [{"lot": ce[0], "kg": kg(ce[2]), "reo_kg": kg(ce[3])}],
            "outputs": [{"lot": "MET-1", "product": "Ce_METAL", "kg": "100", "factor": factor, "reo_kg": reo}]}
    return (w.raw if raw else w.ok)("SMELT01", "MetalSmelted", body)


def test_wrong_metal_factor_is_refused_and_below_the_api_a_finding(w):
    with pytest.raises(CommandError) as err:
        _smelt(w, "1.1", "110")
    assert err.value.field == "body.outputs[0].factor" and "1.2284" in str(err.value)
    r = w.raw("SMELT01", "MetalSmelted", {"batch": "SM2", "inputs": [],
                                          "outputs": [{"lot": "MET-2", "product": "Ce_METAL", "kg": "100",
                                                       "factor": "1.1", "reo_kg": "110"}]})
    fs = [f for f in all_findings(w.url) if f["index"] == r.index]
    assert sorted(f["code"] for f in fs) == ["DECLARED_REO_MISMATCH", "WRONG_REO_FACTOR"]
    assert {f["params"].get("computed_kg") for f in fs} >= {"122.84"}


def test_right_metal_factor_is_accepted(w):
    _smelt(w, "1.2284", "122.84")
    assert codes(w) == []


# --- authority -------------------------------------------------------------------------------

def test_a_mines_own_quota_batch_counts_nowhere(bare):
    w = bare
    issue(w, "MINE01", 1, rock="10")
    r = w.raw("MINE01", "QuotaBatchIssued", {"year": Y, "batch_no": 2, "document_no": "FAKE", "holder": "MINE01",
                                             "mining_rock_t_reo": "1000000", "mining_ionic_t_reo": "0",
                                             "separation_t_reo": "0"})
    p = w.produce("MINE01", "L1", 20_000_000)   # 20 t against the 10 t really issued
    fs = all_findings(w.url)
    assert summary(fs[0]) == ("UNAUTHORIZED_ENTRY", "MINE01", ev(r))
    assert [(f["code"], f["params"]["level"], f["index"]) for f in fs[1:]] == [
        ("OVER_QUOTA", "enterprise", p.index), ("OVER_QUOTA", "group", p.index), ("OVER_QUOTA", "nation", p.index)]
    ps = ProjectionStore(w.url)
    try:
        row = [e for e in queries.quota(ps, Y)["enterprises"] if e["party"] == "MINE01"][0]
        assert row["allocated_t"] == "10"
    finally:
        ps.close()


def test_verify_fails_naming_a_mines_own_quota_batch_on_every_path(bare, capsys, tmp_path):
    """DOMAIN.md "Authority": the entry the write path refuses, written below the API with the
    mine's own valid key, proper chain and Merkle leaf, makes `reledger verify` fail (exit 1)
    naming it by chain:seq, type and roles, in text and JSON; its exported bundle fails too; and
    it counts in no quota."""
    import json

    from reledger.cli import main
    from reledger.ledger.bundle import verify_bundle
    from reledger.ledger.checkpoint import NoteSigner
    from projection_helpers import ORIGIN

    w = bare
    issue(w, "MINE01", 1, rock="10")
    with pytest.raises(CommandError) as err:   # the write path refuses it
        w.ok("MINE01", "QuotaBatchIssued", {"year": Y, "batch_no": 2, "document_no": "FAKE", "holder": "MINE01",
                                            "mining_rock_t_reo": "1000000", "mining_ionic_t_reo": "0",
                                            "separation_t_reo": "0"})
    assert err.value.code == "forbidden" and "MINE01 holds now MINE" in str(err.value)
    r = w.raw("MINE01", "QuotaBatchIssued", {"year": Y, "batch_no": 2, "document_no": "FAKE", "holder": "MINE01",
                                             "mining_rock_t_reo": "1000000", "mining_ionic_t_reo": "0",
                                             "separation_t_reo": "0"})
    w.store.checkpoint(NoteSigner(ORIGIN, w.ck.private_key))
    assert main(["verify", "--db", w.url, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["problem_count"] == 1
    first = out["first_problem"]
    assert (first["code"], first["index"], first["chain"], first["seq"]) == ("authority", r.index, "MINE01", r.seq)
    assert "QuotaBatchIssued" in first["message"] and "MINE01 holds now MINE" in first["message"]
    assert main(["verify", "--db", w.url]) == 1
    text = capsys.readouterr().out
    assert f"log index {r.index} (MINE01:{r.seq})" in text and "QuotaBatchIssued may be asserted by REGULATOR" in text
    # the party's bundle, checked offline, names it too
    bundle = tmp_path / "mine.bundle"
    assert main(["export", "--db", w.url, "--party", "MINE01", "--out", str(bundle)]) == 0
    capsys.readouterr()
    rep = verify_bundle(bundle.read_bytes())
    assert not rep.ok and len(rep.problems) == 1
    assert f"log index {r.index} (MINE01:{r.seq})" in rep.problems[0] and "QuotaBatchIssued" in rep.problems[0]
    assert main(["verify-bundle", str(bundle)]) == 1
    capsys.readouterr()
    # counted nowhere: the allocation is the 10 t the regulator issued, the nation's too
    assert [f["code"] for f in all_findings(w.url)] == ["UNAUTHORIZED_ENTRY"]
    ps = ProjectionStore(w.url)
    try:
        q = queries.quota(ps, Y)
        row = [e for e in q["enterprises"] if e["party"] == "MINE01" and e["category"] == "MINING_ROCK"][0]
        assert row["allocated_t"] == "10"
        assert "1000000" not in json.dumps(q)
    finally:
        ps.close()


def test_verify_passes_the_same_story_through_the_api(bare, capsys):
    """The near miss: the regulator issues the batch; verify is clean."""
    import json

    from reledger.cli import main

    issue(bare, "MINE01", 1, rock="10")
    issue(bare, "MINE01", 2, rock="1000000")
    assert main(["verify", "--db", bare.url, "--json"]) == 3  # valid (not anchored to pinned trust)
    assert json.loads(capsys.readouterr().out)["ok"]
    assert codes(bare) == []


# --- business time ---------------------------------------------------------------------------

def test_late_recorded_production_over_quota_at_its_business_time(bare):
    w = bare
    w.register("MINE09", ["MINE"])
    t0 = w.now
    issue(w, "MINE09", 1, rock="10")
    w.now = t0 + 10 * DAY
    issue(w, "MINE09", 2, rock="10")                     # 20 t from day 10 on
    w.produce("MINE09", "L2", 9_000_000)                 # day 10: 9 t
    w.now = t0 + 12 * DAY
    p = w.produce("MINE09", "L1", 8_000_000, at=t0 + 4 * DAY)   # day 4, recorded 8 days late: 8 t of 10 t
    assert codes(w) == []
    w.now += HOUR
    p2 = w.produce("MINE09", "L3", 3_000_000, at=t0 + 5 * DAY)  # day 5: 11 t against 10 t
    fs = all_findings(w.url)
    assert [(f["code"], f["party"], f["params"]["level"], f["index"]) for f in fs] == [
        ("OVER_QUOTA", "MINE09", "enterprise", p2.index), ("OVER_QUOTA", "MINE09", "nation", p2.index)]
    assert fs[0]["occurred_at"] == ts(t0 + 5 * DAY) and fs[0]["params"]["used_kg"] == "11000"
    assert p.index < p2.index


def test_shipment_before_the_lots_production_is_negative_stock(w):
    t = w.now
    w.now += DAY
    p = w.produce("MINE01", "L1", 500_000, at=t + DAY)
    s = w.ship("MINE01", "SEP01", "T1", [("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)], at=t + HOUR)
    f = only(w)
    assert summary(f) == ("NEGATIVE_STOCK", "MINE01", ev(s, p))
    # near miss: a production recorded late, dated before the shipment, cures it: resolved, not deleted
    w.now += HOUR
    cure = w.produce("MINE01", "L0", 100_000, at=t)
    assert all_findings(w.url)[0].get("resolved") is None  # another lot: no cure
    w.raw("MINE01", "TransferReceived", {"transfer_id": "NONE", "seller": "SEP01", "received_at": ts(t),
                                          "lines": [{"lot": "L1", "product": "BASTNAESITE_CONCENTRATE",
                                                     "kg": "1000", "reo_kg": "500"}]}, at=t)
    f = [x for x in all_findings(w.url) if x["code"] == "NEGATIVE_STOCK"][0]
    assert f["resolved"] and cure.index < f["resolved"]["index"]


def test_quota_reduced_before_the_year_is_issued_raises_nothing(bare):
    w = bare
    v = w.ok("MIIT", "ViolationFound", {"party": "MINE01", "rule": "QUOTA", "article": "Decree 785 Art. 21",
                                        "description": "over quota", "evidence": [w.ref("MIIT", 1)]})
    pen = w.ok("MIIT", "PenaltyImposed", {"party": "MINE01", "violation": w.ref("MIIT", v.seq), "decision_no": "P",
                                          "article": "Decree 71 Art. 14", "fine_cny": "1",
                                          "next_year_cut_t_reo": "3"})
    w.ok("MIIT", "QuotaReduced", {"year": Y + 1, "holder": "MINE01", "category": "MINING_ROCK", "t_reo": "3",
                                  "penalty": w.ref("MIIT", pen.seq)})
    assert codes(w) == []
    ps = ProjectionStore(w.url)
    try:
        assert [e["over"] for e in queries.quota(ps, Y + 1)["enterprises"]] == [False]
    finally:
        ps.close()
    issue(w, "MINE01", 1, rock="10", year=Y + 1)
    assert codes(w) == [] and used(w, "MINE01", "MINING_ROCK", Y + 1) == "0"


def test_penalty_cut_not_applied_before_the_first_batch(bare):
    w = bare
    v = w.ok("MIIT", "ViolationFound", {"party": "MINE01", "rule": "QUOTA", "article": "Decree 785 Art. 21",
                                        "description": "over quota", "evidence": [w.ref("MIIT", 1)]})
    pen = w.ok("MIIT", "PenaltyImposed", {"party": "MINE01", "violation": w.ref("MIIT", v.seq), "decision_no": "P",
                                          "article": "Decree 71 Art. 14", "fine_cny": "1",
                                          "next_year_cut_t_reo": "3"})
    b = issue(w, "MINE01", 1, rock="10", year=Y + 1)
    f = only(w)
    assert summary(f) == ("PENALTY_CUT_NOT_APPLIED", "MIIT", ev(b, pen))


# --- groups ----------------------------------------------------------------------------------

def test_left_removes_only_the_group_named(bare):
    w = bare
    w.register("GRP02", ["GROUP"])
    g2 = issue(w, "GRP02", 1, rock="1")
    issue(w, "MINE01", 1, rock="100")
    w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP02", "action": "JOINED",
                                            "effective_from": ts(w.now)})
    w.now += HOUR
    w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP01", "action": "LEFT",
                                            "effective_from": ts(w.now)})   # not its group any more: no change
    w.now += HOUR
    p = w.produce("MINE01", "L1", 2_000_000)      # 2 t: GRP02's 1 t is exceeded
    f = only(w)
    assert summary(f) == ("OVER_QUOTA", "MINE01", ev(p, g2)) and f["params"]["holder"] == "GRP02"


def _group_used(w, grp, cat="MINING_ROCK"):
    ps = ProjectionStore(w.url)
    try:
        ps.catch_up()
        rows = [r for r in queries.quota(ps, Y)["groups"] if r["group"] == grp and r["category"] == cat]
        return rows[0]["used_t"] if rows else None
    finally:
        ps.close()


def test_a_late_membership_change_moves_counted_output_between_groups(bare):
    """A party's output counts to the group it belongs to at the output's business time: a
    GroupMembershipChanged recorded late, effective before output already counted to GRP01,
    moves it to GRP02 (whose over-quota finding is raised by the change), and a later change
    that takes it out again resolves that finding."""
    w = bare
    t0 = w.now
    w.register("GRP02", ["GROUP"])
    g2 = issue(w, "GRP02", 1, rock="1")
    issue(w, "GRP01", 1, rock="20")
    issue(w, "MINE01", 1, rock="100")
    w.now = t0 + DAY
    p = w.produce("MINE01", "L1", 5_000_000)                   # day 1: 5 t, counted to GRP01
    assert _group_used(w, "GRP01") == "5" and _group_used(w, "GRP02") == "0"
    assert codes(w) == []
    w.now = t0 + 10 * DAY                                       # recorded on day 10, effective on day 0
    j = w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP02", "action": "JOINED",
                                                "effective_from": ts(t0)})
    assert _group_used(w, "GRP01") == "0" and _group_used(w, "GRP02") == "5"
    fs = all_findings(w.url)
    assert [(f["code"], f["party"], f["params"]["level"], f["params"]["holder"], f["index"]) for f in fs] == [
        ("OVER_QUOTA", "MINE01", "group", "GRP02", j.index)]
    assert fs[0]["occurred_at"] == ts(t0 + DAY) and fs[0]["evidence"][0]["seq"] == j.seq
    assert g2.index < j.index and p.index < j.index
    w.now += HOUR                                               # it left GRP02 on day 0 too: in no group
    lft = w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP02", "action": "LEFT",
                                                  "effective_from": ts(t0)})
    assert _group_used(w, "GRP01") == "0" and _group_used(w, "GRP02") == "0"
    fs = all_findings(w.url)
    assert fs[0]["resolved"]["index"] == lft.index
    # the enterprise's and the nation's use never changed
    assert used(w, "MINE01", "MINING_ROCK") == "5"


def _two_groups(w):
    """GRP02 registered beside GRP01 (MINE01's group), each with quota, and MINE01's own; the
    clock one day on. Returns the first day's time."""
    t0 = w.now
    w.register("GRP02", ["GROUP"])
    issue(w, "GRP02", 1, rock="1")
    issue(w, "GRP01", 1, rock="20")
    issue(w, "MINE01", 1, rock="100")
    w.now = t0 + DAY
    return t0


def test_a_membership_change_effective_after_the_output_moves_nothing(bare):
    w = bare
    t0 = _two_groups(w)
    w.produce("MINE01", "L1", 5_000_000)
    w.now = t0 + 10 * DAY
    w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP02", "action": "JOINED",
                                            "effective_from": ts(t0 + 5 * DAY)})
    assert _group_used(w, "GRP01") == "5" and _group_used(w, "GRP02") == "0"
    assert codes(w) == []


def test_a_corrected_output_leaves_the_group_it_was_moved_to(bare):
    w = bare
    t0 = _two_groups(w)
    p = w.produce("MINE01", "L1", 5_000_000)
    w.now = t0 + 2 * DAY
    w.ok("MIIT", "GroupMembershipChanged", {"party": "MINE01", "group": "GRP02", "action": "JOINED",
                                            "effective_from": ts(t0)})
    w.now += HOUR
    c = w.ok("MINE01", "CorrectionRecorded", {"corrects": w.ref("MINE01", p.seq), "reason": "DID_NOT_OCCUR",
                                              "explanation": "entered twice"})
    assert _group_used(w, "GRP01") == "0" and _group_used(w, "GRP02") == "0"
    fs = all_findings(w.url)
    assert [f["code"] for f in fs] == ["OVER_QUOTA"] and fs[0]["resolved"]["index"] == c.index


# --- illegal source --------------------------------------------------------------------------

def test_illegal_source_traced_downstream(w):
    w.ok("MIIT", "PartyDesignationChanged", {"party": "MINE01", "valid_from": ts(w.now - HOUR),
                                             "valid_until": ts(w.now), "reason": "designation ended"})
    w.now += HOUR
    (p, s, r), line = mined_lot(w, "MINE01", "SEP01")
    b, outs = separate(w, "SEP01", [(line[0], line[2], line[3])], 970)
    ce = outs[0]
    s2 = w.ship("SEP01", "SMELT01", "T-CE", [ce])
    r2 = w.receive("SMELT01", "SEP01", "T-CE", [ce])
    fs = all_findings(w.url)
    assert [summary(f)[:2] for f in fs] == [("NOT_DESIGNATED", "MINE01"), ("ILLEGAL_SOURCE", "SEP01"),
                                            ("ILLEGAL_SOURCE", "SMELT01")]
    assert summary(fs[1]) == ("ILLEGAL_SOURCE", "SEP01", ev(r, p))
    assert summary(fs[2]) == ("ILLEGAL_SOURCE", "SMELT01", ev(r2, p, b))
    assert s2.index < r2.index


def test_lawful_source_downstream_raises_nothing(w):
    (_, _, _), line = mined_lot(w, "MINE01", "SEP01")
    _, outs = separate(w, "SEP01", [(line[0], line[2], line[3])], 970)
    w.ship("SEP01", "SMELT01", "T-CE", [outs[0]])
    w.receive("SMELT01", "SEP01", "T-CE", [outs[0]])
    assert codes(w) == []


# --- ore-type bands --------------------------------------------------------------------------

@pytest.mark.parametrize("form,ore,yield_pm,expected", [
    ("CONCENTRATE", None, 890, []),                     # rock concentrate: 88.32 %
    ("CONCENTRATE", None, 880, ["YIELD_BELOW_BAND"]),
    ("CONCENTRATE", "IONIC", 945, []),                  # ion-adsorption: 94 %
    ("CONCENTRATE", "IONIC", 935, ["YIELD_BELOW_BAND"]),
    ("MIXED_CARBONATE", None, 965, []),                 # mixed RE: 96 %
    ("MIXED_CARBONATE", None, 955, ["YIELD_BELOW_BAND"]),
])
def test_import_bands_by_ore_type(w, form, ore, yield_pm, expected):
    body = {"lot": "IMP-1", "customs_declaration_no": "1", "hs_code": "2612200000", "origin_country": "MM",
            "form": form, "dry_kg": "2000", "treo_pct": "50", "reo_kg": "1000"}
    if ore:
        body["ore_type"] = ore
    w.ok("SEP02", "ImportReceived", body)
    r, _ = separate(w, "SEP02", [("IMP-1", 2_000_000, 1_000_000)], yield_pm)
    assert codes(w) == [(c, "SEP02", ev(r)) for c in expected]


# --- reports and corrections -----------------------------------------------------------------

def test_false_monthly_totals_and_quota_execution(w):
    p = w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 5)
    body = {"month": "2024-01", "totals": {"produced_reo_kg": "400"}, "first_seq": 1, "last_seq": 1}
    from reledger.commands.catalogue import report_digest
    body["digest"] = report_digest(w.hashes["MINE01"][:1])
    r = w.ok("MINE01", "MonthlyFlowReportSubmitted", body)
    q = w.ok("MINE01", "QuotaExecutionReported", {"period": "2024-01", "lines": [
        {"category": "MINING_ROCK", "used_t_reo": "0.4", "allocated_t_reo": "50"}]})
    assert [summary(f) for f in all_findings(w.url)] == [("FALSE_REPORT", "MINE01", ev(r)),
                                                         ("FALSE_REPORT", "MINE01", ev(q))]
    assert p.index < r.index


def test_true_monthly_totals_raise_nothing(w):
    w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 5)
    from reledger.commands.catalogue import report_digest
    w.ok("MINE01", "MonthlyFlowReportSubmitted", {"month": "2024-01", "totals": {"produced_reo_kg": "500"},
                                                  "first_seq": 1, "last_seq": 1,
                                                  "digest": report_digest(w.hashes["MINE01"][:1])})
    w.ok("MINE01", "QuotaExecutionReported", {"period": "2024-01", "lines": [
        {"category": "MINING_ROCK", "used_t_reo": "0.5", "allocated_t_reo": "50"}]})
    assert codes(w) == []


def test_correction_stops_the_entry_counting(bare):
    w = bare
    w.register("MINE09", ["MINE"])
    issue(w, "MINE09", 1, rock="1")
    w.produce("MINE09", "L1", 800_000)
    w.now += HOUR
    p = w.produce("MINE09", "L2", 800_000)                   # 1.6 t of 1 t
    assert [c[0] for c in codes(w)] == ["OVER_QUOTA", "OVER_QUOTA"]   # enterprise and nation
    w.now += HOUR
    c = w.ok("MINE09", "CorrectionRecorded", {"corrects": w.ref("MINE09", p.seq), "reason": "DID_NOT_OCCUR",
                                              "explanation": "entered twice"})
    fs = all_findings(w.url)
    assert len(fs) == 2 and all(f["resolved"]["index"] == c.index for f in fs)
    assert used(w, "MINE09", "MINING_ROCK") == "0.8"


def _month_report(w, party, month):
    from reledger.replay.monthly import build_monthly_report

    all_findings(w.url)  # the projections catch up
    return build_monthly_report(w.url, party, month)


def test_the_monthly_report_leaves_out_corrected_entries_and_counts_their_replacements(w):
    """`reledger report --month`: an entry corrected (INCORRECT_DATA, replaced) counts in none of
    the totals, the closing stock or the quota used; the replacing entry counts. The report so
    built, signed and submitted, is true: no FALSE_REPORT."""
    w.produce("MINE01", "L1", 500_000)
    w.now += HOUR
    wrong = w.produce("MINE01", "L2", 300_000)
    w.now += HOUR
    fixed = w.produce("MINE01", "L2b", 250_000)             # the right figure, as a new lot
    w.now += HOUR
    w.ok("MINE01", "CorrectionRecorded", {"corrects": w.ref("MINE01", wrong.seq), "reason": "INCORRECT_DATA",
                                          "replaced_by": [w.ref("MINE01", fixed.seq)],
                                          "explanation": "wet mass entered as dry"})
    w.now = dt_us(Y, 2, 5)
    rep = _month_report(w, "MINE01", "2024-01")
    flow, execution = rep["MonthlyFlowReportSubmitted"], rep["QuotaExecutionReported"]
    assert flow["totals"] == {"produced_reo_kg": "750", "closing_stock_reo_kg": "750"}
    assert execution["lines"] == [{"category": "MINING_ROCK", "used_t_reo": "0.75", "allocated_t_reo": "50"}]
    assert rep["corrected_entries"] == [wrong.seq]
    assert rep["entries_in_month"]["MineralProductProduced"] == 2
    w.ok("MINE01", "MonthlyFlowReportSubmitted", flow)
    w.ok("MINE01", "QuotaExecutionReported", execution)
    assert codes(w) == []


def test_a_report_that_still_counts_a_corrected_entry_is_false(w):
    """The near miss of the above: the totals with the corrected entry are what the ledger no
    longer says."""
    w.produce("MINE01", "L1", 500_000)
    w.now += HOUR
    wrong = w.produce("MINE01", "L2", 300_000)
    w.now += HOUR
    w.ok("MINE01", "CorrectionRecorded", {"corrects": w.ref("MINE01", wrong.seq), "reason": "DID_NOT_OCCUR",
                                          "explanation": "entered twice"})
    w.now = dt_us(Y, 2, 5)
    rep = _month_report(w, "MINE01", "2024-01")
    flow = rep["MonthlyFlowReportSubmitted"]
    assert flow["totals"] == {"produced_reo_kg": "500", "closing_stock_reo_kg": "500"}
    flow["totals"] = {"produced_reo_kg": "800", "closing_stock_reo_kg": "800"}
    r = w.ok("MINE01", "MonthlyFlowReportSubmitted", flow)
    assert codes(w) == [("FALSE_REPORT", "MINE01", ev(r))]


def test_quota_execution_of_a_later_month_states_the_use_of_the_year_so_far(w):
    """The quota execution report of February states the year's use up to February's end
    (beside the allocation), as `reledger report` builds it: no false alarm."""
    w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 3)
    w.produce("MINE01", "L2", 300_000)
    w.now = dt_us(Y, 2, 9)                        # (before January's report is due)
    rep = _month_report(w, "MINE01", "2024-02")
    assert rep["QuotaExecutionReported"]["lines"][0]["used_t_reo"] == "0.8"
    w.ok("MINE01", "QuotaExecutionReported", rep["QuotaExecutionReported"])
    assert codes(w) == []
    q = w.ok("MINE01", "QuotaExecutionReported", {"period": "2024-02", "lines": [
        {"category": "MINING_ROCK", "used_t_reo": "0.3", "allocated_t_reo": "50"}]})   # February alone: false
    assert codes(w) == [("FALSE_REPORT", "MINE01", ev(q))]


# --- export controls -------------------------------------------------------------------------

def _export(w, licence_from=None):
    w.now = dt_us(2025, 3, 1)
    w.ok("EXPO01", "ImportReceived", {"lot": "DY-1", "customs_declaration_no": "9", "hs_code": "2846901100",
                                      "origin_country": "MM", "form": "SEPARATED_OXIDE", "product": "Dy2O3",
                                      "dry_kg": "100", "treo_pct": "99", "reo_kg": "99"})
    body = {"lot": "DY-1", "product": "Dy2O3", "kg": "100", "reo_kg": "99", "customs_declaration_no": "E1",
            "export_licence_no": "DU-1", "destination_country": "JP"}
    if licence_from:
        body["licence_valid_from"] = licence_from
    return w.ok("EXPO01", "ExportDeclared", body)


def test_controlled_export_without_a_valid_licence(w):
    e = _export(w, licence_from="2025-06-01T00:00:00Z")   # not yet valid
    assert codes(w) == [("EXPORT_WITHOUT_LICENCE", "EXPO01", ev(e))]


def test_controlled_export_with_a_valid_licence(w):
    _export(w, licence_from="2025-01-01T00:00:00Z")
    assert codes(w) == []


# --- parameters ----------------------------------------------------------------------------------

def test_a_parameter_set_by_the_regulator_is_used_and_cited(w):
    """backdating_days 15 by default; the regulator sets 30: a 20-day-late entry (outside the
    reporting window) is then on time, a 31-day-late one is backdated and cites 30."""
    w.now = dt_us(Y, 3, 25, 12)
    w.ok("MIIT", "RuleParameterSet", {"name": "backdating_days", "value": "30", "reason": "MIIT notice 7"})
    w.produce("MINE01", "L1", 500_000, at=w.now - 20 * DAY)
    assert codes(w) == []
    p = w.produce("MINE01", "L2", 500_000, at=w.now - 31 * DAY)
    f = only(w)
    assert summary(f) == ("BACKDATED", "MINE01", ev(p)) and f["params"]["backdating_days"] == 30


def test_a_bad_parameter_value_is_refused(w):
    for name, value in (("backdating_days", "1.5"), ("reo_tolerance_pct", "-1"), ("export_control_since", "2025"),
                        ("controlled_elements", "Dy,Xx")):
        with pytest.raises(CommandError) as err:
            w.ok("MIIT", "RuleParameterSet", {"name": name, "value": value})
        assert err.value.field == "body.value", name
    with pytest.raises(CommandError) as err:
        w.ok("MINE01", "RuleParameterSet", {"name": "backdating_days", "value": "99"})
    assert err.value.code == "forbidden"


# --- quota levels ------------------------------------------------------------------------------

def test_batches_above_the_annual_total(bare):
    w = bare
    a = w.ok("MIIT", "AnnualTotalApproved", {"year": Y, "mining_rock_t_reo": "30", "mining_ionic_t_reo": "10",
                                             "separation_t_reo": "30", "approval_ref": "SC-2024-1"})
    b1 = issue(w, "GRP01", 1, rock="20", ionic="10", sep="30")
    assert codes(w) == []                                   # within the totals (equal is within)
    b2 = issue(w, "SEP02", 1, sep="1")
    f = only(w)
    assert summary(f) == ("BATCHES_ABOVE_ANNUAL_TOTAL", "MIIT", ev(b2, a, b1))
    assert f["params"]["category"] == "SEPARATION" and "confidential" in f["params"]


def test_suballocation_in_time_to_a_member_within_the_batch(bare):
    w = bare
    issue(w, "GRP01", 1, rock="10")                          # Tuesday 2 January 2024
    w.now = dt_us(Y, 1, 16, 15)                              # 23:00 CST on the 10th working day
    suballoc(w, "MINE01", "MINING_ROCK", "6")
    suballoc(w, "MINE02", "MINING_ROCK", "4")
    assert codes(w) == []


def test_suballocation_late_above_the_batch_and_to_a_non_member(bare):
    w = bare
    b = issue(w, "GRP01", 1, rock="10")
    w.now = dt_us(Y, 1, 16, 16)                              # 24:00 CST on the 10th working day: late
    late = suballoc(w, "MINE01", "MINING_ROCK", "6")
    above = suballoc(w, "MINE02", "MINING_ROCK", "5")
    outsider = suballoc(w, "SEP02", "MINING_ROCK", "0.5")
    assert [summary(f) for f in all_findings(w.url)] == [
        ("SUBALLOCATION_LATE", "GRP01", ev(late, b)), ("SUBALLOCATION_ABOVE_BATCH", "GRP01", ev(above, b)),
        ("SUBALLOCATION_LATE", "GRP01", ev(above, b)), ("SUBALLOCATION_ABOVE_BATCH", "GRP01", ev(outsider, b)),
        ("SUBALLOCATION_LATE", "GRP01", ev(outsider, b)), ("SUBALLOCATION_TO_NON_MEMBER", "GRP01", ev(outsider))]


def test_working_days_skip_the_spring_festival_and_count_its_make_up_days(bare):
    """2024: batch on Wednesday 7 February (CST). Working days after it: 8 Feb (Thu), 9 Feb
    (Fri); the holiday 10-17 Feb; 18 Feb (a Sunday, a make-up working day); 19-23 Feb; 26 Feb;
    27 Feb is the 10th. Counting Monday to Friday only, the 10th would be 21 Feb."""
    w = bare
    w.now = dt_us(Y, 2, 7, 2)                                # 10:00 CST, Wednesday 7 February
    b = issue(w, "GRP01", 1, rock="10")
    w.now = dt_us(Y, 2, 27, 15)                              # 23:00 CST on 27 February: in time
    suballoc(w, "MINE01", "MINING_ROCK", "6")
    assert codes(w) == []
    w.now = dt_us(Y, 2, 27, 16)                              # 24:00 CST on 27 February: late
    late = suballoc(w, "MINE02", "MINING_ROCK", "4")
    f = only(w)
    assert summary(f) == ("SUBALLOCATION_LATE", "GRP01", ev(late, b))
    p = f["params"]
    assert p["last_working_day"] == "2024-02-27" and p["suballocation_working_days"] == 10
    assert p["holidays"] == ",".join(f"2024-02-{d}" for d in range(10, 18)) and p["makeup_workdays"] == "2024-02-18"
    assert "calendar_unknown_years" not in p


def test_the_regulator_sets_a_years_working_day_calendar(bare):
    """For a year the defaults do not know (2026 here) working days are Monday to Friday and the
    finding says so; the regulator's RuleParameterSet sets that year's calendar (the other
    years' stay) and the count follows it."""
    w = bare
    w.now = dt_us(2026, 2, 11, 2)                            # Wednesday 11 February 2026
    issue(w, "GRP01", 1, rock="10", year=2026)
    w.now = dt_us(2026, 2, 25, 16)                           # 24:00 CST, Wed 25 Feb: the 10th day Mon-Fri
    late = w.ok("GRP01", "QuotaSubAllocated", {"batch": {"year": 2026, "batch_no": 1}, "enterprise": "MINE01",
                                               "category": "MINING_ROCK", "t_reo": "1"})
    f = only(w)
    assert f["code"] == "SUBALLOCATION_LATE" and f["params"]["calendar_unknown_years"] == [2026]
    assert "2026 is not known" in f["message"] and f["index"] == late.index
    w.ok("MIIT", "RuleParameterSet", {"name": "holidays", "value": "2026-02-15..2026-02-23",
                                      "reason": "the year's holiday notice"})
    w.ok("MIIT", "RuleParameterSet", {"name": "makeup_workdays", "value": "2026-02-14,2026-02-28"})
    w.ok("GRP01", "QuotaSubAllocated", {"batch": {"year": 2026, "batch_no": 1}, "enterprise": "MINE02",
                                        "category": "MINING_ROCK", "t_reo": "1"})   # now in time
    assert [x["code"] for x in all_findings(w.url)] == ["SUBALLOCATION_LATE"]
    # the other years' calendars stay: 2024's is still the State Council's
    from reledger.projections.model import Projector
    from reledger.storage.store import LedgerStore

    proj = Projector()
    with LedgerStore(w.url, create=False) as st:
        for rec in st.records():
            from reledger.ledger.entry import SignedEntry
            proj.apply(rec.index, rec.recorded_us, SignedEntry.parse(rec.envelope))
    from reledger.projections.reference import calendar_dates
    cal = calendar_dates(proj.p("holidays"))
    assert "2024-02-12" in cal[2024] and "2025-01-28" in cal[2025] and "2026-02-16" in cal[2026]


def test_a_calendar_that_is_not_one_is_refused(bare):
    with pytest.raises(CommandError) as err:
        bare.ok("MIIT", "RuleParameterSet", {"name": "holidays", "value": "2026-02-30"})
    assert err.value.field == "body.value" and err.value.code == "bad_value"


# --- illegal source: separated by a plant not designated, exported -----------------------------

def test_illegal_separation_traced_to_the_exporter(w):
    (_, _, _), line = mined_lot(w, "MINE01", "SEP01")
    w.ok("MIIT", "PartyDesignationChanged", {"party": "SEP01", "roles": [], "valid_from": ts(w.now - 1_000_000),
                                             "reason": "suspended"})
    b, outs = separate(w, "SEP01", [(line[0], line[2], line[3])], 970)
    ce = outs[0]
    w.ship("SEP01", "EXPO01", "T-CE", [ce])
    r = w.receive("EXPO01", "SEP01", "T-CE", [ce])
    w.ok("EXPO01", "ExportDeclared", {"lot": ce[0], "product": ce[1], "kg": kg(ce[2]), "reo_kg": kg(ce[3]),
                                      "customs_declaration_no": "X1", "export_licence_no": "EL-1",
                                      "destination_country": "JP"})
    assert [summary(f)[:2] for f in all_findings(w.url)] == [("NOT_DESIGNATED", "SEP01"),
                                                             ("ILLEGAL_SOURCE", "EXPO01")]
    f = all_findings(w.url)[1]
    assert summary(f) == ("ILLEGAL_SOURCE", "EXPO01", ev(r, b)) and f["params"]["source"] == "SEP01"


# --- more obliged parties: magnets and scrap ------------------------------------------------------

def test_scrap_moves_between_parties_under_its_own_code_and_a_magnet_maker_reports(w):
    w.register("RECY02", ["RECYCLER"])
    w.register("MAG01", ["MAGNET"])
    w.ok("RECY01", "SecondaryFeedReceived", {"lot": "SCR-1", "scrap_type": "MAGNET_SCRAP", "source": "Ningbo",
                                             "kg": "3000", "treo_pct": "30", "reo_kg": "900"})
    line = ("SCR-1", "MAGNET_SCRAP", 1_000_000, 300_000)
    w.ship("RECY01", "RECY02", "T-S", [line])
    w.receive("RECY02", "RECY01", "T-S", [line])
    w.ok("SEP01", "ImportReceived", {"lot": "IMP-N", "customs_declaration_no": "5", "hs_code": "2846901100",
                                     "origin_country": "MM", "form": "SEPARATED_OXIDE", "product": "Nd2O3",
                                     "dry_kg": "100", "treo_pct": "99", "reo_kg": "99"})
    nd = ("IMP-N", "Nd2O3", 100_000, 99_000)
    w.ship("SEP01", "MAG01", "T-N", [nd])
    w.receive("MAG01", "SEP01", "T-N", [nd])
    assert codes(w) == []
    w.now = dt_us(Y, 2, 11)
    w.produce("MINE02", "I1", 100_000, ore="IONIC", product="IONIC_CONCENTRATE")
    # the magnet maker keeps flow records and reports monthly like any obliged enterprise
    assert ("REPORT_MISSING", "MAG01") in [c[:2] for c in codes(w)]


@pytest.mark.parametrize("product,expected", [("SmCo_MAGNET", ["EXPORT_WITHOUT_LICENCE"]), ("NdFeB_MAGNET", []),
                                              ("DyFe_ALLOY", ["EXPORT_WITHOUT_LICENCE"]), ("CeO2", [])])
def test_export_controls_cover_magnets_and_alloys(w, product, expected):
    w.now = dt_us(2025, 3, 1)
    w.ok("EXPO01", "ImportReceived", {"lot": "X-1", "customs_declaration_no": "9", "hs_code": "2846901100",
                                      "origin_country": "MM", "form": "OTHER", "product": product,
                                      "dry_kg": "100", "treo_pct": "30", "reo_kg": "30"})
    e = w.ok("EXPO01", "ExportDeclared", {"lot": "X-1", "product": product, "kg": "100", "reo_kg": "30",
                                          "customs_declaration_no": "E1", "export_licence_no": "NONE",
                                          "destination_country": "JP"})
    assert codes(w) == [(c, "EXPO01", ev(e)) for c in expected]


def test_no_export_control_before_2025(w):
    w.ok("EXPO01", "ImportReceived", {"lot": "DY-0", "customs_declaration_no": "9", "hs_code": "2846901100",
                                      "origin_country": "MM", "form": "SEPARATED_OXIDE", "product": "Dy2O3",
                                      "dry_kg": "100", "treo_pct": "99", "reo_kg": "99"})
    w.ok("EXPO01", "ExportDeclared", {"lot": "DY-0", "product": "Dy2O3", "kg": "100", "reo_kg": "99",
                                      "customs_declaration_no": "E0", "export_licence_no": "EL-1",
                                      "destination_country": "JP"})
    assert codes(w) == []


def test_closing_stock_stated_in_a_monthly_report(w):
    from reledger.commands.catalogue import report_digest
    w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 2)
    w.produce("MINE01", "L2", 300_000, at=dt_us(Y, 1, 31, 17))   # 1 February 01:00 CST: not January's
    w.now = dt_us(Y, 2, 5)
    body = {"month": "2024-01", "totals": {"closing_stock_reo_kg": "500", "produced_reo_kg": "500"},
            "first_seq": 1, "last_seq": 1, "digest": report_digest(w.hashes["MINE01"][:1])}
    w.ok("MINE01", "MonthlyFlowReportSubmitted", body)
    assert codes(w) == []
    body = dict(body, month="2024-01", totals={"closing_stock_reo_kg": "800"})
    r = w.raw("MINE01", "MonthlyFlowReportSubmitted", body)
    f = only(w)
    assert summary(f) == ("FALSE_REPORT", "MINE01", ev(r))
    assert f["params"]["totals"] == {"closing_stock_reo_kg": {"stated_kg": "800", "ledger_kg": "500"}}


def test_stock_count_against_the_books_at_its_business_time(w):
    (_, _, r), line = mined_lot(w)
    t = w.now
    w.now += HOUR
    s = w.ship("SEP01", "SEP02", "T-X", [line], at=t + DAY)             # shipped tomorrow (business time)
    w.ok("SEP01", "StockCounted", {"lot": line[0], "counted_kg": kg(line[2])}, at=t)   # today: all there
    assert codes(w) == []
    w.now = t + 3 * DAY
    c = w.ok("SEP01", "StockCounted", {"lot": line[0], "counted_kg": kg(line[2])}, at=t + 2 * DAY)
    assert codes(w) == [("STOCK_COUNT_DIFFERENCE", "SEP01", ev(c, r, s))]
