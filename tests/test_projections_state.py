"""The rule state as rows (projections/state.py) against the in-memory fold from scratch.

The reference is ``Projector()`` (plain dicts in memory) folded over the whole log; the store
under test keeps the state as rows behind a tiny cache (so that values are evicted and read
back all the time), follows the log in uneven steps, is closed and reopened at random
positions, and is made to fail half-way through a page's transaction. Its derived rows, and
its stored rule state, must equal the reference's, on both backends.
"""

from __future__ import annotations

import random

import pytest

import reledger.projections.rowevents as rowevents
import reledger.projections.state as rowstate
import reledger.projections.store as pstore
from reledger.projections.check import _normaliser, verify_projections
from reledger.projections.model import Projector
from reledger.projections.store import COLUMNS, P, ROW_TABLES, ProjectionStore, page_rows
from reledger.storage.store import LedgerStore

from projection_helpers import copy_cut



def reference(url: str, n: int) -> tuple[Projector, dict[str, list]]:
    """The in-memory fold from scratch of the first ``n`` entries, and its rows (normalised, sorted)."""
    proj = Projector()
    rows: dict[str, list] = {t: [] for t in ROW_TABLES}
    sums = []
    with LedgerStore(url, create=False) as s:
        records = list(s.records(0, n))
    every = pstore.QUOTA_SUMS_EVERY
    start = 0
    while start < n:
        end = min(n, (start // every + 1) * every)
        got, _ = page_rows(proj, records[start:end])
        for t in ROW_TABLES:
            rows[t] += got[t]
        if end % every == 0:
            sums += [(end, *k, g) for k, g in proj.quota_sums.items()]
        start = end
    out = {t: sorted((_normaliser(t)(r) for r in rows[t]), key=repr) for t in ROW_TABLES}
    out["quota_sums"] = sorted((_normaliser("quota_sums")(r) for r in sums), key=repr)
    return proj, out


def table_rows(ps: ProjectionStore) -> dict[str, list]:
    out = {}
    for t in ROW_TABLES + ("quota_sums",):
        norm = _normaliser(t)
        out[t] = sorted((norm(r) for r in ps.execute(f"SELECT {', '.join(COLUMNS[t])} FROM {P}{t}")), key=repr)
    return out


def stored_state(url: str) -> dict[str, dict]:
    """Every namespace of the stored rule state, decoded (what the rows hold)."""
    ps = ProjectionStore(url)
    try:
        out: dict[str, dict] = {}
        for ns, k, v in ps.execute(f"SELECT ns, k, v FROM {P}state"):
            out.setdefault(ns, {})[rowstate.decode(k)] = rowstate.decode(v)
        due: dict[str, list] = {}
        for q, item in ps.execute(f"SELECT queue, item FROM {P}due ORDER BY queue, due, a, b, id"):
            due.setdefault(q, []).append(rowstate.decode(item))
        events: dict[str, dict] = {}  # ns -> key -> events in (occ, n) order
        for ns, k, v in ps.execute(f"SELECT ns, k, v FROM {P}events ORDER BY ns, k, occ, n"):
            events.setdefault(ns, {}).setdefault(rowstate.decode(k), []).append(rowstate.decode(v))
        return {"state": out, "due": due, "events": events}
    finally:
        ps.close()


def assert_state_equal(ref: Projector, url: str) -> None:
    got = stored_state(url)
    state, due = got["state"], got["due"]
    meta = state.get(rowstate.META, {})
    for name, value in vars(ref).items():
        if isinstance(value, dict) and name != "params":
            assert state.get(name, {}) == value, name
        elif isinstance(value, set):
            assert set(state.get(name, {})) == value, name
        elif isinstance(value, rowstate.HeapQueue):
            assert due.get(name, []) == sorted(value.items), name
        elif isinstance(value, (rowstate.Timelines, rowstate.Lists)):
            held = value.events if isinstance(value, rowstate.Timelines) else value.items
            assert got["events"].get(name, {}) == {k: v for k, v in held.items() if v}, name
        elif isinstance(value, rowstate.ChainHashes):
            lens = state.get(name + ".len", {})
            assert lens == {c: len(h) for c, h in value.hashes.items()}
            assert state.get(name, {}) == {(c, i + 1): x for c, h in value.hashes.items() for i, x in enumerate(h)}
        elif name != "_cur_key":
            assert meta.get(name, value) == value, name


@pytest.mark.parametrize("seed", [1, 2])
def test_row_state_equals_the_in_memory_fold_across_restarts_and_failures(demo_ledger, db_url, seed, monkeypatch):
    monkeypatch.setattr(rowstate, "CACHE_ENTRIES", 60)  # evicted and read back all the time
    monkeypatch.setattr(rowstate, "SMALL_MAP", 4)
    monkeypatch.setattr(rowevents, "PAGE", 3)  # the timelines read back a few rows a query
    monkeypatch.setattr(rowevents, "LAST_KEYS", 5)  # and their last business times forgotten
    monkeypatch.setattr(pstore, "QUOTA_SUMS_EVERY", 97)
    rnd = random.Random(seed)
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, db_url).close()
    ps = ProjectionStore(db_url)
    failures = 0
    try:
        while ps.position() < size:
            step = rnd.choice([1, 2, 7, 50, 130, 400])
            if rnd.random() < 0.15 and failures < 3:
                # fail inside the page's transaction, after the state's rows are written: the
                # transaction rolls back, the cache is dropped, the rows are read again
                real = ProjectionStore._advance

                def broken(self, cur, start, stop, rows, proj, copy=True):
                    real(self, cur, start, stop, rows, proj, copy)
                    raise RuntimeError("killed mid-transaction")

                monkeypatch.setattr(ProjectionStore, "_advance", broken)
                before = ps.position()
                with pytest.raises(RuntimeError):
                    ps.catch_up(limit=step, page=rnd.choice([3, 40]))
                monkeypatch.setattr(ProjectionStore, "_advance", real)
                assert ps.position() == before
                failures += 1
            ps.catch_up(limit=step, page=rnd.choice([5, 33, 2000]))
            if rnd.random() < 0.3:  # a restart at an arbitrary position
                ps.close()
                ps = ProjectionStore(db_url)
            n = ps.position()
            if ps.projector is not None and n > 300:  # the cache is bounded: values were evicted
                assert any(not m.complete for m in ps.projector.row_state.maps)
            if rnd.random() < 0.15 or n == size:
                ref, want = reference(demo_ledger, n)
                assert table_rows(ps) == want, n
                assert_state_equal(ref, db_url)
    finally:
        ps.close()
    check = verify_projections(db_url)
    assert check.ok and check.entries == size, check.problems[:5]


def test_a_state_of_other_rules_or_none_is_folded_again(demo_ledger, sqlite_url, monkeypatch):
    """A ledger projected without state rows (an earlier version) or by other rules: the state
    is folded again from the log (state only) and following goes on with the same rows."""
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, sqlite_url).close()
    ps = ProjectionStore(sqlite_url)
    ps.catch_up(limit=size // 2)
    ps.execute(f"DELETE FROM {P}state")
    ps.execute(f"DELETE FROM {P}due")
    ps.close()
    ps = ProjectionStore(sqlite_url)
    ps.catch_up(limit=size // 4)
    ps.execute(f"UPDATE {P}state SET v = ? WHERE ns = ? AND k = ?",
               (rowstate.encode("other"), rowstate.META, rowstate.encode("_rules")))
    ps.close()
    ps = ProjectionStore(sqlite_url)
    ps.catch_up()
    ref, want = reference(demo_ledger, size)
    assert table_rows(ps) == want
    ps.close()
    assert_state_equal(ref, sqlite_url)


def _random_value(rnd: random.Random, depth: int = 0):
    from decimal import Decimal

    from reledger.projections.model import LotInfo

    if depth > 3 or rnd.random() < 0.45:
        return rnd.choice([0, 1, -(2**63), 2**64 - 1, "", "x", "é€", b"", b"\x00ab", None, True, False,
                           Decimal("1.50"), Decimal("-0")])
    kind = rnd.choice("ltsfdL")
    n = rnd.randint(0, 5)
    if kind == "l":
        return [_random_value(rnd, depth + 1) for _ in range(n)]
    if kind == "t":
        return tuple(_random_value(rnd, depth + 1) for _ in range(n))
    if kind in "sf":
        items = [rnd.choice([1, 2, "a", "b", (1, "x"), None]) for _ in range(n)]
        return set(items) if kind == "s" else frozenset(items)
    if kind == "d":
        return {rnd.choice([1, "a", (1, 2), "b", None]): _random_value(rnd, depth + 1) for _ in range(n)}
    return LotInfo("L", "P", rnd.choice([None, "PrNd"]), "MINE", ("c", 1, b"h", 2), None, Decimal("0"),
                   Decimal("0.1"), Decimal("0"), rnd.choice([None, ("c", 2, b"i", 3)]))


def test_the_state_encoding_is_the_canonical_msgpack_of_the_plain_form():
    """projections/state.py encodes a value in one msgpack call on snapshot.packable's form: the
    bytes are those of the plain-data form (snapshot._plain) made canonical, value by value, and
    what the plain form refuses is refused (SnapshotError)."""
    from reledger.ledger import encoding
    from reledger.projections import snapshot

    rnd = random.Random(7)
    for _ in range(3000):
        v = _random_value(rnd)
        assert rowstate.encode(v) == encoding.canonical(snapshot._plain(v)), v
        assert rowstate.decode(rowstate.encode(v)) == v
    for bad in ([1, 2**64], ("a", "\ud800"), {1: [2**70]}, [[-(2**63) - 1]], 2**64, "\udcff", [1.5], {"a": object()}):
        with pytest.raises(snapshot.SnapshotError):
            rowstate.encode(bad)
    assert rowstate.encode([1, "a"]) == encoding.canonical(["l", [1, "a"]])  # nothing left behind by a refusal


def test_key_filter_never_says_no_to_a_key_it_was_given():
    rnd = random.Random(3)
    f = rowstate.KeyFilter(1 << 12)  # small: many "maybe"s, never a wrong "no"
    keys = [(rnd.choice(["a", "b"]), rnd.randint(0, 10**6), str(rnd.random())) for _ in range(3000)]
    for k in keys[:1500]:
        f.add(hash(k) ^ hash("ns"))
    assert all(f.may_hold(hash(k) ^ hash("ns")) for k in keys[:1500])
    big = rowstate.KeyFilter(1 << 20)
    for k in keys[:1500]:
        big.add(hash(k))
    assert sum(big.may_hold(hash(k)) for k in keys[1500:]) < 15  # and mostly "no" when it has room


@pytest.mark.parametrize("bits", [1 << 27, 8])
def test_a_state_made_from_empty_asks_no_query_for_keys_it_never_wrote(demo_ledger, db_url, bits, monkeypatch):
    """A rebuild (a state made from empty) behind a tiny cache: the lookups of keys that were
    never written (a new lot's balance, timeline, open finding) are answered by the filter of the
    keys written, without a query; a filter that answers "maybe" to everything (8 bits) asks the
    database every time. Either way the rows and the state are those of the in-memory fold."""
    monkeypatch.setattr(rowstate, "CACHE_ENTRIES", 60)
    monkeypatch.setattr(rowstate, "SMALL_MAP", 4)
    monkeypatch.setattr(rowstate, "KEY_FILTER_BITS", bits)
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 37)  # a trim of the cache every 37 entries
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, db_url).close()
    fetched = {"absent": 0, "found": 0}
    real_fetch = rowstate.RowState.fetch

    def fetch(self, ns, k):
        row = real_fetch(self, ns, k)
        fetched["absent" if row is None else "found"] += 1
        return row

    monkeypatch.setattr(rowstate.RowState, "fetch", fetch)
    evicted = []
    real_move = pstore.ProjectionStore._move_state

    def move_state(self, scratch):  # the rebuild's state (in its scratch file) before it moves in
        evicted.append(any(not m.complete for m in self.projector.row_state.maps))
        return real_move(self, scratch)

    monkeypatch.setattr(pstore.ProjectionStore, "_move_state", move_state)
    ps = ProjectionStore(db_url)
    try:
        ps.rebuild()
        assert evicted == [True]  # values were evicted
        ref, want = reference(demo_ledger, size)
        assert table_rows(ps) == want
    finally:
        ps.close()
    assert_state_equal(ref, db_url)
    assert fetched["found"] > 0
    if bits == 8:
        assert fetched["absent"] > 100
    else:
        assert fetched["absent"] < fetched["found"] // 10 + 5


