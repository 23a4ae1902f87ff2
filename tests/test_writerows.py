"""The command API's write state as rows (commands/writerows.py), against the in-memory reference.

* the row-backed state (tiny caches, rows written every few entries) holds what the in-memory
  WriteState folded from the whole log holds, during submissions and after a restart;
* a restart parses only the log's tail since the rows' position (asserted on what was parsed);
* a refused group in a group commit leaves no row, a refused one with a tiny cache neither;
* duplicate command ids: a retry after a restart is a duplicate, another entry a conflict;
* rows of another log (or another format) are dropped and built again from the log;
* two writers of one ledger write their rows without disagreeing.

The property test of tests/test_api.py compares the row-backed state (with a tiny cache) to the
reference after every generated command as well.
"""

from __future__ import annotations

import pytest

from reledger.commands.api import CommandAPI, CommandError
from reledger.commands.state import WriteState
from reledger.commands.writerows import META, TABLE, WriteRows
from reledger.projections.state import decode, encode
from test_api import T0, World, example, run_scenario


def reference(store) -> WriteState:
    ref = WriteState()
    ref.catch_up(store.records(0))
    return ref


def assert_agrees(st: WriteState, ref: WriteState) -> None:
    assert (st.size, st.last_hash, st.heads, st.parties, st.quota_batches, st.params) == \
        (ref.size, ref.last_hash, ref.heads, ref.parties, ref.quota_batches, ref.params)
    assert (st.registry.roles, st.registry.keys, st.registry.registered, st.registry.root,
            st.registry.designations) == (ref.registry.roles, ref.registry.keys, ref.registry.registered,
                                          ref.registry.root, ref.registry.designations)
    assert st.lots.to_dict() == ref.lots and st.shipments.to_dict() == ref.shipments
    assert st.batches.to_dict() == ref.batches
    # and key by key, through the (bounded) cache: what the write path asks
    for k, v in ref.lots.items():
        assert st.lots.get(k) == v and k in st.lots
    for k, v in ref.shipments.items():
        assert st.shipments.get(k) == v
    for k in ref.batches:
        assert k in st.batches
    assert "NO-SUCH-LOT" not in st.lots and st.shipments.get(("MINE01", "NO-SUCH")) is None


def restart(w, parsed: int, **kw) -> None:
    """Close the world's command API and start another (``kw`` its options): its start parses
    ``parsed`` log entries, and its state agrees with the in-memory reference."""
    w.api.close()
    w.api = CommandAPI(w.store, **kw)
    w.api.catch_up()
    assert w.api.state.parsed == parsed
    assert_agrees(w.api.state, reference(w.store))


def tiny(store, **kw) -> CommandAPI:
    return CommandAPI(store, cache_entries=kw.pop("cache_entries", 2), flush_every=kw.pop("flush_every", 3), **kw)


def rows_of(url: str, ns: str) -> dict:
    from reledger.storage.store import LedgerStore

    with LedgerStore(url) as store:
        rows = WriteRows.open(store)
        try:
            return {decode(k): decode(v) for k, v in rows.scan(ns)}
        finally:
            rows.close()


@pytest.fixture
def tworld(db_url):
    """A world whose command API has a cache of two values and writes its rows every 3 entries."""
    w = World(db_url)
    w.api.close()
    w.api = tiny(w.store)
    yield w
    w.close()


def test_rows_agree_with_memory_during_and_after(tworld):
    w = tworld
    run_scenario(w)
    assert w.api.state.rows is not None and w.api.state.rows.cached() <= 2 * 3 + 40  # (bounded by the flushes)
    assert_agrees(w.api.state, reference(w.store))
    for cache in (1, 3, 10_000):
        fresh = tiny(w.store, cache_entries=cache, flush_every=1)
        try:
            fresh.catch_up()
            assert_agrees(fresh.state, reference(w.store))
        finally:
            fresh.close()


def test_restart_parses_only_the_tail(db_url):
    w = World(db_url)
    try:
        w.api.close()
        w.api = CommandAPI(w.store, flush_every=5)
        run_scenario(w)
        size = w.store.size()
        w.api.close()  # writes the rows up to the log's size
        again = CommandAPI(w.store)
        again.catch_up()
        assert again.state.size == size and again.state.parsed == 0 and again.state.rows.position == size
        assert_agrees(again.state, reference(w.store))
        again.close()
        # entries appended behind any writer's back (the store directly): only they are parsed
        s = w.signers["MINE01"]
        lots = [s.sign("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"),
                                                  "lot": f"TAIL-{i}"}, T0) for i in range(4)]
        w.store.append(lots)
        w.api = CommandAPI(w.store, flush_every=10_000)
        w.api.catch_up()
        assert w.api.state.parsed == 4 and "TAIL-3" in w.api.state.lots
        assert_agrees(w.api.state, reference(w.store))
        # a crash (no close, no flush): the next start parses the tail since the rows' position
        w.ok("MINE01", "MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": "LAST"})
        w.api._drop_state()
        w.api.catch_up()
        assert w.api.state.parsed == 5 and "LAST" in w.api.state.lots
        assert_agrees(w.api.state, reference(w.store))
    finally:
        w.close()


