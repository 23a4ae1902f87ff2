"""Replay and audit: ``reledger.replay.history.replay_party`` against the projections, the demo's seeded
violations, filters, and tampered signatures. On SQLite and PostgreSQL.

The ledger is the demo at small scale (about a thousand entries with real signatures, every
entry type, and the seeded violations of ``reledger.demo.run.SEEDED``). The demo runs once per
session on SQLite; the PostgreSQL ledger is the same log appended entry for entry into a fresh
schema with the same record times (the demo itself takes about 30 s on PostgreSQL, as every
small-scale append is its own transaction followed by a projection catch-up); the clone is
checked to be identical (same signed checkpoint notes, hence the same Merkle roots).
:func:`demo_ledger` and :func:`clone_ledger` are shared with test_bundle.py and test_monthly.py.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PG_URL, _with_schema, drop_schema, require_pg
from helpers import drop_triggers, populated_ledger, sql
from reledger.ledger import encoding
from reledger.ledger.cosignature import check_log_pq, log_signer, signature_lines
from reledger.ledger.entry import ENTRY_TAG, SignedEntry
from reledger.ledger.keys import SigningKey
from reledger.storage.store import LedgerStore
from reledger.projections import queries
from reledger.projections.model import FLOW_TYPES, RULE_PARAMETERS, month_of, report_due_us
from reledger.projections.store import ProjectionStore
from reledger.replay.history import replay_party

YEAR = 2024
DAY = 86_400_000_000

# --- the shared demo ledger ----------------------------------------------------------------

_DEMOS: dict[str, dict[str, Any]] = {}


def _build_sqlite_demo(tmp: Path) -> dict[str, Any]:
    from reledger.demo.run import Demo

    url = f"sqlite:///{tmp / 'ledger.db'}"
    demo = Demo(url, tmp, 11, "small", log=lambda m: None)
    demo.run()
    demo.projections.catch_up()
    parties = {p.id: p.kind for p in demo.cast_list}
    demo.projections.close()
    demo.store.close()
    with LedgerStore(url, create=False) as s:
        size = s.size()
        checkpoints = s.checkpoints()
    return {"url": url, "dir": tmp, "keys": tmp / "keys", "seeded": demo.seeded_where, "parties": parties,
            "size": size, "checkpoints": checkpoints}


def clone_ledger(src: dict[str, Any], dst_url: str, *, projections: bool = True) -> str:
    """Append the demo's log, entry for entry with the same record times, into ``dst_url``, and
    sign the same checkpoints: the copy is byte-identical (same roots, same checkpoint texts and
    Ed25519 signatures; the log's ML-DSA-44 lines are randomized, so they are only checked to
    verify)."""

    with LedgerStore(src["url"], create=False) as s:
        records = list(s.records())
    op = SigningKey.read(src["keys"] / "operator.key")
    signer = log_signer(op)
    assert signer.mldsa is not None  # the demo's checkpoints are post-quantum too
    notes = {size: note for size, _, note in src["checkpoints"]}
    now = [0]
    with LedgerStore(dst_url, clock=lambda: now[0]) as d:
        for rec_us, group in groupby(records, key=lambda r: r.recorded_us):
            now[0] = rec_us
            size = d.size()
            if size in notes and not _same_note(d.checkpoint(signer), notes[size], signer):
                raise AssertionError(f"the clone's checkpoint of size {size} differs")
            for result in d.append_groups([[r.envelope] for r in group]):
                assert not isinstance(result, Exception), result
        if d.size() in notes:
            assert _same_note(d.checkpoint(signer), notes[d.size()], signer)
        got = d.checkpoints()
        assert [(sz, root) for sz, root, _ in got] == [(sz, root) for sz, root, _ in src["checkpoints"]]
        assert all(_same_note(a[2], b[2], signer) for a, b in zip(got, src["checkpoints"]))
    if projections:
        ps = ProjectionStore(dst_url)
        try:
            while ps.catch_up(limit=250):  # in steps, as a follower would
                pass
        finally:
            ps.close()
    return dst_url


def _same_note(a: bytes, b: bytes, signer) -> bool:
    """Two checkpoint notes of the log are the same: the same text and the same Ed25519 signature
    line, and each carries an ML-DSA-44 line of the log's key that verifies."""
    pq = signer.mldsa.verifier()
    ta, la = signature_lines(a)
    tb, lb = signature_lines(b)
    ed_a = [ln for ln in la if ln[1] == signer.key_id]
    ed_b = [ln for ln in lb if ln[1] == signer.key_id]
    if ta != tb or ed_a != ed_b or len(ed_a) != 1:
        return False
    for text, lines in ((ta, la), (tb, lb)):
        ml = [ln for ln in lines if ln[1] == pq.key_id]
        if len(ml) != 1 or len(lines) != 2:
            return False
    v = signer.verifier()
    for note in (a, b):
        check_log_pq(note, [v], [v])
    return True


