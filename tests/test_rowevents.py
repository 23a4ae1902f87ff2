"""The timelines and lists as rows (projections/rowevents.py) against their in-memory forms
(projections/queues.py, the reference), on both backends: random operations (late events,
events of one business time, replacements and deletions), flushed at random points, read back
a few rows a query with the last business times forgotten, and reopened mid-way; and the rule
engine with its state as rows against the in-memory engine over random ledgers with late
entries, corrections and membership changes (the cure's full scan, the regrouping of uses)."""

from __future__ import annotations

import random
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

import reledger.projections.rowevents as rowevents
import reledger.projections.state as rowstate
from reledger.projections.model import Deltas, Projector
from reledger.projections.queues import Lists, Timelines
from reledger.projections.store import P, ProjectionStore
from reledger.storage.store import LedgerStore

from test_rules_property import T0, _signers, actions, random_ledger
from projection_helpers import DAY, ts


class Holder:
    """A projector-like object with a timeline and a list (what RowState.attach replaces)."""

    def __init__(self, state=None):
        self.position = 0
        self.tl = Timelines()
        self.uses = Lists()
        if state is not None:
            state.attach(self)


def _flush(ps: ProjectionStore, st: rowstate.RowState) -> None:
    with ps._transaction() as cur:
        st.flush(cur)
    st.trim()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_row_timelines_and_lists_equal_the_in_memory_forms(db_url, seed, monkeypatch):
    monkeypatch.setattr(rowevents, "PAGE", 2)
    monkeypatch.setattr(rowevents, "LAST_KEYS", 2)
    rnd = random.Random(seed)
    LedgerStore(db_url).close()  # the database (and the PostgreSQL schema)
    ps = ProjectionStore(db_url)
    try:
        ref = Holder()
        st = rowstate.RowState(ps.conn, ps.pg)
        got = Holder(st)
        keys = [("quota", "nation", 2024), ("stock", "P", "L1"), ("stock", "P", "L2"), "x"]
        for step in range(400):
            key = rnd.choice(keys)
            op = rnd.random()
            if op < 0.35:  # mostly at the end, sometimes late, often at an existing business time
                t = rnd.choice([step, step, rnd.randrange(0, step + 1), 5])
                ev = [t, rnd.randint(-5, 5), rnd.randint(-5, 5)]
                ref.tl.insert(key, list(ev))
                got.tl.insert(key, list(ev))
            elif op < 0.5:
                t = rnd.randrange(-1, step + 2)
                assert list(got.tl.since(key, t)) == list(ref.tl.since(key, t))
                inclusive = rnd.random() < 0.5
                assert list(got.tl.until(key, t, inclusive)) == list(ref.tl.until(key, t, inclusive))
                assert list(got.tl.all(key)) == list(ref.tl.all(key))
            elif op < 0.7:
                item = [rnd.randrange(0, 50), "c", step]
                ref.uses.append(key, list(item))
                got.uses.append(key, list(item))
            elif op < 0.85:  # replace the first item matching, as the regrouping does
                want = rnd.randrange(0, 50)
                for rh, gh in zip(ref.uses.each(key), got.uses.each(key)):
                    assert rh[1] == gh[1]
                    if rh[1][0] >= want:
                        rh[1][1] = gh[1][1] = f"g{step}"
                        ref.uses.replace(key, rh[0], rh[1])
                        got.uses.replace(key, gh[0], gh[1])
                        break
            else:  # delete the first item matching, as a correction does
                want = rnd.randrange(0, 50)
                for rh, gh in zip(ref.uses.each(key), got.uses.each(key)):
                    if rh[1][0] == want:
                        ref.uses.delete(key, rh[0])
                        got.uses.delete(key, gh[0])
                        break
            if rnd.random() < 0.1:
                _flush(ps, st)
            if rnd.random() < 0.03:  # a restart: what was flushed is read back
                _flush(ps, st)
                st = rowstate.RowState(ps.conn, ps.pg)
                got = Holder(st)
            for k in keys:
                assert [h[1] for h in got.uses.each(k)] == [h[1] for h in ref.uses.each(k)]
        _flush(ps, st)
        rows: dict = {}
        for ns, k, v in ps.execute(f"SELECT ns, k, v FROM {P}events ORDER BY ns, k, occ, n"):
            rows.setdefault(ns, {}).setdefault(rowstate.decode(k), []).append(rowstate.decode(v))
        assert rows.get("tl", {}) == {k: v for k, v in ref.tl.events.items() if v}
        assert rows.get("uses", {}) == {k: v for k, v in ref.uses.items.items() if v}
    finally:
        ps.close()


def _scratch() -> tuple[sqlite3.Connection, rowstate.RowState]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in rowstate.ddl(False):
        conn.execute(stmt)
    return conn, rowstate.RowState(conn, False, cache_entries=8)


def _flush_conn(conn, st: rowstate.RowState) -> None:
    cur = conn.cursor()
    cur.execute("BEGIN")
    st.flush(cur)
    cur.execute("COMMIT")
    st.trim()


@settings(max_examples=150, deadline=None)
@given(actions, st.randoms(use_true_random=False))
def test_row_state_engine_equals_the_in_memory_engine(acts, rnd):
    """test_rules_property.py's random ledgers (late entries, corrections, late membership
    changes) fed to the engine twice: in memory, and with its state as rows flushed at random
    points behind tiny caches (a fresh state object, reading the rows back, now and then). The
    deltas of every entry (rows and findings) are equal."""
    reg, mine, ck = _signers()
    old = rowevents.PAGE, rowevents.LAST_KEYS
    rowevents.PAGE, rowevents.LAST_KEYS = 2, 2
    ref = Projector()
    conn, st = _scratch()
    got = Projector(st)
    index = 0
    rec = T0
    try:
        def feed(signed):
            nonlocal index, got, st
            a = ref.apply(index, rec, signed)
            b = got.apply(index, rec, signed)
            assert [getattr(a, f) for f in Deltas.__slots__] == [getattr(b, f) for f in Deltas.__slots__], index
            index += 1
            if rnd.random() < 0.4:
                _flush_conn(conn, st)
                if rnd.random() < 0.3:
                    st = rowstate.RowState(conn, False, cache_entries=8)
                    got = Projector(st)
            return a

        for rec, signed, _ in random_ledger(acts, reg, mine, ck):
            feed(signed)
        # a stock count of a lot and of a product, at a business time in the middle: the stock
        # valid then, summed from the timelines
        feed(mine.sign("StockCounted", {"lot": "L", "counted_kg": "1", "counted_at": ts(T0 + 10 * DAY)},
                       ts(T0 + 10 * DAY)))
        feed(mine.sign("StockCounted", {"product": "RE_CONCENTRATE", "counted_kg": "1"}, ts(T0 + 10 * DAY)))
        _flush_conn(conn, st)
        got = Projector(rowstate.RowState(conn, False, cache_entries=8))  # all read back from the rows
        for key, events in ref.timeline.events.items():
            assert list(got.timeline.all(key)) == events, key
        for party, uses in ref.party_uses.items.items():
            assert [u for _, u in got.party_uses.each(party)] == uses, party
    finally:
        rowevents.PAGE, rowevents.LAST_KEYS = old
        conn.close()
