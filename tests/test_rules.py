"""Each rule of DOMAIN.md ("Rules that projections and replay check"), on SQLite and PostgreSQL:
a scenario that breaks it gives exactly the expected finding (code, party, evidence entries
with chain, seq and hash, the entry that raised it), and a clean scenario gives none. Record
times come from the store's clock (``World.now``)."""

from __future__ import annotations

import pytest

from reledger.commands.api import CommandError
from projection_helpers import DAY, HOUR, World, all_findings, dt_us, ev, kg, summary, ts
from reledger.projections import queries
from reledger.projections.store import ProjectionStore

Y = 2024


@pytest.fixture
def bare(db_url):
    w = World(db_url, now=dt_us(Y, 1, 1))
    w.now = dt_us(Y, 1, 2, 9)
    yield w
    w.close()


@pytest.fixture
def w(bare):
    """The cast with ample quota: GRP01 100 t of each, sub-allocated 50 t to its members; SEP02
    100 t of separation directly."""
    issue(bare, "GRP01", 1, rock="100", ionic="100", sep="100")
    issue(bare, "SEP02", 1, sep="100")
    for member, cat in (("MINE01", "MINING_ROCK"), ("MINE02", "MINING_IONIC"), ("SEP01", "SEPARATION")):
        suballoc(bare, member, cat, "50")
    bare.now += HOUR
    return bare


def issue(w, holder, no, rock="0", ionic="0", sep="0", year=Y):
    return w.ok("MIIT", "QuotaBatchIssued", {"year": year, "batch_no": no, "document_no": f"Q-{holder}-{no}",
                                             "holder": holder, "mining_rock_t_reo": rock,
                                             "mining_ionic_t_reo": ionic, "separation_t_reo": sep})


def suballoc(w, member, cat, t, group="GRP01", no=1, at=None):
    return w.ok(group, "QuotaSubAllocated", {"batch": {"year": Y, "batch_no": no}, "enterprise": member,
                                             "category": cat, "t_reo": t}, at)


