"""``reledger serve`` checkpoints through the witnesses (processes/checkpointer.py): every N
entries and on a timer, publishing only when the C2SP tlog-policy is met; with the quorum out of
reach it publishes nothing, says why, and the server serves on. The checkpointer runs in a
process of its own, with its own database role on PostgreSQL (``init --checkpointer-role``:
SELECT on the log, INSERT on the checkpoints only)."""

from __future__ import annotations

import time
import uuid

import httpx
import msgpack
import pytest

from helpers import is_pg
from http_helpers import ENTRIES, ORIGIN, T0, Server, build_cast, mineral
from reledger.commands.client import ClientError, LedgerClient
from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint
from reledger.ledger.trust import Trust
from reledger.ledger.cosignature import COSIG_ED25519, CosignatureSigner, Policy
from reledger.ledger.genesis import ChainSigner
from reledger.processes.checkpointer import Checkpointer, Settings
from reledger.storage.reader import DatabaseURL
from reledger.storage.store import LedgerStore
from test_witness import WitnessProcess, reledger, witness_key


def wait_for(condition, what: str, timeout: float = 90.0):
    """Poll until ``condition()`` is truthy (an event awaited, not a time measured)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


def latest(url: str) -> tuple[int, bytes]:
    with LedgerStore(url) as store:
        size, _, note = store.latest_checkpoint()
        return size, note


# --- the loop, in-process, with a clock the test moves --------------------------------------------

WITNESS_VKEY = CosignatureSigner("w.example", COSIG_ED25519, bytes([5]) * 32).verifier().vkey()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_due_every_n_entries_on_the_timer_and_not_again_at_once_after_a_refusal(db_url, tmp_path):
    cast = build_cast(db_url)
    key = tmp_path / "op.key"
    cast.checkpoint_key.write(key)
    clock, said = Clock(), []
    with LedgerStore(db_url) as store:
        cp = Checkpointer(Settings(db_url, str(key), every=3, interval=60, retry=5), store=store, clock=clock,
                          log=said.append)
        mine = ChainSigner(cast.keys["MINE01"])
        base = store.size()
        assert store.latest_checkpoint()[0] == base
        assert cp.step() is None  # nothing appended
        store.append([mine.sign("MineralProductProduced", mineral("L1"), T0) for _ in range(2)])
        assert cp.step() is None  # 2 < 3 entries, and the timer has not run out
        store.append([mine.sign("MineralProductProduced", mineral("L2"), T0)])
        assert cp.step() is not None and store.latest_checkpoint()[0] == base + 3  # every 3 entries
        assert "published the checkpoint of size" in said[-1]
        store.append([mine.sign("MineralProductProduced", mineral("L3"), T0)])
        clock.t += 59
        assert cp.step() is None
        clock.t += 1
        assert cp.step() is not None and store.latest_checkpoint()[0] == base + 4  # on the timer
        clock.t += 3600
        assert cp.step() is None  # the timer alone, the log has not grown: nothing to publish

        # a policy whose witness is unreachable: not published, said why, not tried again at once
        (tmp_path / "policy").write_text(f"log {cast.note_signer.verifier().vkey()}\n"
                                         f"witness w0 {WITNESS_VKEY} http://127.0.0.1:9\nquorum w0\n")
        cp = Checkpointer(Settings(db_url, str(key), str(tmp_path / "policy"), every=1, retry=5, timeout=2),
                          store=store, clock=clock, log=said.append)
        store.append([mine.sign("MineralProductProduced", mineral("L4"), T0)])
        assert cp.step() is None and store.latest_checkpoint()[0] == base + 4
        assert "NOT published" in said[-1] and "w0" in said[-1] and "unreachable" in said[-1], said[-1]
        n = len(said)
        clock.t += 4
        assert cp.step() is None and len(said) == n  # within the retry time: no new attempt
        clock.t += 1
        assert cp.step() is None and len(said) == n + 1  # tried again, refused again


def test_serve_refuses_checkpointer_options_that_cannot_work(tmp_path):
    db = f"sqlite:///{tmp_path / 'l.db'}"
    assert reledger("init", "--db", db, "--keys", str(tmp_path / "keys")).returncode == 0
    for opt in ("--checkpoint-every", "--checkpoint-retry"):
        out = reledger("serve", "--db", db, opt, "3")
        assert out.returncode == 2 and "--checkpoint-key" in out.stderr and opt in out.stderr
    out = reledger("serve", "--db", db, "--checkpoint-key", str(tmp_path / "keys" / "operator.key"))
    assert out.returncode == 2 and "say when" in out.stderr
    out = reledger("serve", "--db", db, "--checkpoint-key", str(tmp_path / "missing.key"), "--checkpoint-every", "3")
    assert out.returncode == 2 and "missing.key" in out.stderr
    (tmp_path / "bad.policy").write_text("quorum nobody\n")
    out = reledger("serve", "--db", db, "--checkpoint-key", str(tmp_path / "keys" / "operator.key"),
                   "--checkpoint-every", "3", "--policy", str(tmp_path / "bad.policy"))
    assert out.returncode == 2 and "bad.policy" in out.stderr
    out = reledger("init", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--keys", str(tmp_path / "k2"),
                   "--checkpointer-role", "x")
    assert out.returncode == 2 and "PostgreSQL" in out.stderr


# --- end to end: serve, three witness processes, a 2-of-3 policy -----------------------------------

def post(base: str, envelopes: list[bytes]) -> httpx.Response:
    return httpx.post(base + ENTRIES, content=msgpack.packb(envelopes, use_bin_type=True),
                      headers={"Content-Type": "application/msgpack"}, timeout=60)


@pytest.fixture(scope="module")
def witness_keys(tmp_path_factory) -> list:
    """The three witnesses' keys, made once for both backends. Their processes are not shared:
    a witness holds the tree it cosigned last (its state), and each backend's run is another
    log of the same origin and key, which a shared witness would rightly refuse as a fork."""
    d = tmp_path_factory.mktemp("witness-keys")
    return [witness_key(d / f"w{i}.key", i) for i in range(3)]


def test_serve_checkpoints_through_two_of_three_witnesses(db_url, tmp_path, witness_keys):
    """The timers are short (a checkpoint 2 s after the last if the log grew, a refused one tried
    again after 2 s) so that the waits are short; the loop's timing itself (due every N entries,
    on the timer, not again at once after a refusal) is the test above's, on a clock it moves."""
    cast = build_cast(db_url)
    key = tmp_path / "operator.key"
    cast.checkpoint_key.write(key)
    log_vkey = cast.note_signer.verifier().vkey()
    ws = [WitnessProcess(tmp_path, i, log_vkey, witness_keys[i]) for i in range(3)]
    lines = [f"log {log_vkey}"] + [f"witness w{i} {w.vkeys[0]} {w.url}" for i, w in enumerate(ws)]
    (tmp_path / "policy").write_text("\n".join(lines + ["group g 2 w0 w1 w2", "quorum g"]) + "\n")
    policy = Policy.parse((tmp_path / "policy").read_bytes())
    checkpointer_url = db_url
    if is_pg(db_url):  # the checkpointer logs in as its own role: SELECT the log, INSERT checkpoints
        role = "reledger_ckp_" + uuid.uuid4().hex[:8]
        with LedgerStore(db_url) as owner:
            owner.grant_checkpointer_role(role)
        u = DatabaseURL.parse(db_url)
        checkpointer_url = f"postgresql://{role}@{u.host}:{u.port}/{u.dbname}?schema={u.schema}"
        with LedgerStore(checkpointer_url) as as_role, pytest.raises(Exception):  # noqa: B017,PT011
            as_role.append([ChainSigner(cast.keys["MINE02"]).sign("MineralProductProduced", mineral("X"), T0)])
    server = None
    try:
        ws[0].start()
        ws[1].start()
        server = Server(db_url, args=("--checkpoint-key", str(key), "--policy", str(tmp_path / "policy"),
                                      "--checkpoint-every", "3", "--checkpoint-interval", "2",
                                      "--checkpoint-retry", "2",
                                      "--checkpointer-db", checkpointer_url, "--witness-timeout", "3"))
        mine = ChainSigner(cast.keys["MINE01"])
        start = latest(db_url)[0]

        # three entries: a checkpoint at once (every 3), cosigned by the two witnesses that are up
        assert post(server.base, [mine.sign("MineralProductProduced", mineral(f"A{i}"), T0).envelope
                                  for i in range(3)]).status_code == 201
        size, note = wait_for(lambda: latest(db_url)[0] >= start + 3 and latest(db_url), "a checkpoint after 3 entries")
        assert size == start + 3
        assert set(policy.check(note).cosigned_by) == {"w0", "w1"}

        # one entry: no count reached; the timer publishes it
        assert post(server.base, [mine.sign("MineralProductProduced", mineral("B"), T0).envelope]).status_code == 201
        size, note = wait_for(lambda: latest(db_url)[0] >= start + 4 and latest(db_url), "a checkpoint on the timer")
        assert size == start + 4 and set(policy.check(note).cosigned_by) == {"w0", "w1"}
        assert "published the checkpoint of size" in server.stderr()

        # the client, anchored to an auditor's pinned trust file: an append's receipt upgraded to a
        # tlog-proof against a cosigned checkpoint (the timer publishes it), the pin moved forward
        with LedgerStore(db_url) as store:
            genesis = store.record(0).entry_hash.hex()
        trust_file = tmp_path / "audit.trust"
        Trust(genesis, log_vkey, (tmp_path / "policy").read_text()).write(trust_file, new=True)
        with LedgerClient(server.base, cast.keys["SEP01"]) as c:
            assert c.anchor(trust_file).size == start + 4
            r = c.append("StockCounted", {"product": "Nd2O3", "counted_kg": "6"}, occurred_at=T0)
            proof = c.wait_for_proof("SEP01", r["seq"], timeout=90, poll=0.5, trust=trust_file)
            assert proof.startswith(b"c2sp.org/tlog-proof@v1\n")
            assert Trust.read(trust_file).pinned.size == start + 5
            with pytest.raises(ClientError, match="not anchored"):  # another root at the pinned size
                c.anchor(trust_file, sign_checkpoint(Checkpoint(ORIGIN, start + 5, bytes(32)), cast.note_signer))
            assert Trust.read(trust_file).pinned.size == start + 5
        start += 1

        # two of three down: nothing is published, the server says why and serves on
        ws[1].stop()
        assert post(server.base, [mine.sign("MineralProductProduced", mineral(f"C{i}"), T0).envelope
                                  for i in range(3)]).status_code == 201
        wait_for(lambda: "NOT published" in server.stderr(), "the checkpointer saying why it did not publish")
        err = server.stderr()
        assert "quorum 'g' not met" in err and "w1" in err and "w2" in err, err
        assert latest(db_url)[0] == start + 4
        assert httpx.get(server.base + "/v1/health", timeout=10).status_code == 200
        assert post(server.base, [mine.sign("MineralProductProduced", mineral("D"), T0).envelope]).status_code == 201

        # a witness back: the next attempt publishes, cosigned by two
        ws[2].start()
        size, note = wait_for(lambda: latest(db_url)[0] >= start + 8 and latest(db_url), "a checkpoint once 2 are up")
        assert size == start + 8 and set(policy.check(note).cosigned_by) == {"w0", "w2"}
        # every stored checkpoint verifies, and the whole log with them
        with LedgerStore(db_url) as store:
            genesis = store.record(0).entry_hash.hex()
        assert reledger("verify", "--db", db_url, "--genesis", genesis).returncode == 0
    finally:
        if server is not None:
            server.stop()
        for w in ws:
            w.stop()
