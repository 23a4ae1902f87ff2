"""The server's projections follow the log whoever appends (another process here): woken by
the subscription on PostgreSQL, by polling on SQLite; tracking keeps them exact."""

from __future__ import annotations

import time

from reledger.commands.api import CommandAPI
from reledger.ledger.genesis import ChainSigner
from reledger.storage.store import LedgerStore
from reledger.projections.store import P, ProjectionStore
from tests.http_helpers import Server, build_cast, mineral

T1 = "2024-03-01T08:00:00Z"


def _position(url: str) -> int:
    ps = ProjectionStore(url)
    try:
        rows = ps.execute(f"SELECT position FROM {P}tracking WHERE name = ?", ("projections",))
        return int(rows[0][0]) if rows else 0
    finally:
        ps.close()


def test_server_projections_follow_appends_by_another_process(db_url):
    cast = build_cast(db_url)
    with Server(db_url):
        # appended in this process, not through the server
        with LedgerStore(db_url) as store:
            api = CommandAPI(store)
            seq, head = store.chain_head("MINE01")
            signer = ChainSigner(cast.keys["MINE01"], seq=seq, head=head)
            api.submit([signer.sign("MineralProductProduced", mineral(f"FOLLOW-{i}"), T1) for i in range(5)])
            size = store.size()
        deadline = time.monotonic() + 15
        while _position(db_url) < size and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _position(db_url) == size
        ps = ProjectionStore(db_url)
        try:
            lots = {r[0] for r in ps.execute(f"SELECT lot FROM {P}lots WHERE lot LIKE ?", ("FOLLOW-%",))}
        finally:
            ps.close()
        assert lots == {f"FOLLOW-{i}" for i in range(5)}


def test_follower_is_woken_by_each_commit_on_postgresql(pg_url):
    """On PostgreSQL the follower listens for the append transactions' NOTIFY: a commit by
    another connection wakes it at once, well before its 5 s fallback wake-up."""
    from reledger.projections.follow import Follower

    cast = build_cast(pg_url)
    calls: list[float] = []
    with LedgerStore(pg_url) as store:
        follower = Follower(store, lambda: calls.append(time.monotonic()))
        follower.start()
        try:
            deadline = time.monotonic() + 10
            while not calls and time.monotonic() < deadline:  # the first round, at start
                time.sleep(0.02)
            time.sleep(0.5)  # the LISTEN is in place (its own wake-up came and went)
            for i in range(3):
                before = len(calls)
                with LedgerStore(pg_url) as other:
                    seq, head = other.chain_head("MINE01")
                    signer = ChainSigner(cast.keys["MINE01"], seq=seq, head=head)
                    CommandAPI(other).submit([signer.sign("MineralProductProduced", mineral(f"WAKE-{i}"), T1)])
                    sent = time.monotonic()
                deadline = sent + 4.0  # under the 5 s fallback: only the notification can do it
                while len(calls) == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert len(calls) > before, f"commit {i}: the follower was not woken"
        finally:
            follower.stop()
    assert not any(t.is_alive() for t in follower._threads)  # stop ends both threads


def test_fed_entries_fill_in_from_the_log():
    """The projections process's store of the entries the server fed it: it yields them in log
    order, reads from the log what another writer put before or between them, and keeps at
    most its limit (the log has the rest)."""
    from reledger.processes.projections import FedEntries

    log_reads: list[tuple] = []

    def read(start, stop=None):
        log_reads.append((start, stop))
        end = 20 if stop is None else stop
        return [("log", i) for i in range(start, end)]

    def fed_item(i):
        return (i, "2024-03-01T08:00:00Z", "MINE01", i + 1, bytes(32), b"envelope")

    def indexes(recs):
        return [r[1] if isinstance(r, tuple) else r.index for r in recs]

    fed = FedEntries(limit=5)
    assert indexes(fed.records(3, read)) == list(range(3, 20)) and log_reads == [(3, None)]  # nothing fed
    fed.add([fed_item(i) for i in (5, 6, 7)])
    log_reads.clear()
    recs = list(fed.records(3, read))
    assert indexes(recs) == [3, 4, 5, 6, 7] and log_reads == [(3, 5)]  # another writer's 3 and 4 first
    assert [type(r).__name__ for r in recs[2:]] == ["Record"] * 3 and recs[2].recorded_us > 0
    assert len(fed) == 0
    fed.add([fed_item(i) for i in (8, 10)])  # 9 is another writer's
    log_reads.clear()
    assert indexes(fed.records(8, read)) == [8] + list(range(9, 20)) and log_reads == [(9, None)]
    fed.add([fed_item(i) for i in range(30, 40)])  # over the limit: the oldest are forgotten
    assert len(fed) == 5
    fed.forget_before(38)
    assert len(fed) == 2


def test_frames_carry_plain_values_and_refuse_anything_else():
    """The one framing between reledger's processes (processes/frames.py): a msgpack value per
    frame, over a real pipe; integer map keys stay integers, bytes stay bytes, a tuple comes back
    a list. A pickle, an extension type or trailing bytes are refused (FrameError), never
    loaded; a closed peer is EOFError."""
    import pickle

    import msgpack
    import pytest

    from reledger.processes import start
    from reledger.processes.frames import Channel, FrameError, pipe

    mine, raw = pipe(start.context())
    theirs = Channel(raw)
    msg = ["done", [1, 2], 41, {7: [{"code": "OVER_QUOTA", "hash": b"\x01" * 32}]}]
    mine.send(msg)
    assert theirs.recv() == msg
    mine.send(("fold", 3, [(5, "2024-03-01T08:00:00Z", "MINE01", 2, bytes(32), b"env")]))
    assert theirs.recv() == ["fold", 3, [[5, "2024-03-01T08:00:00Z", "MINE01", 2, bytes(32), b"env"]]]
    mine.send(None)  # the writer process's stop frame
    assert theirs.recv() is None and not theirs.poll(0)
    for bad in (pickle.dumps({"x": 1}), msgpack.packb(msgpack.ExtType(1, b"x")), msgpack.packb(1) + b"\x01", b""):
        mine.send_frame(bad)
        with pytest.raises(FrameError):
            theirs.recv()
    mine.close()
    with pytest.raises(EOFError):
        theirs.recv()
    theirs.close()
