"""The store's checking processes: how a group is shared among them, and the counting a worker
does while it checks (storage/pool.py ``shares``, ``check_counting``)."""

from __future__ import annotations

import ctypes

from hypothesis import given, settings, strategies as st

from reledger.ledger.entry import check_envelopes
from reledger.ledger.genesis import ChainSigner
from reledger.ledger.registry import REGISTRY_TYPES
from reledger.storage.pool import PROGRESS_STEP, check_counting, shares as shares_of

from helpers import T0, seeded_key

KEY = seeded_key("91110000MINE0001", 11)
SIGNER = ChainSigner(KEY)
ENVELOPES = [SIGNER.sign("MiningOutput", {"qty": f"{i}.5", "lot": f"L{i}"}, T0).envelope for i in range(100)]


@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=6),
       st.integers(min_value=0, max_value=3000), st.integers(min_value=1, max_value=64))
def test_shares_fill_the_least_loaded_workers_to_one_level(loads, n, least):
    shares = shares_of(loads, n, least)
    assert len(shares) == len(loads) and all(s >= 0 for s in shares)
    assert sum(shares) == n
    given_to = [i for i, s in enumerate(shares) if s]
    if len(given_to) > 1:  # no small share beside others
        assert all(shares[i] >= least for i in given_to)
    final = [load + s for load, s in zip(loads, shares)]
    # a worker given envelopes ends near the lowest final load, and a worker given none already
    # had about as much as the others end with (off by the small shares moved, and rounding)
    slack = len(loads) * least + 1
    for i in given_to:
        assert final[i] <= min(final) + slack
    for i in range(len(loads)):
        if not shares[i] and given_to:
            assert loads[i] + slack >= min(final[j] for j in given_to)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=100), st.one_of(st.none(), st.integers(min_value=0, max_value=99)),
       st.booleans())
def test_check_counting_answers_as_check_envelopes(n, bad, known_key):
    """A worker checks its task in steps of PROGRESS_STEP, counting as it goes: the answer is
    check_envelopes' own (a refusal's position within the whole task), and the count ends at
    the task's size, refused or not."""
    envs = list(ENVELOPES[:n])
    if bad is not None and bad < n:
        env = bytearray(envs[bad])
        env[-1] ^= 1  # a bad signature (refused only when the key is known)
        envs[bad] = bytes(env)
    if bad is not None and bad + 1 < n:
        envs[bad + 1] = envs[bad + 1][:-3]  # malformed, after it
    keys = {KEY.key_id: KEY.public_key} if known_key else {}
    counter = ctypes.c_longlong(5)
    assert check_counting(envs, keys, counter) == check_envelopes(envs, keys, REGISTRY_TYPES)
    assert counter.value == 5 + n
    assert check_counting(envs, keys) == check_envelopes(envs, keys, REGISTRY_TYPES)


def test_a_worker_reports_progress_within_a_task():
    """A task longer than a step moves the shared counter several times as the worker goes, by
    at most PROGRESS_STEP each time, and by the whole task in all (what the store reads to know
    how far a worker is)."""

    class Recording:  # a counter that remembers every value the worker gave it
        def __init__(self) -> None:
            self.seen = [0]

        @property
        def value(self) -> int:
            return self.seen[-1]

        @value.setter
        def value(self, v: int) -> None:
            self.seen.append(v)

    counter = Recording()
    check_counting(ENVELOPES, {KEY.key_id: KEY.public_key}, counter)
    steps = [b - a for a, b in zip(counter.seen, counter.seen[1:])]
    assert len(ENVELOPES) > 2 * PROGRESS_STEP  # the task really spans several steps
    assert len(steps) >= 3 and all(0 < s <= PROGRESS_STEP for s in steps)
    assert sum(steps) == len(ENVELOPES)


def test_repeated_names_are_one_object_in_an_answer():
    """Chain, type and key id repeat from entry to entry: check_envelopes answers one object
    for each, so the answer pickles each once and the writer hashes each once."""
    a = check_envelopes(ENVELOPES[:3], {}, REGISTRY_TYPES)
    for i in (0, 3, 4):  # chain, type, key id
        assert a[0][i] is a[1][i] is a[2][i]


def test_sqlite_write_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    """The SQLite append transaction pauses the cyclic garbage collector and restores it, also
    when the transaction fails, and leaves it off when it was off."""
    import gc

    import pytest

    from helpers import new_ledger
    from reledger.storage.store import AppendError

    led = new_ledger(f"sqlite:///{tmp_path / 'l.db'}")
    try:
        assert gc.isenabled()
        led.register("91110000MINE0001", ["MINE"])
        assert gc.isenabled()
        with pytest.raises(AppendError):
            led.store.append([ENVELOPES[1]])  # seq 2 first: refused
        assert gc.isenabled()

        def failing(cur):
            raise RuntimeError("plan failed")

        with pytest.raises(RuntimeError):
            led.store.recorder.write(failing)
        assert gc.isenabled()
        gc.disable()
        try:
            led.add("91110000MINE0001", 1)
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        led.close()