def separate(w, plant, inputs, yield_pct, losses_pct=None, batch=None, outputs=("CeO2", "La2O3")):
    """inputs: [(lot, g, reo_g)]; outputs split the output REO; losses default in - out."""
    reo_in = sum(r for _, _, r in inputs)
    reo_out = reo_in * yield_pct // 1000
    losses = reo_in - reo_out if losses_pct is None else reo_in * losses_pct // 1000
    n = w.uid()
    first = reo_out // 2
    outs = [(outputs[0], first), (outputs[1], reo_out - first)]
    body = {"batch": batch or f"B{n}", "period_start": ts(w.now - DAY), "period_end": ts(w.now - HOUR),
            "inputs": [{"lot": lot, "kg": kg(g), "reo_kg": kg(r)} for lot, g, r in inputs],
            "outputs": [{"lot": f"{plant}-{p}-{n}", "product": p, "kg": kg(r + r // 100), "purity_pct": "99.5",
                         "reo_kg": kg(r)} for p, r in outs],
            "losses_reo_kg": kg(max(0, losses))}
    r = w.ok(plant, "SeparationBatchRecorded", body)
    return r, [(f"{plant}-{p}-{n}", p, rr + rr // 100, rr) for p, rr in outs]


def mined_lot(w, mine="MINE01", plant="SEP01", reo_g=1_000_000, ore="ROCK"):
    """A lot mined, shipped to the plant and received; returns the receipts and the line."""
    lot = f"{mine}-L{w.uid()}"
    product = "BASTNAESITE_CONCENTRATE" if ore == "ROCK" else "IONIC_CONCENTRATE"
    p = w.produce(mine, lot, reo_g, ore=ore, product=product)
    line = (lot, product, reo_g * 2, reo_g)
    w.now += HOUR
    tid = f"T{w.uid()}"
    s = w.ship(mine, plant, tid, [line])
    w.now += 5 * HOUR
    r = w.receive(plant, mine, tid, [line])
    w.now += HOUR
    return (p, s, r), line


def codes(w) -> list[tuple]:
    return [summary(f) for f in all_findings(w.url)]


def only(w) -> dict:
    fs = all_findings(w.url)
    assert len(fs) == 1, [summary(f) for f in fs]
    return fs[0]


# --- a clean year start: nothing to find ----------------------------------------------------------

def test_clean_scenario_has_no_findings(w):
    (p1, _, _), line = mined_lot(w, "MINE01", "SEP01")
    (p2, _, _), line2 = mined_lot(w, "MINE02", "SEP01", ore="IONIC")
    _, outs = separate(w, "SEP01", [(line[0], line[2], line[3]), (line2[0], line2[2], line2[3])], 970)
    ce = outs[0]
    w.now += DAY
    w.ship("SEP01", "SMELT01", "T-CE", [ce])
    w.now += HOUR
    w.receive("SMELT01", "SEP01", "T-CE", [ce])
    metal_g = int(ce[3] * 98 // 100 / 1.2284)
    w.ok("SMELT01", "MetalSmelted", {"batch": "SM1", "inputs": [{"lot": ce[0], "kg": kg(ce[2]), "reo_kg": kg(ce[3])}],
                                     "outputs": [{"lot": "MET-1", "product": "Ce_METAL", "kg": kg(metal_g),
                                                  "factor": "1.2284", "reo_kg": kg(int(metal_g * 1.2284))}]})
    w.now += HOUR
    met = ("MET-1", "Ce_METAL", metal_g, int(metal_g * 1.2284))
    w.ship("SMELT01", "EXPO01", "T-MET", [met])
    w.now += HOUR
    w.receive("EXPO01", "SMELT01", "T-MET", [met])
    w.ok("EXPO01", "ExportDeclared", {"lot": "MET-1", "product": "Ce_METAL", "kg": kg(met[2]), "reo_kg": kg(met[3]),
                                      "customs_declaration_no": "2200001", "export_licence_no": "EL-1",
                                      "destination_country": "JP"})
    w.ok("RECY01", "SecondaryFeedReceived", {"lot": "SCR-1", "scrap_type": "MAGNET_SCRAP", "source": "Ningbo",
                                             "kg": "3000", "treo_pct": "30", "reo_kg": "900"})
    w.ok("SEP02", "ImportReceived", {"lot": "IMP-1", "customs_declaration_no": "2201001", "hs_code": "2612200000",
                                     "origin_country": "MM", "form": "MONAZITE", "product": "MONAZITE_CONCENTRATE",
                                     "dry_kg": "2000", "treo_pct": "50", "reo_kg": "1000"})
    separate(w, "SEP02", [("IMP-1", 2_000_000, 1_000_000)], 960)
    w.ok("SEP01", "StockCounted", {"lot": outs[1][0], "counted_kg": kg(outs[1][2])})
    w.ok("RECY01", "StockCounted", {"lot": "SCR-1", "counted_kg": "3000"})
    w.ok("SEP01", "StockCounted", {"product": "La2O3", "counted_kg": kg(outs[1][2])})
    # January reported in time (empty months too), then the clock passes the due date
    w.now = dt_us(Y, 2, 5, 10)
    for party in ("MINE01", "MINE02", "SEP01", "SEP02", "SMELT01", "EXPO01", "RECY01"):
        w.report(party, "2024-01", 1, w.head_seq(party))
    w.now = dt_us(Y, 2, 11, 10)
    w.ok("SEP01", "StockCounted", {"lot": outs[1][0], "counted_kg": kg(outs[1][2])})
    assert codes(w) == []
    ps = ProjectionStore(w.url)
    try:
        q = queries.quota(ps, Y)
        used = {(r["party"], r["category"]): r["used_t"] for r in q["enterprises"]}
        assert used[("MINE01", "MINING_ROCK")] == "1"
        assert used[("MINE02", "MINING_IONIC")] == "1"
        assert used[("SEP01", "SEPARATION")] == "1.94"    # output basis: 97 % of 2 t
        assert used[("SEP02", "SEPARATION")] == "0.96"    # imported monazite counts against separation
        assert {r["group"]: r["used_t"] for r in q["groups"] if r["category"] == "SEPARATION"} == {"GRP01": "1.94"}
    finally:
        ps.close()


# --- 1. designation ----------------------------------------------------------------------------

def test_mine_not_designated_at_that_time(w):
    w.register("MINE09", ["MINE"], valid_from="2024-03-01T00:00:00Z")
    issue(w, "MINE09", 1, rock="10")
    p = w.produce("MINE09", "M9-1", 1_000_000)
    f = only(w)
    assert summary(f) == ("NOT_DESIGNATED", "MINE09", ev(p))
    assert f["index"] == p.index and f["rule"] == "designation"
    # designated from March on: the same output then is clean
    w.now = dt_us(Y, 2, 2)
    w.report("MINE09", "2024-01", 1, 1)
    w.now = dt_us(Y, 3, 2)
    w.produce("MINE09", "M9-2", 1_000_000)
    assert [x["code"] for x in all_findings(w.url)] == ["NOT_DESIGNATED"]


def test_separation_while_designation_suspended(w):
    w.ok("MIIT", "PartyDesignationChanged", {"party": "SEP02", "roles": [], "valid_from": ts(w.now + HOUR),
                                             "reason": "licence suspended"})
    w.ok("SEP02", "ImportReceived", {"lot": "IMP-9", "customs_declaration_no": "2201009", "hs_code": "2612200000",
                                     "origin_country": "LA", "form": "MONAZITE", "product": "MONAZITE_CONCENTRATE",
                                     "dry_kg": "2000", "treo_pct": "50", "reo_kg": "1000"})
    w.now += 2 * HOUR
    r, _ = separate(w, "SEP02", [("IMP-9", 2_000_000, 1_000_000)], 970)
    assert [summary(f) for f in all_findings(w.url)] == [("NOT_DESIGNATED", "SEP02", ev(r))]


def test_recycler_takes_mineral_feed(w):
    lot = "MINE01-RC"
    w.produce("MINE01", lot, 500_000, product="BASTNAESITE_CONCENTRATE")
    line = (lot, "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    s = w.ship("MINE01", "RECY01", "T-RC", [line])
    r = w.receive("RECY01", "MINE01", "T-RC", [line])
    f = only(w)
    assert summary(f) == ("RECYCLER_MINERAL_FEED", "RECY01", ev(r, s))
    # separated oxides to a recycler are no mineral feed
    (_, _, _), ml = mined_lot(w)
    _, outs = separate(w, "SEP01", [(ml[0], ml[2], ml[3])], 970)
    w.ship("SEP01", "RECY01", "T-OX", [outs[0]])
    w.receive("RECY01", "SEP01", "T-OX", [outs[0]])
    assert len(all_findings(w.url)) == 1


# --- 2. quota -------------------------------------------------------------------------------------

def test_over_quota_enterprise(bare):
    """Judged on the business-time axis: over from the output's business time on, raised once;
    more quota issued later does not cure it, quota with an earlier business time (recorded
    late) does, and the finding is then marked resolved, not deleted."""
    w = bare
    t0 = w.now
    issue(w, "GRP01", 1, rock="100")
    a = suballoc(w, "MINE01", "MINING_ROCK", "10")
    w.now += HOUR
    w.produce("MINE01", "L1", 6_000_000)
    w.now += HOUR
    p = w.produce("MINE01", "L2", 5_000_000)       # 11 t against 10 t
    f = only(w)
    assert summary(f) == ("OVER_QUOTA", "MINE01", ev(p, a))
    assert f["params"]["level"] == "enterprise" and f["params"]["used_kg"] == "11000"
    assert f["params"]["limit_kg"] == "10000" and "resolved" not in f
    w.now += HOUR
    w.produce("MINE01", "L3", 1_000_000)          # still over: flagged once
    w.now += HOUR
    suballoc(w, "MINE01", "MINING_ROCK", "2")    # later quota does not make the earlier use lawful
    assert len(all_findings(w.url)) == 1 and "resolved" not in all_findings(w.url)[0]
    w.now += HOUR
    cure = suballoc(w, "MINE01", "MINING_ROCK", "2", at=t0)  # recorded late, in force from the start
    (f,) = all_findings(w.url)
    assert summary(f) == ("OVER_QUOTA", "MINE01", ev(p, a)) and f["resolved"]["index"] == cure.index


def _last(w, chain):
    rec = w.store.entry(chain, w.head_seq(chain))
    return rec


def test_over_quota_group(bare):
    w = bare
    w.register("MINE03", ["MINE"], group="GRP01")
    g = issue(w, "GRP01", 1, rock="20")
    issue(w, "MINE02", 1, rock="100")                 # national total stays ample
    suballoc(w, "MINE01", "MINING_ROCK", "12")
    s = suballoc(w, "MINE03", "MINING_ROCK", "12")   # the group passes on more than it holds
    w.produce("MINE01", "L1", 11_000_000)
    p = w.produce("MINE03", "L2", 11_000_000)       # members 22 t against the group's 20 t
    fs = all_findings(w.url)
    assert [summary(f) for f in fs] == [("SUBALLOCATION_ABOVE_BATCH", "GRP01", ev(s, g)),
                                        ("OVER_QUOTA", "MINE03", ev(p, g))]
    f = fs[1]
    assert f["params"]["level"] == "group" and f["params"]["holder"] == "GRP01"
    # the group's figures are not in the text an enterprise reads, only in params the server strips
    assert "20000" not in f["message"] and "22000" not in f["message"]
    assert set(f["params"]["confidential"]) == {"used_kg", "limit_kg"} and f["params"]["limit_kg"] == "20000"
    # and what an enterprise gets over HTTP (its findings, an append's answer) is without them
    from reledger.commands.server import redacted

    seen = redacted(f)
    assert "limit_kg" not in seen["params"] and "used_kg" not in seen["params"]
    assert seen["message"] == f["message"] and seen["params"]["level"] == "group" and "limit_kg" in f["params"]


def test_over_quota_national_with_imported_feed(bare):
    w = bare
    g = issue(w, "GRP01", 1, sep="10")
    a = suballoc(w, "SEP02", "SEPARATION", "30")     # to a plant outside the group, above the batch
    w.ok("SEP02", "ImportReceived", {"lot": "IMP-1", "customs_declaration_no": "2201001", "hs_code": "2612200000",
                                     "origin_country": "MM", "form": "MONAZITE", "product": "MONAZITE_CONCENTRATE",
                                     "dry_kg": "40000", "treo_pct": "50", "reo_kg": "20000"})
    r, _ = separate(w, "SEP02", [("IMP-1", 40_000_000, 20_000_000)], 970)  # 19.4 t of imported feed
    fs = all_findings(w.url)
    assert [summary(f) for f in fs] == [("SUBALLOCATION_ABOVE_BATCH", "GRP01", ev(a, g)),
                                        ("SUBALLOCATION_TO_NON_MEMBER", "GRP01", ev(a)),
                                        ("OVER_QUOTA", "SEP02", ev(r, a))]
    f = fs[2]
    assert f["params"]["level"] == "nation" and f["params"]["used_kg"] == "19400"
    # the nation's figures are confidential: not in the message, stripped from what the
    # enterprise reads (its findings over HTTP, an append's answer)
    from reledger.commands.server import redacted

    assert "19400" not in f["message"] and "19,400" not in f["message"] and "19.4" not in f["message"]
    seen = redacted(f)
    assert "used_kg" not in seen["params"] and "limit_kg" not in seen["params"] and seen["params"]["level"] == "nation"


def test_secondary_feed_not_counted(bare):
    w = bare
    w.register("SEPREC", ["SEPARATION", "RECYCLER"])
    issue(w, "SEPREC", 1, sep="10")
    w.ok("SEPREC", "SecondaryFeedReceived", {"lot": "SCR-1", "scrap_type": "MAGNET_SCRAP", "source": "Ningbo",
                                             "kg": "30000", "treo_pct": "30", "reo_kg": "9000"})
    w.ok("SEPREC", "ImportReceived", {"lot": "IMP-1", "customs_declaration_no": "2201001", "hs_code": "2612200000",
                                      "origin_country": "MM", "form": "MIXED_CARBONATE", "product": "MIXED_CARBONATE",
                                      "dry_kg": "2000", "treo_pct": "50", "reo_kg": "1000"})
    separate(w, "SEPREC", [("SCR-1", 30_000_000, 9_000_000), ("IMP-1", 2_000_000, 1_000_000)], 970)
    assert codes(w) == []
    ps = ProjectionStore(w.url)
    try:
        row = [r for r in queries.quota(ps, Y)["enterprises"] if r["party"] == "SEPREC"][0]
        assert row["used_t"] == "0.97"  # only the imported tenth of 9.7 t
    finally:
        ps.close()


# --- 3. stock -----------------------------------------------------------------------------------

def test_negative_stock(w):
    p = w.produce("MINE01", "L1", 500_000)
    s = w.ship("MINE01", "SEP01", "T1", [("L1", "BASTNAESITE_CONCENTRATE", 1_500_000, 750_000)])
    assert [summary(f) for f in all_findings(w.url)] == [("NEGATIVE_STOCK", "MINE01", ev(s, p))]


def test_stock_count_difference(w):
    (p, s, r), line = mined_lot(w)
    c = w.ok("SEP01", "StockCounted", {"lot": line[0], "counted_kg": kg(line[2] * 11 // 10)})
    f = only(w)
    assert summary(f) == ("STOCK_COUNT_DIFFERENCE", "SEP01", ev(c, r))
    assert f["params"]["book_kg"] == kg(line[2])
    w.ok("SEP01", "StockCounted", {"lot": line[0], "counted_kg": kg(line[2] + line[2] // 1000)})  # within 0.5 %
    assert len(all_findings(w.url)) == 1


# --- 4. mass balance and yield -------------------------------------------------------------------

@pytest.mark.parametrize("ore,yield_pm,losses_pm,expected", [
    ("ROCK", 970, None, []),
    ("ROCK", 970, 0, ["MASS_IMBALANCE"]),                 # 3 % unaccounted for
    ("ROCK", 1003, 0, ["YIELD_ABOVE_100"]),               # within the balance tolerance, above 100 %
    ("ROCK", 1040, 0, ["MASS_IMBALANCE", "YIELD_ABOVE_100"]),
    ("ROCK", 870, None, ["YIELD_BELOW_BAND"]),            # band 96 % x 92 % = 88.32 % for concentrate feed
    ("ROCK", 884, None, []),
    ("IONIC", 940, None, []),                             # ion-adsorption concentrate is separated directly: 94 %
    ("IONIC", 930, None, ["YIELD_BELOW_BAND"]),
])
def test_mass_balance_and_yield(w, ore, yield_pm, losses_pm, expected):
    mine = "MINE01" if ore == "ROCK" else "MINE02"
    _, line = mined_lot(w, mine, "SEP01", ore=ore)
    r, _ = separate(w, "SEP01", [(line[0], line[2], line[3])], yield_pm, losses_pm)
    assert sorted(codes(w)) == [(c, "SEP01", ev(r)) for c in expected]


# --- 5. flow completeness ----------------------------------------------------------------------

def test_shipment_not_received_within_n_days(w):
    """Business times decide: a receipt dated within 30 days of the shipment may lawfully be
    entered up to its month's report deadline, so the ledger says "not received" only after the
    deadline of the month in which the 30 days ran out (here 24:00 CST on 10 March)."""
    shipped_at = w.now
    w.produce("MINE01", "L1", 500_000)
    line = ("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    s = w.ship("MINE01", "SEP01", "T1", [line])
    w.now = dt_us(Y, 2, 5)
    w.report("MINE01", "2024-01", 1, w.head_seq("MINE01"))
    w.now = dt_us(Y, 3, 10, 15, 59)
    w.produce("MINE01", "L2", 100_000)
    assert codes(w) == []
    w.now = dt_us(Y, 3, 10, 16)
    later = w.produce("MINE01", "L3", 100_000)
    f = only(w)
    assert summary(f) == ("SHIPMENT_NOT_RECEIVED", "MINE01", ev(s)) and f["index"] == later.index
    assert f["params"] == {"buyer": "SEP01", "transfer_id": "T1", "receipt_within_days": 30}
    assert f["occurred_at"] == ts(shipped_at + 30 * DAY)
    # a late receipt does not raise it again
    w.receive("SEP01", "MINE01", "T1", [line])
    assert len(all_findings(w.url)) == 1


def test_shipment_and_receipt_entered_late_together_are_not_flagged(w):
    """Near miss: last month's flows entered on the 8th (lawful, Decree 71 Art. 10): nothing."""
    w.now = dt_us(Y, 2, 8, 3)
    jan = dt_us(Y, 1, 3, 2)
    w.produce("MINE01", "L1", 500_000, at=jan)
    line = ("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    w.ship("MINE01", "SEP01", "T1", [line], at=jan + HOUR)
    w.ok("SEP01", "TransferReceived", {"transfer_id": "T1", "seller": "MINE01", "received_at": ts(jan + 5 * HOUR),
                                       "lines": [{"lot": "L1", "product": line[1], "kg": kg(line[2]),
                                                  "reo_kg": kg(line[3])}]}, jan + 5 * HOUR)
    w.now = dt_us(Y, 2, 9)
    w.report("MINE01", "2024-01", 1, w.head_seq("MINE01"))
    w.report("SEP01", "2024-01", 1, w.head_seq("SEP01"))
    w.now = dt_us(Y, 5, 1)
    w.produce("MINE02", "I1", 100_000, ore="IONIC", product="IONIC_CONCENTRATE")
    assert codes(w) == []


def test_receipt_after_n_days_is_flagged_on_arrival(w):
    w.produce("MINE01", "L1", 500_000)
    line = ("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    s = w.ship("MINE01", "SEP01", "T1", [line])
    w.now += 31 * DAY
    r = w.receive("SEP01", "MINE01", "T1", [line])
    f = only(w)
    assert summary(f) == ("SHIPMENT_NOT_RECEIVED", "MINE01", ev(r, s)) and f["index"] == r.index


def test_receipt_mismatch(w):
    w.produce("MINE01", "L1", 500_000)
    line = ("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    s = w.ship("MINE01", "SEP01", "T1", [line])
    r = w.receive("SEP01", "MINE01", "T1", [("L1", "BASTNAESITE_CONCENTRATE", 990_000, 495_000)])
    assert codes(w) == [("RECEIPT_MISMATCH", "SEP01", ev(r, s))]


def test_receipt_without_shipment(w):
    """The write path refuses it; written past the command API (another writer, a restored
    database) the projections flag it."""
    s = w.signers["SEP01"]
    body = {"transfer_id": "NOPE", "seller": "MINE01", "received_at": ts(w.now),
            "lines": [{"lot": "L1", "product": "BASTNAESITE_CONCENTRATE", "kg": "1000", "reo_kg": "500"}]}
    with pytest.raises(CommandError) as err:
        w.api.submit([s.peek("TransferReceived", body, ts(w.now))])
    assert err.value.code == "unknown_reference"
    entry = s.sign("TransferReceived", body, ts(w.now))
    r = w.store.append([entry])[0]
    assert codes(w) == [("RECEIPT_WITHOUT_SHIPMENT", "SEP01", ev(r))]


def test_receipt_twice(w):
    """Two writers both recording the receipt (the command API's state check raced): flagged."""
    w.produce("MINE01", "L1", 500_000)
    line = ("L1", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)
    s = w.ship("MINE01", "SEP01", "T1", [line])
    r1 = w.receive("SEP01", "MINE01", "T1", [line])
    body = {"transfer_id": "T1", "seller": "MINE01", "received_at": ts(w.now),
            "lines": [{"lot": "L1", "product": "BASTNAESITE_CONCENTRATE", "kg": "1000", "reo_kg": "500"}]}
    r2 = w.store.append([w.signers["SEP01"].sign("TransferReceived", body, ts(w.now))])[0]
    assert codes(w) == [("RECEIPT_DUPLICATE", "SEP01", ev(r2, r1, s))]


def test_untraceable_lot(w):
    s = w.ship("MINE01", "SEP01", "T1", [("NEVER-MADE", "BASTNAESITE_CONCENTRATE", 1_000_000, 500_000)])
    assert sorted(codes(w)) == [("NEGATIVE_STOCK", "MINE01", ev(s)), ("UNTRACEABLE_LOT", "MINE01", ev(s))]
    ps = ProjectionStore(w.url)
    try:
        from reledger.projections import flowgraph

        assert flowgraph.trace(ps, "NEVER-MADE", "up")["traceable"] is False
    finally:
        ps.close()


# --- 6. reporting -------------------------------------------------------------------------------

def test_report_missing(w):
    p = w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 10, 15, 59)   # 23:59 CST on the 10th: still in time
    w.produce("MINE02", "I1", 100_000, ore="IONIC", product="IONIC_CONCENTRATE")
    assert codes(w) == []
    w.now = dt_us(Y, 2, 10, 16)       # 24:00 CST
    later = w.produce("MINE02", "I2", 100_000, ore="IONIC", product="IONIC_CONCENTRATE")
    f = only(w)
    assert summary(f) == ("REPORT_MISSING", "MINE01", ev(p)) and f["index"] == later.index
    assert f["params"]["month"] == "2024-01" and f["params"]["report_due_day"] == 10
    assert f["occurred_at"].startswith("2024-02-10T16:00:00")


def test_report_late(w):
    p = w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 12)
    w.produce("MINE02", "I1", 100_000, ore="IONIC", product="IONIC_CONCENTRATE")  # raises REPORT_MISSING
    r = w.report("MINE01", "2024-01", 1, w.head_seq("MINE01") - 0)
    fs = all_findings(w.url)
    # one fact, one finding: the late report resolves its REPORT_MISSING; REPORT_LATE stands
    assert [summary(f) for f in fs] == [("REPORT_MISSING", "MINE01", ev(p)), ("REPORT_LATE", "MINE01", ev(r))]
    assert fs[0]["resolved"]["index"] == r.index and "resolved" not in fs[1]


def test_report_digest_mismatch(w):
    w.produce("MINE01", "L1", 500_000)
    w.produce("MINE01", "L2", 500_000)
    w.now = dt_us(Y, 2, 5)
    r = w.report("MINE01", "2024-01", 1, 1)  # right digest of seq 1 only: fine
    assert codes(w) == []
    bad = w.report("MINE01", "2024-01", 1, 2, digest=bytes(32))  # past the API (which may refuse it)
    assert codes(w) == [("REPORT_DIGEST_MISMATCH", "MINE01", ev(bad))]
    assert r.index < bad.index


def test_reports_in_time_including_empty_months(w):
    w.produce("MINE01", "L1", 500_000)
    w.now = dt_us(Y, 2, 3)
    w.report("MINE01", "2024-01", 1, w.head_seq("MINE01"))
    w.report("MINE02", "2024-01", None, None)   # nothing that month: no range, the digest of nothing
    w.now = dt_us(Y, 3, 11)
    w.produce("MINE01", "L2", 500_000)
    assert codes(w) == []


# --- 7. timeliness --------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_days,expected", [(15, []), (16, ["BACKDATED"]), (-1, []), (-2, ["FUTURE_DATED"])])
def test_backdated_and_future_dated(w, delay_days, expected):
    w.now = dt_us(Y, 1, 25, 12)
    p = w.produce("MINE01", "L1", 500_000, at=w.now - delay_days * DAY)
    f = all_findings(w.url)
    assert [summary(x) for x in f] == [(c, "MINE01", ev(p)) for c in expected]
    if expected == ["BACKDATED"]:
        assert f[0]["params"]["days"] == 16


@pytest.mark.parametrize("recorded,expected", [
    ((2, 10, 15, 59), []),              # last month's flow, entered by 24:00 CST on the 10th: on time
    ((2, 10, 16, 0), ["BACKDATED"]),    # after the deadline and more than 15 days late
])
def test_reporting_window_in_legal_time(w, recorded, expected):
    w.now = dt_us(Y, *recorded)
    p = w.produce("MINE01", "L1", 500_000, at=dt_us(Y, 1, 20))
    assert codes(w) == [(c, "MINE01", ev(p)) for c in expected]


def test_quota_cut_by_a_penalty(bare):
    """A QuotaReduced lowers the limits at enterprise and national level (and group level for a
    group's indicator): use that was within the quota is over it after the cut."""
    w = bare
    a = issue(w, "SEP02", 1, sep="10")
    w.ok("SEP02", "ImportReceived", {"lot": "IMP-1", "customs_declaration_no": "2201001", "hs_code": "2612200000",
                                     "origin_country": "MM", "form": "MONAZITE", "product": "MONAZITE_CONCENTRATE",
                                     "dry_kg": "16000", "treo_pct": "50", "reo_kg": "8000"})
    sep, _ = separate(w, "SEP02", [("IMP-1", 16_000_000, 8_000_000)], 1000, 0)   # 8 t of 10 t
    assert codes(w) == []
    v = w.ok("MIIT", "ViolationFound", {"party": "SEP02", "rule": "FLOW", "article": "Decree 785 Art. 25",
                                        "description": "flow records incomplete", "evidence": [w.ref("SEP02", 2)]})
    pen = w.ok("MIIT", "PenaltyImposed", {"party": "SEP02", "violation": w.ref("MIIT", v.seq), "decision_no": "P-1",
                                          "article": "Decree 71 Art. 14", "fine_cny": "50000",
                                          "next_year_cut_t_reo": "3"})
    cut = w.ok("MIIT", "QuotaReduced", {"year": Y, "holder": "SEP02", "category": "SEPARATION", "t_reo": "3",
                                        "penalty": w.ref("MIIT", pen.seq)})
    fs = all_findings(w.url)
    assert sorted((f["params"]["level"], summary(f)) for f in fs) == [
        ("enterprise", ("OVER_QUOTA", "SEP02", ev(cut, a))),
        ("nation", ("OVER_QUOTA", "SEP02", ev(cut, a))),
    ]
    ps = ProjectionStore(w.url)
    try:
        q = queries.quota(ps, Y)
        assert q["nation"][0]["remaining_t"] == "-1" and q["enterprises"][0]["over"] is True
        credit = queries.credit(ps, "SEP02")["records"]
        assert [(c["kind"], c["next_year_cut_t"]) for c in credit] == [("VIOLATION", "0"), ("PENALTY", "3")]
    finally:
        ps.close()


def test_recycler_imports_mineral_feed(w):
    r = w.ok("RECY01", "ImportReceived", {"lot": "IMP-R", "customs_declaration_no": "2201077",
                                          "hs_code": "2612200000", "origin_country": "MM", "form": "MONAZITE",
                                          "dry_kg": "2000", "treo_pct": "50", "reo_kg": "1000"})
    w.ok("RECY01", "ImportReceived", {"lot": "IMP-S", "customs_declaration_no": "2201078",
                                      "hs_code": "2846901100", "origin_country": "JP", "form": "SEPARATED_OXIDE",
                                      "product": "Nd2O3", "dry_kg": "100", "treo_pct": "99", "reo_kg": "99"})
    assert codes(w) == [("RECYCLER_MINERAL_FEED", "RECY01", ev(r))]


def test_input_basis_and_group_membership(bare):
    """Separation counted on the indicator's basis (INPUT: REO consumed); use after a member left
    its group does not count against the group."""
    w = bare
    g = issue(w, "GRP01", 1, rock="100", sep="3")
    w.ok("MIIT", "QuotaBatchIssued", {"year": Y, "batch_no": 1, "document_no": "Q-SEP02", "holder": "SEP02",
                                      "mining_rock_t_reo": "0", "mining_ionic_t_reo": "0", "separation_t_reo": "50",
                                      "basis": "INPUT"})
    suballoc(w, "SEP01", "SEPARATION", "10")
    suballoc(w, "MINE01", "MINING_ROCK", "50")
    _, line = mined_lot(w, "MINE01", "SEP02", reo_g=2_000_000)
    separate(w, "SEP02", [(line[0], line[2], line[3])], 970)
    _, line1 = mined_lot(w, "MINE01", "SEP01", reo_g=2_000_000)
    separate(w, "SEP01", [(line1[0], line1[2], line1[3])], 970)              # 1.94 t of the group's 3 t
    w.ok("MIIT", "GroupMembershipChanged", {"party": "SEP01", "group": "GRP01", "action": "LEFT",
                                            "effective_from": ts(w.now + HOUR)})
    w.now += 2 * HOUR
    _, line2 = mined_lot(w, "MINE01", "SEP01", reo_g=2_000_000)
    separate(w, "SEP01", [(line2[0], line2[2], line2[3])], 970)              # no longer the group's
    above = ("SUBALLOCATION_ABOVE_BATCH", "GRP01")   # 10 t of separation passed on from a 3 t batch
    assert [c[:2] for c in codes(w)] == [above]
    ps = ProjectionStore(w.url)
    try:
        q = queries.quota(ps, Y)
        used = {(r["party"], r["category"]): r["used_t"] for r in q["enterprises"]}
        assert used[("SEP02", "SEPARATION")] == "2"                           # input REO
        assert used[("SEP01", "SEPARATION")] == "3.88"
        grp = {r["category"]: r["used_t"] for r in q["groups"]}
        assert grp["SEPARATION"] == "1.94"
    finally:
        ps.close()
    # back in the group: the next batch puts the group over its 3 t
    w.ok("MIIT", "GroupMembershipChanged", {"party": "SEP01", "group": "GRP01", "action": "JOINED",
                                            "effective_from": ts(w.now + HOUR)})
    w.now += 2 * HOUR
    _, line3 = mined_lot(w, "MINE01", "SEP01", reo_g=2_000_000)
    r, _ = separate(w, "SEP01", [(line3[0], line3[2], line3[3])], 970)
    fs = [f for f in all_findings(w.url) if f["code"] != above[0]]
    assert [(summary(f), f["params"]["level"]) for f in fs] == [(("OVER_QUOTA", "SEP01", ev(r, g)), "group")]


def test_findings_in_the_submitters_receipt(w):
    """Through the command API's findings hook, a receipt lists the findings its entry raised
    about the submitter (and not a time-driven finding about another party)."""
    from reledger.commands.api import CommandAPI
    from reledger.projections.hooks import ProjectionFindings

    ps = ProjectionStore(w.url)
    w.api.close()
    w.api = CommandAPI(w.store, findings_hook=ProjectionFindings(ps))
    try:
        w.produce("MINE01", "L1", 500_000)
        s = w.ship("MINE01", "SEP01", "T1", [("L1", "BASTNAESITE_CONCENTRATE", 1_500_000, 750_000)])
        assert [f["code"] for f in s.findings] == ["NEGATIVE_STOCK"]
        w.now = dt_us(Y, 3, 11)
        r = w.ok("SEP01", "StockCounted", {"lot": "NOTHING", "counted_kg": "0"})
        assert r.findings == ()  # MINE01's overdue shipment was raised on this arrival, but is not SEP01's
        assert [f["code"] for f in all_findings(w.url)] == ["NEGATIVE_STOCK", "SHIPMENT_NOT_RECEIVED",
                                                           "REPORT_MISSING"]
    finally:
        ps.close()