def new_pg_url(config) -> str:
    require_pg()
    schema = "t_" + uuid.uuid4().hex[:12]
    config.add_cleanup(lambda: drop_schema(schema))
    return _with_schema(PG_URL, schema)


def demo_ledger(backend: str, request) -> dict[str, Any]:
    """The small demo ledger on ``backend`` (built once per session, read-only for tests)."""
    if "sqlite" not in _DEMOS:
        tmp = request.getfixturevalue("tmp_path_factory").mktemp("replay-demo")
        _DEMOS["sqlite"] = _build_sqlite_demo(tmp)
    if backend == "postgres" and "postgres" not in _DEMOS:
        url = clone_ledger(_DEMOS["sqlite"], new_pg_url(request.config))
        _DEMOS["postgres"] = {**_DEMOS["sqlite"], "url": url}
    return _DEMOS[backend]


def private_copy(backend: str, request) -> dict[str, Any]:
    """A copy of the demo ledger that a test may append to."""
    src = demo_ledger("sqlite", request)
    if backend == "sqlite":
        tmp = request.getfixturevalue("tmp_path")
        url = f"sqlite:///{tmp / 'copy.db'}"
    else:
        url = new_pg_url(request.config)
    return {**src, "url": clone_ledger(src, url)}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def demo(request) -> dict[str, Any]:
    return demo_ledger(request.param, request)


# --- independent look-ups in the raw log ---------------------------------------------------------

def chain_entries(url: str, party: str) -> list[tuple[Any, SignedEntry]]:
    with LedgerStore(url, create=False) as s:
        return [(r, SignedEntry.parse(r.envelope)) for r in s.chain_records(party)]


def all_records(url: str) -> list:
    with LedgerStore(url, create=False) as s:
        return list(s.records())


def us_of(text: str) -> int:
    return encoding.time_to_micros(encoding.parse_time(text))


def ref_of(rec, s: SignedEntry) -> dict[str, Any]:
    return {"chain": s.entry.chain, "seq": s.entry.seq, "hash": s.hash.hex(), "index": rec.index}


def enterprises(demo: dict) -> list[str]:
    return [p for p, kind in demo["parties"].items() if kind not in ("group", "auditor")]


# --- replay state equals the projections at any point ------------------------------------------

def _projection_state(ps: ProjectionStore, party: str, n: int, years: set[int]):
    point = queries.Point(n)
    stock = {row["lot"]: {"product": row["product"], "kg": row["kg"], "reo_kg": row["reo_kg"]}
             for row in queries.stock(ps, party, point)["lots"]}
    used = {}
    for year in years:
        for row in queries.quota(ps, year, point)["enterprises"]:
            if row["party"] == party and Decimal(row["used_t"]) != 0:
                used[f"{year} {row['category']}"] = row["used_t"]
    found = sorted((f["index"], f["code"]) for f in queries.findings(ps, party, point=point)["findings"])
    return stock, used, found


def assert_replay_matches(url: str, ps: ProjectionStore, party: str, as_of: int):
    r = replay_party(url, party, as_of=as_of)
    assert r.size == as_of
    assert all(s.index < as_of for s in r.steps)
    years = {YEAR, YEAR + 1} | {int(k.split()[0]) for s in r.steps for k in s.quota_used}
    stock, used, found = _projection_state(ps, party, as_of, years)
    last = r.steps[-1] if r.steps else None
    assert (last.stock if last else {}) == stock, (party, as_of)
    assert {k: v for k, v in (last.quota_used if last else {}).items() if Decimal(v) != 0} == used, (party, as_of)
    assert sorted((f["index"], f["code"]) for s in r.steps for f in s.findings) == found, (party, as_of)
    assert r.signatures_invalid == 0
    assert r.signatures_valid == sum(1 for s in r.steps if s.kind == "entry")
    return r


