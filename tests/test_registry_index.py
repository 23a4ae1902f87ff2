"""The log's partial index of key-registry entries (storage/schema.py): the writer's store reads its
registry through it (not by a scan of the whole log at its first append), and gets the same
registry as the verifiers' scan; a ledger made before the index gains it when opened to write."""

from __future__ import annotations

import sqlite3

import psycopg

from reledger.ledger.registry import REGISTRY_TYPES
from reledger.storage.reader import DatabaseURL
from reledger.storage.store import LedgerStore

from projection_helpers import copy_cut



def _index_names(url: str) -> set[str]:
    db = DatabaseURL.parse(url)
    if db.backend == "sqlite":
        with sqlite3.connect(db.path) as c:
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    with psycopg.connect(db.conninfo(), autocommit=True) as c:
        return {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (db.schema,))}


def _drop_index(url: str) -> None:
    db = DatabaseURL.parse(url)
    if db.backend == "sqlite":
        with sqlite3.connect(db.path) as c:
            c.execute("DROP INDEX reledger_log_registry")
    else:
        with psycopg.connect(db.conninfo(), autocommit=True) as c:
            c.execute(f'DROP INDEX "{db.schema}".reledger_log_registry')


def test_the_writer_reads_the_registry_through_the_index(demo_ledger, db_url):
    with LedgerStore(demo_ledger, create=False) as src:
        size = src.size()
        store = copy_cut(src, size, db_url)
    try:
        assert "reledger_log_registry" in _index_names(db_url)
        cur = store.read_cursor()
        by_index = store.queries.registry_records(cur, 0, size)
        by_scan = store.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, size)
        assert [r.index for r in by_index] == [r.index for r in by_scan]
        assert len(by_scan) > 10 and all(r.type in REGISTRY_TYPES for r in by_scan)
        # the registry the store keeps is the one the verifiers build from the scan
        live, scanned = store.current_registry(), store.registry(size)
        assert (live.keys, live.roles, live.designations) == (scanned.keys, scanned.roles, scanned.designations)
        if db_url.startswith("sqlite"):
            plan = " ".join(str(r) for r in sqlite3.connect(DatabaseURL.parse(db_url).path).execute(
                "EXPLAIN QUERY PLAN SELECT idx FROM reledger_log l WHERE l.idx >= 0 AND l.idx < 9 AND l.type IN ("
                + ", ".join(f"'{t}'" for t in sorted(REGISTRY_TYPES)) + ")"))
            assert "reledger_log_registry" in plan
    finally:
        store.close()


def test_a_ledger_without_the_index_gains_it_when_opened_to_write(demo_ledger, db_url):
    with LedgerStore(demo_ledger, create=False) as src:
        copy_cut(src, 40, db_url).close()
    _drop_index(db_url)
    assert "reledger_log_registry" not in _index_names(db_url)
    with LedgerStore(db_url, create=False) as s:  # reading: nothing made
        assert s.size() == 40
    assert "reledger_log_registry" not in _index_names(db_url)
    with LedgerStore(db_url) as s:
        assert len(s.current_registry().keys) > 0
    assert "reledger_log_registry" in _index_names(db_url)