def test_a_refused_group_leaves_no_rows(tworld):
    w = tworld
    w.api.close()
    w.api = tiny(w.store, cache_entries=1, flush_every=1)
    m = w.signers["MINE01"]
    good = m.sign("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": "GOOD"}, T0)
    # a group of two: a new lot, then the lot id another group of the same commit takes first
    s = w.signers["SEP01"]
    first = s.peek("ImportReceived", {**example(w, "ImportReceived", "SEP01"), "lot": "BAD-1"}, T0)
    s.advance(first)
    second = s.peek("ImportReceived", {**example(w, "ImportReceived", "SEP01"), "lot": "GOOD"}, T0)
    s.seq, s.head = first.entry.seq - 1, first.entry.prev
    results = w.api.submit_groups([[good], [first, second]])
    assert isinstance(results[0], list) and isinstance(results[1], CommandError)
    assert results[1].code == "duplicate" and results[1].position == 1
    w.api.close()
    lots = rows_of(w.store.url, "lots")
    assert "GOOD" in lots and "BAD-1" not in lots
    fresh = CommandAPI(w.store)
    try:
        fresh.catch_up()
        assert fresh.state.parsed == 0 and "BAD-1" not in fresh.state.lots and "GOOD" in fresh.state.lots
        assert_agrees(fresh.state, reference(w.store))
    finally:
        fresh.close()


def test_duplicate_command_ids_after_restart(tworld):
    w = tworld
    s = w.signers["SEP01"]
    e = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "9"}, T0)
    first = w.api.submit([e])[0]
    s.advance(e)
    w.api.close()
    fresh = tiny(w.store)
    try:
        fresh.catch_up()
        assert fresh.state.parsed == 0
        again = fresh.submit([e])[0]
        assert again.duplicate and again.index == first.index
        other = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "10"}, T0, command_id=e.entry.command_id)
        with pytest.raises(CommandError) as ei:
            fresh.submit([other])
        assert ei.value.code == "command_conflict" and f"log index {first.index}" in ei.value.message
        # a retry in a group beside a new entry: the retry answers its receipt, the other is written
        new = s.peek("StockCounted", {"product": "Nd2O3", "counted_kg": "11"}, T0)
        r = fresh.submit_groups([[e], [new]])
        assert r[0][0].duplicate and r[0][0].index == first.index and not r[1][0].duplicate
        s.advance(new)
    finally:
        fresh.close()


def test_rows_of_another_log_are_rebuilt(db_url):
    w = World(db_url)
    try:
        run_scenario(w)
        w.api.close()
        rows = WriteRows.open(w.store)
        if rows.pg:
            with rows.conn.transaction():
                rows.conn.execute(f"UPDATE {TABLE} SET v = %s WHERE ns = %s AND k = %s",
                                  (encode(bytes(32)), META, encode("hash")))
        else:
            rows.conn.execute(f"UPDATE {TABLE} SET v = ? WHERE ns = ? AND k = ?", (encode(bytes(32)), META, encode("hash")))
        rows.close()
        w.api = CommandAPI(w.store)
        w.api.catch_up()
        assert w.api.state.parsed == w.store.size()  # built again from the whole log
        assert_agrees(w.api.state, reference(w.store))
    finally:
        w.close()


def test_two_writers_share_the_rows(db_url):
    """Two command APIs on one ledger (two servers): each writes rows, the rows follow the log,
    and each still checks against the log as it is."""
    w = World(db_url)
    other = tiny(w.store, flush_every=1)
    try:
        w.api.close()
        w.api = tiny(w.store, flush_every=2)
        for i in range(6):
            api = w.api if i % 2 else other
            s = w.signers["MINE01"]
            e = s.peek("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"), "lot": f"L2-{i}"},
                       T0)
            api.submit([e])
            s.advance(e)
            # the lot is taken for both
            dup = w.signers["SEP01"].peek("ImportReceived", {**example(w, "ImportReceived", "SEP01"),
                                                            "lot": f"L2-{i}"}, T0)
            for a in (w.api, other):
                with pytest.raises(CommandError) as ei:
                    a.submit([dup])
                assert ei.value.code == "duplicate"
        for a in (w.api, other):
            a.catch_up()
            assert_agrees(a.state, reference(w.store))
        other.close()
        restart(w, 0)
    finally:
        other.close()
        w.close()