def test_replay_at_mid_year_and_end_equals_projections(demo):
    url = demo["url"]
    with LedgerStore(url, create=False) as s:
        mid = s.index_at_time(us_of("2024-07-01T00:00:00Z"))
        assert 0 < mid < demo["size"]
    ps = ProjectionStore(url)
    try:
        ps.catch_up()
        assert ps.position() == demo["size"]
        for party in enterprises(demo):
            for as_of in (mid, demo["size"]):
                r = assert_replay_matches(url, ps, party, as_of)
                assert r.steps, party
        # and state after every step equals the projections just after that step's entry
        plant = demo["seeded"]["over_separation_quota"]["party"]
        r = replay_party(url, plant)
        for step in r.steps[::15] + r.steps[-1:]:
            stock, used, _ = _projection_state(ps, plant, step.index + 1, {YEAR, YEAR + 1})
            assert step.stock == stock and {k: v for k, v in step.quota_used.items() if Decimal(v)} == used
    finally:
        ps.close()


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_replay_at_any_point_equals_projections(demo, data):
    url = demo["url"]
    as_of = data.draw(st.integers(0, demo["size"]), label="as_of")
    party = data.draw(st.sampled_from(sorted(enterprises(demo))), label="party")
    ps = ProjectionStore(url)
    try:
        assert_replay_matches(url, ps, party, as_of)
    finally:
        ps.close()


# --- the seeded violations: found by replay, with the right first entry and evidence -----------

def _step_of(r, entry_hash: str):
    steps = [s for s in r.steps if s.entry_hash == entry_hash]
    assert len(steps) == 1, entry_hash
    return steps[0]


def _expected_over_quota(url: str, party: str) -> tuple[tuple, list[dict]]:
    """The plant's first separation batch whose cumulative output (its feed is all ionic
    concentrate: no secondary feed to deduct; the indicator's basis is OUTPUT) is above the
    separation quota sub-allocated to it before that batch was recorded."""
    allocated, allocations, used = 0, [], 0
    for rec in all_records(url):
        s = SignedEntry.parse(rec.envelope)
        e = s.entry
        if e.type == "QuotaSubAllocated" and e.body["enterprise"] == party and e.body["category"] == "SEPARATION" \
                and e.body["batch"]["year"] == YEAR:
            allocated += int(Decimal(e.body["t_reo"]) * 1_000_000)
            allocations.append(ref_of(rec, s))
        if e.chain == party and e.type == "SeparationBatchRecorded" and e.occurred_at.startswith(str(YEAR)):
            used += sum(int(Decimal(o["reo_kg"]) * 1000) for o in e.body["outputs"])
            if used > allocated:
                return ref_of(rec, s), allocations
    raise AssertionError("the plant never went over its quota")