def test_a_rebuild_moves_its_state_in_and_the_follower_carries_on(demo_ledger, db_url, monkeypatch):
    """A rebuild folds the rule state in a scratch file of its own and moves it into the ledger
    at the end (projections/store.py ``rebuild``): the state moved in is the in-memory fold's,
    and the follower carries on from it (the rest of the log appended, then caught up) to the
    rows and state of the fold of the whole log."""
    monkeypatch.setattr(rowstate, "CACHE_ENTRIES", 60)
    monkeypatch.setattr(rowstate, "SMALL_MAP", 4)
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 53)
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        half = size // 2
        dst = copy_cut(src, half, db_url)
        ps = ProjectionStore(db_url)
        try:
            assert ps.rebuild() == half
            assert ps.projector is None  # the next catch-up reads the state where it now is
            ref, want = reference(demo_ledger, half)
            assert table_rows(ps) == want
            assert_state_equal(ref, db_url)
            clock = {"t": 0}
            dst.clock = lambda: clock["t"]
            for rec in src.records(half, size):
                clock["t"] = rec.recorded_us
                dst.append([rec.envelope])
            assert ps.catch_up() == size - half
            ref, want = reference(demo_ledger, size)
            assert table_rows(ps) == want
        finally:
            ps.close()
            dst.close()
    assert_state_equal(ref, db_url)


