"""``LedgerStore.append_groups(..., expect_size=n)``: the write happens only if the log holds
exactly n entries under the lock; else LogMoved (with the size found) and nothing is written.
The command API builds on it to check against a state it knows is the log's (test_api,
test_http)."""

from __future__ import annotations

import pytest

from helpers import fact, new_ledger
from reledger.storage.store import LedgerStore, LogMoved
from reledger.ledger.verify import verify_database

MINE = "91110000MINE0001"


def test_expect_size(db_url):
    led = new_ledger(db_url)
    try:
        mine = led.register(MINE, ["MINE"])
        st = led.store
        n = st.size()
        first, second = fact(mine), fact(mine)
        assert st.append_groups([[first]], expect_size=n)[0][0].index == n
        for wrong in (n, n + 2, 0):  # behind, ahead, a different ledger
            with pytest.raises(LogMoved) as moved:
                st.append_groups([[second]], expect_size=wrong)
            assert moved.value.size == n + 1 and st.size() == n + 1
        # the caches survived the refusals: the chain continues where it is
        assert st.append_groups([[second]], expect_size=n + 1)[0][0].seq == second.entry.seq
        # another writer moves the log: this store learns its size, writes nothing
        third = fact(mine)
        with LedgerStore(db_url) as other:
            other.append([third])
        fourth = fact(mine)
        with pytest.raises(LogMoved) as moved:
            st.append_groups([[fourth]], expect_size=n + 2)
        assert moved.value.size == n + 3
        assert st.append_groups([[fourth]], expect_size=n + 3)[0][0].index == n + 3
        assert st.append_groups([[fact(mine)]])[0][0].index == n + 4  # without expect_size: as before
        assert verify_database(db_url, workers=1).ok
    finally:
        led.close()


def test_new_commands_write_without_reading_first(db_url, monkeypatch):
    """``new_commands=True`` (the caller vouches that the log of ``expect_size`` entries holds
    none of the command ids): on PostgreSQL, with the store's caches of that size, the
    transaction reads nothing before it writes. If the caller's view was wrong (another writer
    moved the log, or a command id was recorded after all), the plan's refusal on its caches or
    the log's constraints stop it, nothing is written, and the usual way answers: LogMoved with the size found, or the
    original receipt of a recorded command. Same answers on SQLite (which always reads first).
    (The constraint path itself: test_a_write_without_reading_meets_the_log_constraints.)"""
    from helpers import is_pg

    led = new_ledger(db_url)
    try:
        mine = led.register(MINE, ["MINE"])
        st = led.store
        n = st.size()
        st.append_groups([[fact(mine)]], expect_size=n)  # (the caches now follow this store)
        reads = []
        real_size = st.queries.size
        monkeypatch.setattr(st.queries, "size", lambda cur: reads.append(1) or real_size(cur))
        a = fact(mine)
        assert st.append_groups([[a]], expect_size=n + 1, new_commands=True)[0][0].index == n + 1
        assert len(reads) == (0 if is_pg(db_url) else 1)
        # another writer moves the log behind this store's back
        with LedgerStore(db_url) as other:
            other.append([fact(mine)])
        b = fact(mine)
        with pytest.raises(LogMoved) as moved:
            st.append_groups([[b]], expect_size=n + 2, new_commands=True)
        assert moved.value.size == n + 3 and st.size() == n + 3
        assert st.append_groups([[b]], expect_size=n + 3, new_commands=True)[0][0].index == n + 3
        # a caller wrong about its command ids: the plan refuses the entry on its caches (its
        # seq is taken), the usual way answers the recorded entry's receipt (a retry), and
        # nothing is written twice
        again = st.append_groups([[b]], expect_size=n + 4, new_commands=True)[0][0]
        assert again.duplicate and again.index == n + 3 and st.size() == n + 4
        c = fact(mine)
        reads.clear()
        assert st.append_groups([[c]], expect_size=n + 4, new_commands=True)[0][0].index == n + 4
        assert st.append_groups([[fact(mine)]])[0][0].index == n + 5
        assert verify_database(db_url, workers=1).ok
    finally:
        led.close()


def test_a_write_without_reading_keeps_record_times_in_order(db_url):
    """Record times never go backwards, also when the transaction reads nothing first: a
    store whose clock lags another writer's learns the log's last record time whenever it
    learns its size (here through current_registry, as the server's authentication does), so
    its next entry is recorded no earlier than the other writer's."""
    from helpers import raw_connection, tables

    slow = 1_735_689_600_000_000  # 2025-01-01: this store's clock, behind the other writer's (the wall clock)
    led = new_ledger(db_url, clock=lambda: slow)
    try:
        mine = led.register(MINE, ["MINE"])
        st = led.store
        n = st.size()
        st.append_groups([[fact(mine)]], expect_size=n)
        with LedgerStore(db_url) as other:
            ahead = other.append([fact(mine)])[0]
        st.current_registry()  # the caches follow the log to n + 2
        r = st.append_groups([[fact(mine)]], expect_size=n + 2, new_commands=True)[0][0]
        assert r.index == n + 2 and r.recorded_at >= ahead.recorded_at
        with raw_connection(db_url) as conn:
            times = [row[0] for row in conn.execute(
                tables(db_url).q("SELECT recorded_us FROM {log} ORDER BY idx")).fetchall()]
        assert times == sorted(times)
        assert verify_database(db_url, workers=1).ok
    finally:
        led.close()


def test_a_write_without_reading_meets_the_log_constraints(db_url, monkeypatch):
    """Another writer appends to another chain: the caches still accept this store's entry (its
    own chain is where they say), so on PostgreSQL the rows go out without a read and the log's
    unique index refuses them. Nothing of them is written; the usual way then answers
    LogMoved, and the entry goes in at the right size."""
    from helpers import is_pg
    from reledger.storage import store as store_module

    led = new_ledger(db_url)
    try:
        mine, other_mine = led.register(MINE, ["MINE"]), led.register("91110000MINE0002", ["MINE"])
        st = led.store
        n = st.size()
        st.append_groups([[fact(mine)]], expect_size=n)
        with LedgerStore(db_url) as other:
            other.append([fact(other_mine)])
        refused = []
        real_write = st.recorder.write

        def write(plan):
            try:
                return real_write(plan)
            except store_module.ESIntegrityError as e:
                refused.append(e)
                raise

        monkeypatch.setattr(st.recorder, "write", write)
        a = fact(mine)
        with pytest.raises(LogMoved) as moved:
            st.append_groups([[a]], expect_size=n + 1, new_commands=True)
        assert moved.value.size == n + 2 and st.size() == n + 2
        assert len(refused) == (1 if is_pg(db_url) else 0)  # the constraint, not a read, caught it
        assert st.append_groups([[a]], expect_size=n + 2, new_commands=True)[0][0].index == n + 2
        assert verify_database(db_url, workers=1).ok
    finally:
        led.close()