def test_each_seeded_violation_is_found_with_its_first_entry(demo):
    from reledger.demo.run import SEEDED

    url, where = demo["url"], demo["seeded"]
    assert set(where) >= set(SEEDED)
    checked = set()

    def found(key: str, rule: str, code: str, first: dict, more_evidence: list[dict] = ()) -> Any:
        party = where[key]["party"]
        r = replay_party(url, party)
        assert r.signatures_invalid == 0
        codes = {f["code"] for s in r.steps for f in s.findings}
        assert SEEDED[key]["codes"] <= codes, (key, codes)
        f = r.first_by_rule[rule]
        assert f["code"] == code and f["party"] == party, (key, f)
        assert f["evidence"][0] == first, (key, f["evidence"])
        for ev in more_evidence:
            assert ev in f["evidence"], (key, ev, f["evidence"])
        # the step of the first entry carries the finding (or, for a finding raised by another
        # entry's arrival, a step of kind "finding" at the index that raised it)
        step = [s for s in r.steps if s.index == f["index"]]
        assert len(step) == 1 and f in step[0].findings, key
        checked.add(key)
        return r, f, step[0]

    # over quota: the batch that took the plant over, citing the allocations
    plant = where["over_separation_quota"]["party"]
    first, allocations = _expected_over_quota(url, plant)
    r, f, step = found("over_separation_quota", "quota", "OVER_QUOTA", first, allocations)
    assert f["params"]["level"] == "enterprise" and f["index"] == first["index"]
    assert step.kind == "entry" and step.seq == first["seq"] and step.signature.startswith("valid")
    assert Decimal(f["params"]["used_kg"]) > Decimal(f["params"]["limit_kg"])

    # a shipment never received: the TransferShipped, flagged by the first entry recorded after
    # the receipt deadline (another party's entry: a step of kind "finding")
    w = where["shipment_never_received"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "TransferShipped" and s.entry.body["transfer_id"] == w["transfer_id"])
    r, f, step = found("shipment_never_received", "flow", "SHIPMENT_NOT_RECEIVED", ref_of(rec, s))
    # business times compared: a receipt dated within the N days may be entered up to the report
    # deadline of the month in which they ran out; only then is the shipment "not received"
    due_business = us_of(s.entry.body["shipped_at"]) + int(RULE_PARAMETERS["receipt_within_days"]) * DAY
    due = max(due_business, report_due_us(month_of(due_business)))
    first_after = next(x.index for x in all_records(url) if x.recorded_us >= due)
    assert f["index"] == first_after and step.kind == "finding" and step.seq is None
    assert f["params"]["transfer_id"] == w["transfer_id"] and f["params"]["buyer"] == w["buyer"]

    # a yield above 100 %: the separation batch, with both codes at that one step
    w = where["yield_above_100"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "SeparationBatchRecorded" and s.entry.body["batch"] == w["batch"])
    r, f, step = found("yield_above_100", "mass_balance", "MASS_IMBALANCE", ref_of(rec, s))
    assert {x["code"] for x in step.findings} == {"MASS_IMBALANCE", "YIELD_ABOVE_100"}
    assert step.entry_hash == s.hash.hex()

    # a recycler taking concentrate: its receipt, citing the seller's shipment
    w = where["recycler_takes_concentrate"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "TransferReceived" and s.entry.body["transfer_id"] == w["transfer_id"])
    shipped = next(ref_of(r2, s2) for r2, s2 in chain_entries(url, w["seller"])
                   if s2.entry.type == "TransferShipped" and s2.entry.body["transfer_id"] == w["transfer_id"])
    r, f, step = found("recycler_takes_concentrate", "designation", "RECYCLER_MINERAL_FEED", ref_of(rec, s), [shipped])
    assert step.counterparty == w["seller"]

    # a late monthly report: REPORT_MISSING at the first entry recorded on the due date, citing
    # the first flow entry of that month; then REPORT_LATE at the report itself
    w = where["late_monthly_report"]
    entries = chain_entries(url, w["party"])
    first_flow = next(ref_of(rec, s) for rec, s in entries
                      if s.entry.type in FLOW_TYPES and s.entry.occurred_at.startswith(w["month"]))
    r, f, step = found("late_monthly_report", "reporting", "REPORT_MISSING", first_flow)
    due = report_due_us(w["month"])
    assert f["index"] == next(x.index for x in all_records(url) if x.recorded_us >= due)
    rec, s = next((rec, s) for rec, s in entries
                  if s.entry.type == "MonthlyFlowReportSubmitted" and s.entry.body["month"] == w["month"])
    late = [x for x in _step_of(r, s.hash.hex()).findings if x["code"] == "REPORT_LATE"]
    assert len(late) == 1 and late[0]["evidence"][0] == ref_of(rec, s) and rec.recorded_us >= due

    # a backdated entry: the import recorded 46 days after its business time
    w = where["backdated_entry"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "ImportReceived" and s.entry.body["lot"] == w["lot"])
    r, f, step = found("backdated_entry", "timeliness", "BACKDATED", ref_of(rec, s))
    assert f["params"]["days"] == (rec.recorded_us - us_of(s.entry.occurred_at)) // DAY == 46

    # an under-declared lot (written below the command API): the production, with the computed REO
    w = where["under_declared_lot"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "MineralProductProduced" and s.entry.body["lot"] == w["lot"])
    r, f, step = found("under_declared_lot", "quantities", "DECLARED_REO_MISMATCH", ref_of(rec, s))
    b = s.entry.body
    assert Decimal(f["params"]["computed_kg"]) == (Decimal(b["dry_kg"]) * Decimal(b["treo_pct"]) / 100).quantize(
        Decimal("0.001"))

    # a false monthly total: the report itself
    w = where["false_monthly_total"]
    rec, s = next((rec, s) for rec, s in chain_entries(url, w["party"])
                  if s.entry.type == "MonthlyFlowReportSubmitted" and s.entry.body["month"] == w["month"])
    r, f, step = found("false_monthly_total", "reporting", "FALSE_REPORT", ref_of(rec, s))
    assert f["params"]["totals"]["produced_reo_kg"]["stated_kg"] == "1000"
    assert checked == set(SEEDED)