def test_a_rebuild_that_fails_half_way_leaves_rows_the_follower_completes(demo_ledger, db_url, monkeypatch):
    """A rebuild stopped half-way (here: its page 4 fails) leaves the derived rows of the pages
    it committed and no rule state (that was in the scratch file): the next catch-up folds the
    state again from the log up to the position (its rows exist) and carries on, to the rows
    and state of the fold of the whole log."""
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 41)
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, db_url).close()
    calls = {"n": 0}
    real_apply = pstore.ProjectionStore._apply_page

    def apply_page(self, proj, page):
        calls["n"] += 1
        if self._scratch is not None and calls["n"] == 4:
            raise RuntimeError("the machine went away")
        return real_apply(self, proj, page)

    monkeypatch.setattr(pstore.ProjectionStore, "_apply_page", apply_page)
    ps = ProjectionStore(db_url)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            ps.rebuild()
        assert ps.position() == 3 * 41
        assert stored_state(db_url)["state"] == {}  # the state never reached the ledger
    finally:
        ps.close()
    ps = ProjectionStore(db_url)
    try:
        assert ps.catch_up() == size - 3 * 41
        ref, want = reference(demo_ledger, size)
        assert table_rows(ps) == want
    finally:
        ps.close()
    assert_state_equal(ref, db_url)