def test_memory_state_is_still_the_reference(db_url):
    """``CommandAPI(rows=False)`` keeps the state in memory (the tests' reference) and writes no rows."""
    w = World(db_url)
    try:
        w.api.close()
        w.api = CommandAPI(w.store, rows=False)
        run_scenario(w)
        assert w.api.state.rows is None and w.api.state.lots == reference(w.store).lots
    finally:
        w.close()


def test_a_ledger_without_the_table_gains_it_once(db_url):
    """A ledger made before the table existed: the first writing command makes it and builds it
    from the whole log (writing as it goes); the next start parses nothing."""
    w = World(db_url)
    try:
        run_scenario(w)
        w.api.close()
        rows = WriteRows.open(w.store)
        rows.conn.execute(f"DROP TABLE {TABLE}")
        rows.close()
        restart(w, w.store.size(), flush_every=7)  # built from the whole log, written as it goes
        assert w.api.state.rows.position > 0
        restart(w, 0)
    finally:
        w.close()


def test_a_role_without_rights_on_the_table_keeps_the_state_in_memory(pg_url):
    """PostgreSQL: a serving role granted before the table existed (or not at all) cannot use
    it: the writer keeps its state in memory (built from the whole log, as before the table
    existed) instead of failing every append; the owner's grant ends that."""
    import uuid

    import psycopg

    from conftest import PG_URL
    from reledger.commands import writerows
    from reledger.storage.reader import DatabaseURL
    from reledger.storage.store import LedgerStore

    w = World(pg_url)
    role = "reledger_wr_" + uuid.uuid4().hex[:8]
    u = DatabaseURL.parse(pg_url)
    try:
        w.store.grant_serving_role(role)  # the ledger's grants only: none on reledger_w_state
        role_url = f"postgresql://{role}@{u.host}:{u.port}/{u.dbname}?schema={u.schema}"
        with LedgerStore(role_url, create=False, processes=False) as store:
            api = CommandAPI(store)
            try:
                api.catch_up()
                assert api.state.rows is None and api.state.size == store.size()
                s = w.signers["MINE01"]
                e = s.peek("MineralProductProduced", {**example(w, "MineralProductProduced", "MINE01"),
                                                      "lot": "ROLE-1"}, T0)
                assert not api.submit([e])[0].duplicate
                s.advance(e)
            finally:
                api.close()
            writerows.grant_serving_role(pg_url, role)  # the owner's grant
            api = CommandAPI(store)
            try:
                api.catch_up()
                assert api.state.rows is not None and "ROLE-1" in api.state.lots
            finally:
                api.close()
    finally:
        w.close()
        with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize("damaged", ["lots", "registry"])
def test_damaged_rows_are_built_again_from_the_log(db_url, damaged):
    """A row of the write state that cannot be read (a damaged or foreign value; nothing read
    back runs): a grown map's value met by a submission, or a small part read at start. The rows
    are derived: they are built again from the log, the submission is answered as if nothing
    had happened, and the state agrees with the reference."""
    w = World(db_url)
    try:
        run_scenario(w)
        w.api.close()
        rows = WriteRows.open(w.store)
        if damaged == "lots":
            where, params = "ns = ?", ("lots",)
        else:
            where, params = "ns = ? AND k = ?", (META, encode("registry"))
        sql = f"UPDATE {TABLE} SET v = ? WHERE {where}"
        if rows.pg:
            with rows.conn.transaction():
                rows.conn.execute(sql.replace("?", "%s"), (b"\xc1", *params))
        else:
            rows.conn.execute(sql, (b"\xc1", *params))
        rows.close()
        w.api = CommandAPI(w.store)
        size = w.store.size()
        # a lot id that is taken: the check reads that lot's row (damaged in the first case)
        again = w.attempt("MINE01", "MineralProductProduced",
                          {**example(w, "MineralProductProduced", "MINE01"), "lot": "M-1"})
        assert isinstance(again, CommandError) and again.code == "duplicate", again
        assert w.store.size() == size
        assert w.api.state.parsed == size  # built again from the whole log
        assert_agrees(w.api.state, reference(w.store))
        receipt = w.ok("MINE01", "MineralProductProduced", example(w, "MineralProductProduced", "MINE01"))
        assert receipt.index == size
        restart(w, 0)
    finally:
        w.close()