def test_replay_names_the_party_and_penalty(demo):
    plant = demo["seeded"]["over_separation_quota"]["party"]
    r = replay_party(demo["url"], plant)
    assert r.name and "Ganzhou" in r.name
    kinds = [c["kind"] for c in r.credit]
    assert kinds == ["VIOLATION", "PENALTY"], r.credit
    assert r.credit[1]["next_year_cut_t"] == demo["seeded"]["over_separation_quota"]["penalty_cut_t"]
    d = r.to_dict()
    assert d["signatures"] == {"valid": r.signatures_valid, "invalid": 0} and len(d["steps"]) == len(r.steps)


# --- filters -------------------------------------------------------------------------------------

def _entry_steps(r) -> list:
    return [s for s in r.steps if s.kind == "entry"]


def _mentions_lot(body: Any, lot: str) -> bool:
    if isinstance(body, dict):
        return body.get("lot") == lot or any(_mentions_lot(v, lot) for k, v in body.items() if k != "lot")
    if isinstance(body, list):
        return any(_mentions_lot(v, lot) for v in body)
    return False


def test_filters(demo):
    url = demo["url"]
    plant = demo["seeded"]["over_separation_quota"]["party"]
    entries = chain_entries(url, plant)
    full = replay_party(url, plant)
    assert [s.seq for s in _entry_steps(full)] == [s.entry.seq for _, s in entries]

    def same_states(r) -> None:  # filtering hides steps, not their effect on the state
        by_index = {s.index: s for s in full.steps}
        for s in r.steps:
            assert s.stock == by_index[s.index].stock and s.quota_used == by_index[s.index].quota_used
        assert r.first_by_rule == full.first_by_rule

    # types
    types = {"SeparationBatchRecorded", "MonthlyFlowReportSubmitted"}
    r = replay_party(url, plant, types=types)
    assert [s.seq for s in _entry_steps(r)] == [s.entry.seq for _, s in entries if s.entry.type in types]
    same_states(r)
    # lot: a lot the plant received, then separated
    lot = next(s.entry.body["lines"][0]["lot"] for _, s in entries if s.entry.type == "TransferReceived")
    r = replay_party(url, plant, lot=lot)
    want = [s.entry.seq for _, s in entries if _mentions_lot(s.entry.body, lot)]
    assert len(want) >= 2 and [s.seq for s in _entry_steps(r)] == want
    assert all(lot in s.lots for s in _entry_steps(r))
    same_states(r)
    # counterparty: the mine it received from
    mine = next(s.entry.body["seller"] for _, s in entries if s.entry.type == "TransferReceived")
    r = replay_party(url, plant, counterparty=mine)
    want = [s.entry.seq for _, s in entries if mine in (s.entry.body.get("seller"), s.entry.body.get("buyer"))]
    assert want and [s.seq for s in _entry_steps(r)] == want
    assert all(s.counterparty == mine for s in _entry_steps(r))
    # business time window
    since, until = us_of("2024-05-01T00:00:00Z"), us_of("2024-06-30T23:59:59Z")
    r = replay_party(url, plant, since_us=since, until_us=until)
    want = [s.entry.seq for _, s in entries if since <= us_of(s.entry.occurred_at) <= until]
    assert want and [s.seq for s in _entry_steps(r)] == want
    same_states(r)
    # all together, and as of a log size
    r = replay_party(url, plant, types={"TransferShipped"}, since_us=since, until_us=until, as_of=demo["size"] // 2)
    want = [s.entry.seq for rec, s in entries if s.entry.type == "TransferShipped"
            and since <= us_of(s.entry.occurred_at) <= until and rec.index < demo["size"] // 2]
    assert want and [s.seq for s in _entry_steps(r)] == want and r.size == demo["size"] // 2
    # nothing matches: no entry steps, but the replay still knows the party
    r = replay_party(url, plant, lot="NO-SUCH-LOT")
    assert not _entry_steps(r) and r.name


def test_unknown_party_replays_to_nothing(demo):
    r = replay_party(demo["url"], "91000000NOBODY0000")
    assert r.steps == [] and r.name is None and r.signatures_valid == 0


# --- tampered signatures ------------------------------------------------------------------------

M0, M1 = "9111000000MINE0000", "9111000000MINE0001"


def _state(url: str, chain: str, seq: int) -> bytes:
    return bytes(sql(url, "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = ?",
                     (chain, seq))[0][0])


def _set_state(url: str, chain: str, seq: int, state: bytes) -> None:
    sql(url, "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?", (state, chain, seq))


def test_tampered_entries_are_reported_invalid(db_url):
    led = populated_ledger(db_url, parties=2, per_party=5)
    led.checkpoint()
    led.close()
    before = replay_party(db_url, M0)
    assert (before.signatures_valid, before.signatures_invalid) == (5, 0)
    drop_triggers(db_url)
    # 1. one byte of the signed body changed (raw SQL on the events table)
    s = SignedEntry.parse(_state(db_url, M0, 2))
    m = encoding.decode(s.content)
    m["body"] = {**m["body"], "qty": m["body"]["qty"][:-1] + "7"}
    changed = encoding.canonical({"entry": encoding.canonical(m), "sig": s.signature})
    _set_state(db_url, M0, 2, changed)
    # 2. an entry re-signed by a key nobody authorized
    s = SignedEntry.parse(_state(db_url, M0, 4))
    attacker = SigningKey.generate(M0)
    _set_state(db_url, M0, 4, encoding.canonical({"entry": s.content, "sig": attacker.sign(ENTRY_TAG, s.content)}))
    r = replay_party(db_url, M0)
    sig = {st.seq: st.signature for st in r.steps}
    assert (r.signatures_valid, r.signatures_invalid) == (3, 2), sig
    assert sig[2].startswith("INVALID") and sig[4].startswith("INVALID"), sig
    assert all(sig[q].startswith("valid") for q in (1, 3, 5)), sig
    # the other party is untouched
    other = replay_party(db_url, M1)
    assert (other.signatures_valid, other.signatures_invalid) == (5, 0)
    # 3. an entry signed with a key claiming another key id (the party's registered key id,
    # but another key's signature) is invalid too
    s = SignedEntry.parse(_state(db_url, M1, 3))
    _set_state(db_url, M1, 3, encoding.canonical({"entry": s.content, "sig": bytes(64)}))
    other = replay_party(db_url, M1)
    assert other.signatures_invalid == 1 and [st.seq for st in other.steps if st.signature.startswith("INVALID")] == [3]


def test_unreadable_missing_and_swapped_entries_are_reported_invalid(db_url):
    """Rows an attacker broke, deleted or swapped: replay shows them as INVALID steps of the
    party at their log positions (it does not crash, and does not fold them as if valid)."""
    led = populated_ledger(db_url, parties=2, per_party=5)
    led.close()
    drop_triggers(db_url)
    _set_state(db_url, M0, 1, encoding.canonical({"not": "an entry"}))
    sql(db_url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (M0, 3))
    s4, s5 = _state(db_url, M0, 4), _state(db_url, M0, 5)
    _set_state(db_url, M0, 4, s5)
    _set_state(db_url, M0, 5, s4)
    _set_state(db_url, M1, 2, _state(db_url, M0, 2))  # M1's position now holds M0's entry
    m1_2 = sql(db_url, "SELECT idx FROM {log} WHERE chain = ? AND seq = 2", (M1,))[0][0]
    r = replay_party(db_url, M0)
    # M0's five positions, and M1's position that now holds a copy of M0:2
    sig = {st.index: st.signature for st in r.steps if st.kind == "entry"}
    where = {st.index: st.seq for st in r.steps if st.kind == "entry"}
    assert len(r.steps) == 6 and sorted(where.values()) == [1, 2, 2, 3, 4, 5], [(s.index, s.seq) for s in r.steps]
    by_seq = {where[i]: sig[i] for i in sig if i != m1_2}
    assert by_seq[1].startswith("INVALID: unreadable entry") and by_seq[3].startswith("INVALID: unreadable entry")
    assert "missing" in by_seq[3]
    assert by_seq[4].startswith("INVALID: the entry") and by_seq[5].startswith("INVALID: the entry"), by_seq
    assert by_seq[2].startswith("valid"), by_seq
    assert sig[m1_2].startswith(f"INVALID: the entry {M0}:2 is not the one the log recorded at index {m1_2}")
    assert (r.signatures_valid, r.signatures_invalid) == (1, 5)
    other = replay_party(db_url, M1)
    osig = {st.seq: st.signature for st in other.steps if st.kind == "entry"}
    assert osig[2].startswith(f"INVALID: the entry {M0}:2 is not the one the log recorded"), osig
    assert (other.signatures_valid, other.signatures_invalid) == (4, 1)


def test_signatures_are_checked_with_the_key_valid_at_each_position(db_url, capsys):
    """M0 rotates its key (a new one authorized, the old one revoked): every entry is valid
    with the key of its time. An entry rewritten with the revoked key (log row updated to
    match, as an attacker with DB access would) is INVALID because that key was revoked."""
    from reledger.ledger.genesis import ChainSigner

    led = populated_ledger(db_url, parties=2, per_party=2)
    old = led.parties[M0]
    new_key = SigningKey.generate(M0)
    led.authorize(new_key)
    led.revoke(M0, old.key.key_id)
    rotated = ChainSigner(new_key, seq=old.seq, head=old.head)
    led.parties[M0] = rotated
    led.add(M0, 2)
    led.close()
    r = replay_party(db_url, M0)
    assert (r.signatures_valid, r.signatures_invalid) == (4, 0)
    assert [s.signature for s in r.steps if s.kind == "entry"] == [
        f"valid (key {old.key.key_id})"] * 2 + [f"valid (key {new_key.key_id})"] * 2
    drop_triggers(db_url)
    s4 = SignedEntry.parse(_state(db_url, M0, 4))
    forged = ChainSigner(old.key, seq=3, head=s4.entry.prev).sign(
        s4.entry.type, s4.entry.body, s4.entry.occurred_at, s4.entry.command_id)
    _set_state(db_url, M0, 4, forged.envelope)
    sql(db_url, "UPDATE {log} SET entry_hash = ? WHERE chain = ? AND seq = 4", (forged.hash, M0))
    r = replay_party(db_url, M0)
    sig = {s.seq: s.signature for s in r.steps if s.kind == "entry"}
    assert sig[4].startswith("INVALID") and "revoked" in sig[4], sig
    assert (r.signatures_valid, r.signatures_invalid) == (3, 1)
    # the command line reports it: exit 1, the invalid step in the JSON
    from reledger.commands.cli import EXIT_FAILED, EXIT_OK, main

    assert main(["replay", "--db", db_url, "--party", M1, "--json"]) == EXIT_OK
    capsys.readouterr()
    assert main(["replay", "--db", db_url, "--party", M0, "--json"]) == EXIT_FAILED
    out = json.loads(capsys.readouterr().out)
    assert out["signatures"] == {"valid": 3, "invalid": 1}
    assert [st["seq"] for st in out["steps"] if st["signature"].startswith("INVALID")] == [4]


def test_replay_from_the_rows_equals_the_fold(demo):
    """``replay`` reads the party's rows when the projections cover the point asked (its own
    entries, findings, stock, quota and credit rows): step for step what the fold of the whole
    log (the reference, ``fold=True``) gives, for every party, at mid-year and at the end, and
    with filters."""
    url = demo["url"]
    with LedgerStore(url, create=False) as s:
        mid = s.index_at_time(us_of("2024-07-01T00:00:00Z"))
    ps = ProjectionStore(url)
    ps.catch_up()
    ps.close()

    def same(a, b):
        da, db = a.to_dict(), b.to_dict()
        for d in (da, db):  # the findings of one entry in a stable order
            for step in d["steps"]:
                step["findings"].sort(key=lambda f: (f["code"], f["message"]))
        assert da == db

    for party in sorted(demo["parties"]):
        for as_of in (mid, demo["size"]):
            same(replay_party(url, party, as_of=as_of), replay_party(url, party, as_of=as_of, fold=True))
    plant = demo["seeded"]["over_separation_quota"]["party"]
    for kw in ({"types": {"SeparationBatchRecorded"}}, {"since_us": us_of("2024-05-01T00:00:00Z")},
               {"until_us": us_of("2024-03-01T00:00:00Z")}):
        same(replay_party(url, plant, **kw), replay_party(url, plant, fold=True, **kw))


# --- the streamed replay: what the command prints as it reads ------------------------------------

def _sorted_findings(d: dict) -> dict:
    for step in d["steps"]:  # the findings of one entry in a stable order
        step["findings"].sort(key=lambda f: (f["code"], f["message"]))
    return d


def test_streamed_replay_equals_the_fold_page_by_page(demo):
    """The replay read a page at a time (pages of 1, 2, 7 rows: a page that ends inside the rows
    of one log index, a page filled by one index's rows) gives, step for step, what the fold of
    the whole log (the reference) gives, and what one page of every row gives."""
    from reledger.replay.history import stream_party

    url = demo["url"]
    ProjectionStore(url).close()
    plant = demo["seeded"]["over_separation_quota"]["party"]
    late = demo["seeded"]["shipment_never_received"]["party"]
    for party in (plant, late):
        ref = _sorted_findings(replay_party(url, party, fold=True).to_dict())
        for page in (1, 2, 7, 10**6):
            with stream_party(url, party, page=page) as rs:
                got = rs.collect()
            assert _sorted_findings(got.to_dict()) == ref, (party, page)
    kw = {"types": {"SeparationBatchRecorded"}, "since_us": us_of("2024-05-01T00:00:00Z"), "as_of": demo["size"] - 50}
    with stream_party(url, plant, page=3, **kw) as rs:
        got = rs.collect()
    assert _sorted_findings(got.to_dict()) == _sorted_findings(replay_party(url, plant, fold=True, **kw).to_dict())


def test_streamed_replay_holds_a_page_not_the_history(demo):
    """A party with many more steps than a page: the rows held at once (read from the database
    and not yet used) never exceed a page per row source, and the first step comes after one
    page of each, not after the party's whole history was read."""
    from reledger.replay.history import stream_party

    url = demo["url"]
    plant = demo["seeded"]["over_separation_quota"]["party"]
    page = 20
    with stream_party(url, plant, page=page) as rs:
        assert rs.name and rs.size == demo["size"] and rs.checkpoint["size"] <= rs.size
        steps = iter(rs)
        next(steps)
        # one page of the party's rows (the registry: its entries before the first step)
        assert {src.name: src.pages for src in rs.sources if src.name != "registry"} == {
            "entries": 1, "findings": 1, "stock": 1, "quota": 1}
        held = [rs.rows_held()]
        count = 1
        for _ in steps:
            held.append(rs.rows_held())
            count += 1
        pages = sum(src.pages for src in rs.sources)
        assert rs.done and rs.step_count == count
    assert count > 5 * page, count  # the history is many pages long
    assert pages > 10, pages
    assert max(held) <= len(rs.sources) * page, max(held)


def test_replay_command_streams_the_reference_output(demo, capsys):
    """``reledger replay`` (text, --json, --format csv) prints exactly what the whole replay in
    memory renders to: the JSON is one document, the same text as ``json.dumps`` of it; the text
    starts with the header (party, name, log size, checkpoint) and ends with the counts."""
    from reledger.commands.cli import main
    from reledger.replay.history import iter_csv, iter_text

    url = demo["url"]
    plant = demo["seeded"]["over_separation_quota"]["party"]
    ref = replay_party(url, plant)
    assert main(["replay", "--db", url, "--party", plant, "--json"]) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(ref.to_dict(), indent=2, default=str) + "\n"
    assert json.loads(out)["checkpoint"] == {"size": ref.checkpoint["size"], "root": ref.checkpoint["root"]}
    assert main(["replay", "--db", url, "--party", plant]) == 0
    out = capsys.readouterr().out
    assert out == "".join(line + "\n" for line in iter_text(ref))
    lines = out.splitlines()
    assert lines[0].startswith(f"Replay of {plant} ({ref.name}), log size {demo['size']}; latest checkpoint")
    assert f"{len(ref.steps)} steps, signatures {ref.signatures_valid} valid, 0 invalid" in lines
    assert main(["replay", "--db", url, "--party", plant, "--format", "csv"]) == 0
    assert capsys.readouterr().out == "".join(iter_csv(ref))
    # an unknown lot is refused; as of size 0 there is nothing to show: still one valid document
    assert main(["replay", "--db", url, "--party", plant, "--json", "--lot", "NO-SUCH-LOT"]) == 2
    capsys.readouterr()
    assert main(["replay", "--db", url, "--party", plant, "--json", "--as-of", "0"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["steps"] == [] and d["as_of_size"] == 0 and d["checkpoint"] is None


def test_replay_of_a_missing_party_is_refused(demo, capsys):
    from reledger.commands.cli import EXIT_USAGE, main

    for fmt in ([], ["--json"], ["--format", "csv"]):
        assert main(["replay", "--db", demo["url"], "--party", "91000000NOBODY0000", *fmt]) == EXIT_USAGE
        out, err = capsys.readouterr()
        assert out == "" and "no such party" in err and "91000000NOBODY0000" in err and "Traceback" not in err