def test_a_rebuild_beside_another_follower(demo_ledger, db_url, monkeypatch):
    """Another process catches up while a rebuild runs (``serve``'s follower, an append's
    findings hook): it finds the projections at a position with no state and folds the state
    again itself; the rebuild's move at the end replaces what it wrote. And a follower that had
    decided to fold again just before the move does not delete the state moved in."""
    monkeypatch.setattr(pstore, "REBUILD_PAGE", 97)
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        copy_cut(src, size, db_url).close()
    real_move = pstore.ProjectionStore._move_state
    other = ProjectionStore(db_url)

    def move_state(self, scratch):
        assert other.catch_up() == 0  # nothing to project: it folds the missing state again
        assert stored_state(db_url)["state"]  # and writes it
        return real_move(self, scratch)

    monkeypatch.setattr(pstore.ProjectionStore, "_move_state", move_state)
    ps = ProjectionStore(db_url)
    try:
        assert ps.rebuild() == size
        ref, want = reference(demo_ledger, size)
        assert table_rows(ps) == want
    finally:
        ps.close()
    assert_state_equal(ref, db_url)
    applied = []
    real_apply = pstore.apply_record
    monkeypatch.setattr(pstore, "apply_record", lambda proj, rec: applied.append(rec.index) or real_apply(proj, rec))
    try:  # a fold decided before the move, carried out after it: the state of that position stays
        other._refold_state(other._log_reader(), size)
        assert applied == []  # kept, not deleted and folded again
        assert_state_equal(ref, db_url)
    finally:
        other.close()
