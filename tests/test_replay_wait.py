"""A replay (and an investigation) asked for the log's present while the projections are a little
behind it (``reledger serve``'s follower is normally a fraction of a second behind the log): it
waits for them (replay/history.py ``wait_for_projections``, reads only) and reads the party's
rows when they get there; when they do not, a replay folds the whole log after telling its user
why (and how to avoid it), and an investigation refuses. On SQLite and PostgreSQL.

Which path a replay took is seen by wrapping the two (``_replay_rows``, ``_replay``); the
follower is a real one (a ProjectionStore catching up in steps, on its own connection, in a
thread) that starts when the replay first waits; no timing is asserted: the wait is made long
(the follower gets there long before) or tiny (nobody follows).
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from projection_helpers import World, over_quota_and_checkpointed
from reledger.commands.cli import EXIT_OK, EXIT_USAGE, main
from reledger.projections.store import ProjectionReader, ProjectionStore
from reledger.replay import history
from reledger.replay.history import replay_party

BEHIND = 5  # entries the projections are left behind the log (the party's last entries among them)


@pytest.fixture
def ledger(db_url):
    """A ledger whose projections reflect all but its last BEHIND entries (MINE01's last
    production and shipment among them); nobody follows it. Returns (url, log size)."""
    w = World(db_url)
    try:
        over_quota_and_checkpointed(w)
        w.produce("MINE01", "L2", 3_000_000, at="2024-01-05T00:00:00Z")
        w.ship("MINE01", "SEP01", "T2", [("L2", "RE_CONCENTRATE", 2000, 900)], at="2024-01-06T00:00:00Z")
        w.ship("MINE01", "SEP02", "T3", [("L1", "RE_CONCENTRATE", 500, 200)], at="2024-01-07T00:00:00Z")
        size = w.store.size()
    finally:
        w.close()
    _rebuild_to(db_url, size - BEHIND)
    return db_url, size


def _rebuild_to(url: str, position: int) -> None:
    """The projections rebuilt from scratch up to ``position`` (as a follower stopped there)."""
    ps = ProjectionStore(url)
    try:
        ps.drop()
        ps.create()
        ps.catch_up(limit=position)
        assert ps.position() == position
    finally:
        ps.close()


def _position(url: str) -> int:
    with ProjectionReader(url) as ps:
        return ps.position()


def _paths(monkeypatch) -> list[str]:
    """Which path each replay takes from now on: "rows" or "fold", in call order."""
    ran: list[str] = []
    rows, fold = history._replay_rows, history._replay
    monkeypatch.setattr(history, "_replay_rows", lambda *a, **k: (ran.append("rows"), rows(*a, **k))[1])
    monkeypatch.setattr(history, "_replay", lambda *a, **k: (ran.append("fold"), fold(*a, **k))[1])
    return ran


class _Follower:
    """A follower (ProjectionStore.catch_up, 2 entries a transaction, on its own connection, in a
    thread) that starts when a wait for the projections first sleeps."""

    def __init__(self, monkeypatch, url: str):
        self.url, self.waits, self.error = url, 0, None
        self.started = threading.Event()
        real = time

        def sleep(seconds: float) -> None:
            self.waits += 1
            self.started.set()
            real.sleep(seconds)

        monkeypatch.setattr(history, "time", SimpleNamespace(monotonic=real.monotonic, sleep=sleep))
        monkeypatch.setattr(history, "PROJECTIONS_WAIT_S", 60.0)  # never reached: the follower gets there first
        monkeypatch.setattr(history, "PROJECTIONS_STALL_S", 60.0)  # however slowly the thread starts
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if not self.started.wait(60):
                return
            ps = ProjectionStore(self.url)
            try:
                while ps.catch_up(limit=2):
                    pass
            finally:
                ps.close()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            self.error = e

    def join(self) -> None:
        self.started.set()  # a replay that never waited: let the thread end
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def _same(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):  # the findings of one entry in a stable order
        for step in d["steps"]:
            step["findings"].sort(key=lambda f: (f["code"], f["message"]))
    assert da == db


def test_replay_waits_for_a_follower_and_reads_the_rows(ledger, monkeypatch):
    """The projections are BEHIND entries behind the log; a follower starts when the replay
    waits: the replay reads the party's rows (not the fold), and its answer is the fold's."""
    url, size = ledger
    ran = _paths(monkeypatch)
    follower = _Follower(monkeypatch, url)
    told: list[str] = []
    try:
        got = replay_party(url, "MINE01", notice=told.append)
    finally:
        follower.join()
    assert follower.waits >= 1  # it did wait: the projections were behind when it asked
    assert ran == ["rows"] and got.size == size
    assert not any("folds the whole log" in t for t in told), told
    assert _position(url) == size
    ref = replay_party(url, "MINE01", fold=True)
    assert ran == ["rows", "fold"]
    assert len([s for s in ref.steps if s.kind == "entry"]) == 5  # its last entries are among those waited for
    _same(got, ref)


def test_replay_command_waits_for_a_follower(ledger, monkeypatch, capsys):
    url, size = ledger
    ran = _paths(monkeypatch)
    follower = _Follower(monkeypatch, url)
    try:
        code = main(["replay", "--db", url, "--party", "MINE01", "--json"])
    finally:
        follower.join()
    out, err = capsys.readouterr()
    assert code == EXIT_OK and follower.waits >= 1 and ran == ["rows"], err
    assert "folds the whole log" not in err
    assert json.loads(out)["as_of_size"] == size
    assert out == json.dumps(replay_party(url, "MINE01", fold=True).to_dict(), indent=2, default=str) + "\n"


def test_replay_folds_when_the_projections_stay_behind_and_says_so(ledger, monkeypatch, capsys):
    """Nobody follows: after the (here tiny) wait the replay folds the whole log, its answer
    right, and says first, on stderr, how far behind the projections are, that it folds the
    whole log, and how to avoid it. The projections are left as they were (reads never write)."""
    url, size = ledger
    monkeypatch.setattr(history, "PROJECTIONS_WAIT_S", 0.01)
    ran = _paths(monkeypatch)
    pos = size - BEHIND
    assert main(["replay", "--db", url, "--party", "MINE01", "--json"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert ran == ["fold"]
    assert f"the projections reflect {pos:,} of the {size:,} log entries asked ({BEHIND:,} behind)" in err, err
    assert "folds the whole log" in err and f"--as-of {pos}" in err and "reledger serve" in err, err
    assert "reledger rebuild" in err and "Traceback" not in err
    assert out == json.dumps(replay_party(url, "MINE01", fold=True).to_dict(), indent=2, default=str) + "\n"
    assert _position(url) == pos
    # as of the projections' position (what the message proposes), the rows are read at once
    ran.clear()
    assert main(["replay", "--db", url, "--party", "MINE01", "--json", "--as-of", str(pos)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert ran == ["rows"] and "folds the whole log" not in err
    assert out == json.dumps(replay_party(url, "MINE01", as_of=pos, fold=True).to_dict(), indent=2,
                             default=str) + "\n"


def test_replay_without_projections_says_it_folds(ledger, monkeypatch, capsys):
    url, size = ledger
    ps = ProjectionStore(url)
    ps.drop()
    ps.close()
    ran = _paths(monkeypatch)
    assert main(["replay", "--db", url, "--party", "MINE01", "--json"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert ran == ["fold"] and json.loads(out)["as_of_size"] == size
    assert "this ledger has no projections" in err and "folds the whole log" in err, err


def test_investigate_waits_for_a_follower(ledger, monkeypatch, capsys, tmp_path):
    url, size = ledger
    ran = _paths(monkeypatch)
    follower = _Follower(monkeypatch, url)
    out = tmp_path / "r.html"
    try:
        code = main(["investigate", "--db", url, "--party", "MINE01", "--out", str(out)])
    finally:
        follower.join()
    err = capsys.readouterr().err
    assert code == EXIT_OK and follower.waits >= 1, err
    assert ran == ["rows"] and out.stat().st_size > 0
    assert _position(url) == size


def test_investigate_refuses_when_the_projections_stay_behind(ledger, monkeypatch, capsys, tmp_path):
    url, size = ledger
    monkeypatch.setattr(history, "PROJECTIONS_WAIT_S", 0.01)
    ran = _paths(monkeypatch)
    pos = size - BEHIND
    out = tmp_path / "r.html"
    assert main(["investigate", "--db", url, "--party", "MINE01", "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"the projections reflect {pos} of the {size} log entries this report covers" in err, err
    assert "did not reach them within 0.01 s" in err and f"--as-of {pos}" in err and "Traceback" not in err
    assert ran == [] and _position(url) == pos
    # as of their position, it reports
    assert main(["investigate", "--db", url, "--party", "MINE01", "--out", str(out), "--as-of", str(pos)]) == EXIT_OK
    assert ran == ["rows"]


def test_a_wait_ends_early_when_nothing_follows_the_log(ledger, monkeypatch):
    """No follower: the position never moves, so the wait ends after PROJECTIONS_STALL_S (on a
    clock of its own here) instead of PROJECTIONS_WAIT_S; a position that moves keeps it waiting."""
    from reledger.projections.store import ProjectionReader

    url, size = ledger
    clock = {"t": 0.0}
    monkeypatch.setattr(history, "time", SimpleNamespace(monotonic=lambda: clock["t"],
                                                         sleep=lambda s: clock.__setitem__("t", clock["t"] + s)))
    monkeypatch.setattr(history, "PROJECTIONS_WAIT_S", 10.0)
    monkeypatch.setattr(history, "PROJECTIONS_STALL_S", 3.0)
    ps = ProjectionReader(url)
    try:
        assert history.wait_for_projections(ps, size) == size - BEHIND
        assert 3.0 <= clock["t"] < 3.2  # ended by the stall, not at 10 s
        clock["t"] = 0.0
        real = ps.position
        steps = iter(range(size - BEHIND, size + 1))
        last = {"p": size - BEHIND}

        def position():  # one more entry every second
            if clock["t"] >= last.get("at", 0.0) + 1.0:
                last["at"], last["p"] = clock["t"], next(steps, size)
            return last["p"]

        monkeypatch.setattr(ps, "position", position)
        assert history.wait_for_projections(ps, size) == size
        assert clock["t"] > 3.0  # it kept waiting while the position moved
        assert real() == size - BEHIND
    finally:
        ps.close()
