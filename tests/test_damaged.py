"""A damaged database (a row rewritten behind the ledger's back) does not stop the projections:
the unreadable entry is flagged where it stands and everything else is still shown."""

from __future__ import annotations

from helpers import drop_triggers, populated_ledger, sql
from reledger.projections import queries
from reledger.projections.store import ProjectionStore


def test_projections_flag_an_unreadable_entry_and_go_on(db_url):
    led = populated_ledger(db_url, parties=1, per_party=4)
    size = led.store.size()
    rec = led.store.record(6)
    led.close()
    drop_triggers(db_url)
    sql(db_url, "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (b"\x00not msgpack", rec.chain, rec.seq))
    ps = ProjectionStore(db_url)
    try:
        assert ps.catch_up() == size
        found = queries.findings(ps)["findings"]
        bad = [f for f in found if f["code"] == "UNREADABLE_ENTRY"]
        assert len(bad) == 1 and bad[0]["index"] == 6 and bad[0]["evidence"][0]["seq"] == rec.seq
        assert ps.position() == size
    finally:
        ps.close()
