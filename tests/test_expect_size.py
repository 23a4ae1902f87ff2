"""``LedgerStore.append_groups(..., expect_size=n)``: the write happens only if the log holds
exactly n entries under the lock; else LogMoved (with the size found) and nothing is written.
The command API builds on it to check against a state it knows is the log's (test_api,
test_http)."""

from __future__ import annotations

import pytest

from helpers import fact, new_ledger
from ledger.store import LedgerStore, LogMoved
from ledger.verify import verify_database

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
