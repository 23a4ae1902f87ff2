"""Crash safety on PostgreSQL: a writer appending one large batch is killed with SIGKILL in
the middle; afterwards the log holds the whole batch or none of it, verifies, and continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from reledger.ledger.encoding import canonical
from reledger.ledger.genesis import ChainSigner
from reledger.storage.reader import DatabaseURL
from reledger.storage.store import LedgerStore
from reledger.storage.verify import verify_database

from conftest import PG_URL, _with_schema, drop_schema, require_pg
from helpers import T0, new_ledger, seeded_key, sql

pytestmark = pytest.mark.postgres

BATCH = 20_000
MINE = "91110000MINE0001"

CHILD = textwrap.dedent("""
    import sys
    from reledger.ledger.encoding import decode
    from reledger.storage.store import LedgerStore

    url, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        envelopes = decode(f.read())
    store = LedgerStore(url, create=False)
    print("ready", flush=True)
    receipts = store.append(envelopes)
    print("done", len(receipts), flush=True)
    store.close()
""")


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory):
    """One chain of BATCH entries of MINE, signed once: its seq 1 starts from the zero hash,
    so the same envelopes fit any fresh ledger where MINE is registered with this key."""
    require_pg()
    key = seeded_key(MINE, 42)
    signer = ChainSigner(key)
    envelopes = [signer.sign("MiningOutput", {"qty": f"{i % 997 + 1}.5", "lot": f"L{i}"}, T0).envelope
                 for i in range(BATCH)]
    path = tmp_path_factory.mktemp("crash") / "batch.msgpack"
    path.write_bytes(canonical(envelopes))
    return key, path, signer


def _write_lock_held(url: str) -> bool:
    """True while some session holds this ledger's writer lock (a transaction advisory lock
    keyed by the log table's name, see storage/postgres.py): the append's write transaction runs."""
    import hashlib

    schema = DatabaseURL.parse(url).schema
    key = int.from_bytes(hashlib.sha256(f"{schema}.reledger_log".encode()).digest()[:8], "big")
    rows = sql(url, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = ? "
                    "AND objid::bigint = ? AND objsubid = 1 AND granted", (key >> 32, key & 0xFFFFFFFF))
    return bool(rows)


def _inserting(url: str) -> str | None:
    """'events' or 'log' while a session inserts into this ledger's events or log table (an
    append inserts its events, then its log rows, then commits); None otherwise."""
    schema = DatabaseURL.parse(url).schema
    rows = sql(url, "SELECT query FROM pg_stat_activity WHERE state = 'active' AND query ILIKE '%%INSERT INTO%%' "
                    "AND query LIKE ? AND pid <> pg_backend_pid()", (f"%{schema}%",))
    for (query,) in rows:
        return "events" if "reledger_events" in query else "log"
    return None


def _run(url: str, path, wait_for: str, delay: float | None) -> tuple[str, int]:
    """Start the writer; once it is at ``wait_for`` ('ready': checking signatures, no lock yet;
    'locked': its write transaction holds the write lock; 'inserting': rows are being
    inserted; 'inserting log': the log rows, the last statement before the commit) wait ``delay`` seconds (or until it exits; None: let it finish) and kill it with SIGKILL. Returns
    the phase seen ('ready', 'locked', 'inserting events', 'inserting log', or 'finished'
    when the writer completed before it was seen) and the writer's exit code."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        phase = wait_for
        if wait_for != "ready":
            deadline = time.monotonic() + 30
            while True:
                seen = _write_lock_held(url) if wait_for == "locked" else _inserting(url)
                if wait_for == "inserting log" and seen != "log":
                    seen = None  # wait for the second insert, the last statement before COMMIT
                if seen:
                    phase = wait_for if seen is True else f"inserting {seen}"
                    break
                if child.poll() is not None:
                    phase = "finished"  # too quick for the probe (a loaded machine): still checked
                    break
                assert time.monotonic() < deadline, f"the writer was never seen {wait_for}"
                time.sleep(0.001)
        if delay is None:
            child.wait(120)  # the control run: the batch completes
        elif delay:
            try:
                child.wait(delay)  # or until it finished
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        return phase, child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _wait_lock_released(url: str) -> None:
    deadline = time.monotonic() + 20
    while _write_lock_held(url):
        assert time.monotonic() < deadline, "the killed writer's transaction never ended"
        time.sleep(0.02)


@pytest.mark.parametrize("wait_for,delay", [("ready", 0), ("locked", 0), ("inserting", 0), ("inserting log", 0),
                                            ("locked", None)])
def test_sigkill_during_large_append(batch_file, wait_for, delay):
    key, path, full_signer = batch_file
    schema = "t_" + uuid.uuid4().hex[:12]
    url = _with_schema(PG_URL, schema)
    try:
        led = new_ledger(url)
        led.register(MINE, key=key)
        before, root_before = led.store.size(), led.store.root()
        led.close()

        phase, code = _run(url, path, wait_for, delay)
        _wait_lock_released(url)

        with LedgerStore(url) as st:
            after = st.size()
            assert after in (before, before + BATCH), f"a partial batch landed: {after - before} of {BATCH}"
            print(f"{wait_for} + {delay}s: seen {phase}, exit {code}, {after - before} entries landed")
            events = sql(url, "SELECT COUNT(*) FROM {events}")[0][0]
            assert events == after
            if after == before:
                assert st.root() == root_before
                assert code == -signal.SIGKILL  # the writer died before its commit
                head = (0, bytes(32))
            else:
                head = (BATCH, full_signer.head)
            assert st.chain_head(MINE) == head
            # the ledger continues where it stands
            s = ChainSigner(key, head[0], head[1])
            r = st.append([s.sign("MiningOutput", {"qty": "1"}, T0)])[0]
            assert (r.index, r.seq) == (after, head[0] + 1)
        rep = verify_database(url)
        assert rep.ok, rep.problems[:5]
        assert rep.entries == after + 1
        if delay is None:
            assert after == before + BATCH and code == 0  # long enough: the batch completed
        elif delay == 0 and phase in ("ready", "locked"):
            # killed before the write began, or as the write lock was taken (the inserts were
            # still to be sent)
            assert after == before
        # killed while the events or the log rows were inserted: the inserts and the COMMIT
        # travel together (one round trip), so the server may already hold the COMMIT and
        # commit the whole batch although its client is gone, or not; never a part of it
        # (asserted above), and the ledger goes on either way
    finally:
        drop_schema(schema)
