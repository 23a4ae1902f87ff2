"""A hypothesis property: the rule engine's quota and stock findings equal those of a simple
reference model written from DOMAIN.md ("Business time decides"; "Quota levels": a party's
output counts to the group it belongs to at the output's business time), over random small
ledgers with late entries, corrections and group membership changes, at every log prefix
(as-of) and for the business times involved (valid-at).

The engine (projections.model.Projector) is fed signed entries directly: it is a pure function
of the log, with no storage in between (the stories of test_rules*.py run on both backends)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.projections.model import Projector, RESOLVED
from projection_helpers import DAY, dt_us, kg, ts

T0 = dt_us(2024, 1, 1)


def _signers():
    reg = ChainSigner(SigningKey.from_seed("MIIT", bytes(32)))
    mine = ChainSigner(SigningKey.from_seed("MINE09", bytes([1]) * 32))
    ck = SigningKey.from_seed("MIIT", bytes([2]) * 32, "checkpoint")
    return reg, mine, ck


def reference_over(events) -> bool:
    """DOMAIN.md: over quota iff at some business time t, the use with business time <= t exceeds
    the quota with business time <= t (never below zero)."""
    for t in sorted({e[0] for e in events}):
        used = sum(e[1] for e in events if e[0] <= t)
        limit = sum(e[2] for e in events if e[0] <= t)
        if used > max(limit, 0):
            return True
    return False


def reference_group_at(membership, t):
    """The group of a party at business time t: the membership change with the latest effective
    time <= t (a later entry winning a tie); None before any."""
    group, best = None, None
    for since, g in membership:
        if since <= t and (best is None or since >= best):
            group, best = g, since
    return group


def reference_group_over(uses, limits, membership, group) -> bool:
    """Over quota at group level iff at some business time t the uses with business time <= t of
    outputs that belong to ``group`` at their own business time exceed its quota issued by t."""
    for t in sorted({e[0] for e in uses} | {e[0] for e in limits}):
        used = sum(g for occ, g in uses if occ <= t and reference_group_at(membership, occ) == group)
        limit = sum(g for occ, g in limits if occ <= t)
        if used > max(limit, 0):
            return True
    return False


def reference_negative(events) -> bool:
    for t in sorted({e[0] for e in events}):
        if sum(e[1] for e in events if e[0] <= t) < 0:
            return True
    return False


actions = st.lists(st.tuples(st.sampled_from(["issue", "produce", "ship", "ship", "correct", "gissue", "join", "leave"]),
                             st.integers(1, 20), st.integers(1, 9)), min_size=1, max_size=14)


def random_ledger(acts, reg, mine, ck):
    """The entries of the random ledger ``acts`` describes, signed, in log order: (record time,
    signed entry, act). ``act`` is None for the genesis and the registrations, else (kind,
    business time, amount, i, extra): for "produce" extra is the number of the output (the first
    is lot L), for "correct" the place, in the list of the mine's outputs and shipments not yet
    corrected, of the entry it corrects (taken out of that list). A correction with nothing to
    correct yields nothing. Record times are in order; business times vary."""
    for e in genesis_entries(reg, ck, name="Ministry", origin="t", at=ts(T0)):
        yield T0, e, None
    yield T0, reg.sign("PartyRegistered", {"party": "MINE09", "name": "M", "roles": ["MINE"], "province": "X",
                                           "valid_from": ts(T0)}, ts(T0)), None
    yield T0, reg.sign("KeyAuthorized", key_authorized_body(mine.key, ts(T0)), ts(T0)), None
    yield T0, reg.sign("PartyRegistered", {"party": "GRP09", "name": "G", "roles": ["GROUP"], "province": "X",
                                           "valid_from": ts(T0)}, ts(T0)), None
    entries = []  # the mine's outputs and shipments not yet corrected
    produced = batch = 0
    for i, (kind, day, amount) in enumerate(acts):
        rec = T0 + (i + 1) * 3600 * 1_000_000 + 30 * DAY
        occ = T0 + day * DAY
        extra = None
        if kind in ("issue", "gissue"):
            batch += 1
            signed = reg.sign("QuotaBatchIssued", {"year": 2024, "batch_no": batch, "document_no": f"Q{batch}",
                                                   "holder": "MINE09" if kind == "issue" else "GRP09",
                                                   "mining_rock_t_reo": str(amount), "mining_ionic_t_reo": "0",
                                                   "separation_t_reo": "0"}, ts(occ))
        elif kind == "produce":
            produced += 1
            g = amount * 1_000_000
            signed = mine.sign("MineralProductProduced", {"lot": "L" if produced == 1 else f"L{produced}",
                                                          "ore_type": "ROCK", "wet_kg": kg(2 * g), "dry_kg": kg(2 * g),
                                                          "treo_pct": "50", "reo_kg": kg(g)}, ts(occ))
            entries.append(signed)
            extra = produced
        elif kind in ("join", "leave"):
            # recorded now, effective at a business time that may be earlier than outputs counted
            signed = reg.sign("GroupMembershipChanged", {"party": "MINE09", "group": "GRP09",
                                                         "action": "JOINED" if kind == "join" else "LEFT",
                                                         "effective_from": ts(occ)}, ts(occ))
        elif kind == "ship":
            g = amount * 100_000
            signed = mine.sign("TransferShipped", {"transfer_id": f"T{i}", "buyer": "MIIT", "vat_invoice_no": "1",
                                                   "shipped_at": ts(occ), "lines": [
                                                       {"lot": "L", "product": "RE_CONCENTRATE", "kg": kg(g),
                                                        "reo_kg": kg(g // 2)}]}, ts(occ))
            entries.append(signed)
        elif kind == "correct" and entries:
            # DID_NOT_OCCUR: from now on the corrected entry counts nowhere
            extra = amount % len(entries)
            corrected = entries.pop(extra)
            signed = mine.sign("CorrectionRecorded", {"corrects": {"chain": "MINE09", "seq": corrected.entry.seq,
                                                                   "hash": corrected.hash},
                                                      "reason": "DID_NOT_OCCUR", "explanation": "x"}, ts(rec))
        else:
            continue
        yield rec, signed, (kind, occ, amount, i, extra)


@settings(max_examples=80, deadline=None)
@given(actions)
def test_engine_equals_reference_model(acts):
    reg, mine, ck = _signers()
    p = Projector()
    uses: list[tuple[int, int]] = []          # the mine's counted outputs (business time, g)
    group_limits: list[tuple[int, int]] = []  # GRP09's quota (business time, g)
    membership: list[tuple[int, str | None]] = []  # the mine's, in log order
    open_group = False
    quota_events: list[tuple[int, int, int]] = []
    stock_events: list[tuple[int, int]] = []
    # the model's events of each of the mine's outputs and shipments not yet corrected, in the
    # order random_ledger keeps them: (its quota events, its stock events, its uses)
    mine_entries: list[tuple[list, list, list]] = []
    open_quota = open_stock = False
    for index, (rec, signed, act) in enumerate(random_ledger(acts, reg, mine, ck)):
        d = p.apply(index, rec, signed)
        if act is None:
            continue
        kind, occ, amount, i, extra = act
        if kind == "issue":
            quota_events.append((occ, 0, amount * 1_000_000))
        elif kind == "produce":
            g = amount * 1_000_000
            quota_events.append((occ, g, 0))
            uses.append((occ, g))
            if extra == 1:  # the stock model follows lot L
                stock_events.append((occ, 2 * g))
            mine_entries.append(([quota_events[-1]], stock_events[-1:] if extra == 1 else [], [uses[-1]]))
        elif kind == "gissue":
            group_limits.append((occ, amount * 1_000_000))
        elif kind in ("join", "leave"):
            if kind == "join":
                membership.append((occ, "GRP09"))
            elif reference_group_at(membership, occ) == "GRP09":
                membership.append((occ, None))
        elif kind == "ship":
            stock_events.append((occ, -amount * 100_000))
            mine_entries.append(([], [stock_events[-1]], []))
        elif kind == "correct":
            qs, ss, us_ = mine_entries.pop(extra)
            for e in qs:
                quota_events.remove(e)
            for e in ss:
                stock_events.remove(e)
            for e in us_:
                uses.remove(e)
        for f in d.findings:
            level = f.params.get("level")
            if f.code == "OVER_QUOTA" and level == "enterprise":
                open_quota = True
            elif f.code == "OVER_QUOTA" and level == "group" and f.params.get("holder") == "GRP09":
                open_group = True
            elif f.code == "NEGATIVE_STOCK":
                open_stock = True
            elif f.code == RESOLVED:
                fact = f.params["resolves"]["fact"]
                if fact.startswith("OVER_QUOTA/enterprise"):
                    open_quota = False
                elif fact.startswith("OVER_QUOTA/group/2024/GRP09"):
                    open_group = False
                elif fact.startswith("NEGATIVE_STOCK"):
                    open_stock = False
        # at every prefix (as of this entry): the engine's open findings are the reference's
        assert open_quota == reference_over(quota_events), (i, quota_events)
        assert open_stock == reference_negative(stock_events), (i, stock_events)
        assert open_group == reference_group_over(uses, group_limits, membership, "GRP09"), \
            (i, uses, group_limits, membership)
