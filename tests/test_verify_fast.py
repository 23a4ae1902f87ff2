"""verify_database's fast path (storage/verify.py: ranges checked on every core by the rules of
ledger/rules.py, in spawned worker processes, joined by the parent) gives the
same answer as the detailed path on a clean log, and hands any doubt to the detailed path,
which names the problem. The log spans several ranges: full ones, a partial last one, a key
rotation and checkpoints inside a range and on a range boundary."""

from __future__ import annotations

import pytest

import reledger.storage.verify as verify_module
from helpers import drop_triggers, new_ledger, sql
from reledger.ledger.keys import SigningKey
from reledger.storage.verify import verify_database


@pytest.fixture
def big(db_url):
    led = new_ledger(db_url)
    a = led.register("9111000000MINE0001")
    led.register("9111000000MINE0002")
    unit = 1 << verify_module.FAST_BITS
    for _ in range(4):
        led.add("9111000000MINE0001", 500)
        led.add("9111000000MINE0002", 500)
    led.checkpoint()  # inside the first range's successor
    new = SigningKey.generate("9111000000MINE0001")
    led.authorize(new)
    led.revoke("9111000000MINE0001", a.key.key_id)
    a.key = new
    while led.store.size() < 2 * unit:
        led.add("9111000000MINE0002", min(700, 2 * unit - led.store.size()))
    assert led.store.size() == 2 * unit
    led.checkpoint()  # exactly on a range boundary
    led.add("9111000000MINE0001", 300)
    led.checkpoint()  # inside the partial last range
    led.add("9111000000MINE0002", 10)  # after the last checkpoint
    yield led
    led.close()


def _detailed(monkeypatch, url, **kw):
    monkeypatch.setattr(verify_module, "_fast_verify", lambda *a, **k: None)
    try:
        return verify_database(url, **kw)
    finally:
        monkeypatch.undo()


def test_fast_path_equals_the_detailed_path_on_a_clean_log(big, monkeypatch):
    used, started = [], []
    real = verify_module._fast_verify
    monkeypatch.setattr(verify_module, "_fast_verify", lambda *a, **k: used.append(1) or real(*a, **k))
    real_context = verify_module.context  # the workers start as every reledger child does (spawn)
    monkeypatch.setattr(verify_module, "context", lambda: started.append(real_context()) or started[-1])
    fast = verify_database(big.url, workers=2)
    monkeypatch.undo()
    assert used and fast.ok, fast.problems
    assert [c.get_start_method() for c in started] == ["spawn"]
    slow = _detailed(monkeypatch, big.url, workers=1)
    assert slow.ok
    for attr in ("entries", "chains", "keys", "checkpoints", "size", "root", "genesis"):
        assert getattr(fast, attr) == getattr(slow, attr), attr
    assert fast.checkpoints == 3


@pytest.mark.parametrize("statement,index", [
    ("UPDATE {log} SET nodes = ? WHERE idx = 4095", 4095),  # a node above the first range
    ("UPDATE {log} SET recorded_us = recorded_us - 1000000000 WHERE idx = 4096", 4096),  # time across ranges
])
def test_doubt_goes_to_the_detailed_path(big, statement, index):
    drop_triggers(big.url)
    params = (bytes(32 * 13),) if "nodes" in statement else ()
    sql(big.url, statement, params)
    rep = verify_database(big.url, workers=2)
    assert not rep.ok and rep.first.index == index, rep.problems[:3]
