"""Evidence bundles: ``reledger.replay.export`` writes them from a ledger (SQLite and PostgreSQL);
``reledger.ledger.bundle.verify_bundle`` checks them offline, with nothing but ``ledger/``.

A good bundle verifies with the database gone; any changed byte, a dropped, swapped or moved
entry, swapped proofs, a changed record time, or a checkpoint that contradicts an earlier one
(another history signed with the same operator key; a history rewritten with raw SQL and
checkpointed again) fails with a message saying what is wrong. Two bundles of one ledger from
different times are consistent both ways. ``reledger verify-bundle`` exits 0 or 1 accordingly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ORIGIN, T0, drop_triggers, new_ledger, sql
from reledger.ledger import encoding
from reledger.ledger.bundle import BundleError, decode_bundle, encode_bundle, verify_bundle
from reledger.ledger.entry import SignedEntry
from reledger.storage.reader import DatabaseURL
from reledger.storage.store import LedgerStore
from reledger.replay.export import ExportError, export_bundle

M0, M1 = "9111000000MINE0000", "9111000000MINE0001"
SEED = 41  # the regulator's and the operator's keys (helpers.seeded_key): two ledgers can share them
ROOT = Path(__file__).resolve().parent.parent


def small_ledger(url: str, per_party: int = 2, seed: int = SEED):
    """Genesis (3), M0 and M1 registered (4), then ``per_party`` entries each, interleaved;
    checkpoints after the registrations and at the end."""
    led = new_ledger(url, seed=seed)
    led.register(M0)
    led.register(M1)
    led.checkpoint()
    for _ in range(per_party):
        led.add(M0)
        led.add(M1)
    led.checkpoint()
    return led


def failure(data: bytes, **kw) -> str:
    """The reason verify_bundle gives for refusing ``data`` (fails the test if it accepts it)."""
    try:
        rep = verify_bundle(data, **kw)
    except BundleError as e:
        assert str(e), "a BundleError must say what is wrong"
        return str(e)
    assert not rep.ok, "the bundle verified"
    assert all(isinstance(p, str) and p for p in rep.problems)
    return "; ".join(rep.problems)


_KEEP = object()


def rebuild(data: bytes, *, entries=None, consistency=None, checkpoint=None, party=None, heads=_KEEP) -> bytes:
    """``data`` with the parts given replaced (``heads=None`` leaves the heads proof out)."""
    b = decode_bundle(data)
    return encode_bundle(party if party is not None else b["party"],
                         checkpoint if checkpoint is not None else b["checkpoint"],
                         entries if entries is not None else b["entries"],
                         consistency if consistency is not None else b["consistency"],
                         b.get("heads") if heads is _KEEP else heads)


def cli(*args: str, db: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RELEDGER_DB"}
    if db:
        env["RELEDGER_DB"] = db
    return subprocess.run([sys.executable, "-m", "reledger", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


# --- a good bundle -------------------------------------------------------------------------------

def test_good_bundle_verifies_offline(db_url, tmp_path):
    led = small_ledger(db_url)
    genesis = led.store.record(0).entry_hash.hex()
    vkey = led.note_signer.verifier().vkey()
    sizes = [s for s, _, _ in led.store.checkpoints()]
    led.close()
    out = tmp_path / "m0.bundle"
    summary = export_bundle(db_url, M0, out)
    assert summary["chain_length"] == 2 and summary["checkpoint_size"] == 11 and summary["earlier_checkpoints"] == 1
    data = out.read_bytes()
    u = DatabaseURL.parse(db_url)
    if u.backend == "sqlite":  # the database is gone: the check cannot be reading it
        for suffix in ("", "-wal", "-shm"):
            if Path(u.path + suffix).exists():
                Path(u.path + suffix).rename(u.path + suffix + ".away")
        assert not Path(u.path).exists()
    rep = verify_bundle(data)
    assert rep.ok, rep.problems
    assert (rep.party, rep.size, rep.chain_length, rep.genesis) == (M0, 11, 2, genesis)
    assert rep.registry_entries == 7 and rep.entries == 9 and rep.proofs == 9
    assert rep.consistency_checked == sizes[:-1] == [7]
    assert rep.to_dict()["ok"] is True
    # pinned trust anchors
    assert verify_bundle(data, trusted_genesis=genesis, trusted_checkpoint_keys=[vkey]).ok
    assert "not the trusted" in failure(data, trusted_genesis="00" * 32)
    other = new_ledger(f"sqlite:///{tmp_path / 'other.db'}", seed=SEED + 10)
    assert "not signed by a checkpoint key" in failure(data, trusted_checkpoint_keys=[other.note_signer.verifier().vkey()])
    other.close()
    if u.backend == "sqlite":
        assert not Path(u.path).exists()


def test_verifier_needs_only_ledger(db_url, tmp_path):
    """In a fresh interpreter: verifying imports nothing outside ledger/ that could reach a
    database, the projections or the command API."""
    led = small_ledger(db_url, per_party=1)
    led.close()
    out = tmp_path / "m1.bundle"
    export_bundle(db_url, M1, out)
    code = ("import sys\nfrom ledger.bundle import verify_bundle\n"
            f"rep = verify_bundle(open({str(out)!r}, 'rb').read())\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('projections', 'replay', 'commands', 'eventsourcing', 'psycopg', 'psycopg_pool', 'sqlite3'))\n"
            "print(rep.ok, bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True []", proc.stdout + proc.stderr


def test_export_refuses_without_checkpoint_or_entries(db_url, tmp_path):
    led = new_ledger(db_url, seed=SEED)
    led.register(M0)
    led.add(M0)
    with pytest.raises(ExportError, match="no checkpoint"):
        export_bundle(db_url, M0, tmp_path / "x")
    led.checkpoint()
    led.register(M1)
    with pytest.raises(ExportError, match="no entry"):
        export_bundle(db_url, M1, tmp_path / "x")
    led.close()


# --- every byte is covered ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> bytes:
    """The smallest interesting bundle: genesis, one registration, one entry, two checkpoints."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tiny') / 'tiny.db'}"
    led = new_ledger(url, seed=SEED)
    led.register(M0)
    led.checkpoint()
    led.add(M0)
    led.checkpoint()
    led.close()
    out = Path(url[len("sqlite:///"):]).with_suffix(".bundle")
    export_bundle(url, M0, out)
    data = out.read_bytes()
    assert verify_bundle(data).ok
    return data


def test_every_byte_of_a_small_bundle_is_covered(tiny_bundle):
    data = tiny_bundle
    assert len(data) < 5000
    accepted = []
    for pos in range(len(data)):
        changed = bytearray(data)
        changed[pos] ^= 1 << (pos % 8)  # a different bit at successive positions
        try:
            rep = verify_bundle(bytes(changed))
        except BundleError as e:
            assert str(e)
            continue
        if rep.ok or not all(rep.problems):
            accepted.append(pos)
    assert not accepted, f"changed bytes at {accepted[:10]} went unnoticed"


@pytest.fixture(scope="module")
def demo_bundles(request, tmp_path_factory) -> dict:
    """Bundles of two parties of the demo ledger (about 85 kB each, 13 earlier checkpoints)."""
    from test_replay import demo_ledger

    demo = demo_ledger("sqlite", request)
    out = tmp_path_factory.mktemp("demo-bundles")
    mine = next(p for p, kind in demo["parties"].items() if kind.startswith("mine-rock"))
    plant = demo["seeded"]["over_separation_quota"]["party"]
    bundles = {}
    for party in (mine, plant):
        export_bundle(demo["url"], party, out / f"{party}.bundle")
        bundles[party] = (out / f"{party}.bundle").read_bytes()
    return bundles


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_changed_byte_of_a_large_bundle_is_caught(demo_bundles, data):
    party = data.draw(st.sampled_from(sorted(demo_bundles)), label="party")
    bundle = demo_bundles[party]
    pos = data.draw(st.integers(0, len(bundle) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != bundle[pos]), label="value")
    changed = bundle[:pos] + bytes([value]) + bundle[pos + 1:]
    assert failure(changed)


def test_demo_bundles_verify(demo_bundles):
    assert len(demo_bundles) >= 2  # the loop below must judge real bundles (the fixture exports two)
    for party, data in demo_bundles.items():
        rep = verify_bundle(data)
        assert rep.ok and rep.party == party and rep.chain_length > 20 and len(rep.consistency_checked) >= 10


def test_not_a_bundle():
    for data, words in ((b"", "not a bundle"), (b"\x00" * 10, "not a bundle"),
                        (encoding.canonical({"format": "reledger-bundle-v1"}), "exactly"),
                        (encoding.canonical([1, 2]), "exactly")):
        with pytest.raises(BundleError, match=words):
            verify_bundle(data)


def test_malformed_fields_are_reported_not_crashes(tiny_bundle):
    b = decode_bundle(tiny_bundle)
    entries, cons = b["entries"], b["consistency"]

    def ent(**kw):
        return [dict(x) for x in entries[:-1]] + [{**entries[-1], **kw}]

    def con(**kw):
        return [{**cons[0], **kw}] + cons[1:]

    for kw in ({"proof": ["x"]}, {"proof": [b"short"]}, {"proof": [1, 2]}, {"proof": entries[-1]["proof"] + [bytes(32)]},
               {"index": -1}, {"index": 2**63}, {"index": True}, {"recorded_at": "garbage"}, {"recorded_at": 5},
               {"envelope": b"garbage"}, {"envelope": "text"}):
        assert failure(rebuild(tiny_bundle, entries=ent(**kw))), kw
    for kw in ({"note": 5}, {"note": b"garbage"}, {"note": b"\xff\n\n"}, {"proof": "abc"}, {"proof": [1]},
               {"proof": cons[0]["proof"] + [bytes(32)]}):
        assert failure(rebuild(tiny_bundle, consistency=con(**kw))), kw
    # earlier checkpoints: in increasing size, each before the bundle's own
    assert "is not after" in failure(rebuild(tiny_bundle, consistency=cons + cons))
    assert "is not earlier" in failure(rebuild(tiny_bundle, consistency=cons + [{"note": b["checkpoint"], "proof": []}]))
    for checkpoint in (b"garbage", b"\xff\xfe\n\n", b""):
        assert failure(rebuild(tiny_bundle, checkpoint=checkpoint))
    assert "genesis" in failure(rebuild(tiny_bundle, entries=[]))
    for other in (b"", b"\x85", b"garbage", b"\x85garbage", encode_bundle("x", b"garbage", [], [])):
        assert "earlier checkpoint #1" in failure(tiny_bundle, older=[other]), other


# --- structural changes ---------------------------------------------------------------------------------

def test_dropped_entries(db_url, tmp_path):
    """Dropping any entry the remaining ones depend on fails: one of the party's chain before
    its last, the genesis, the party's registration or key, the checkpoint key."""
    led = small_ledger(db_url, per_party=3)
    led.close()
    export_bundle(db_url, M0, tmp_path / "b")
    data = (tmp_path / "b").read_bytes()
    entries = decode_bundle(data)["entries"]
    kinds = {}
    for i, item in enumerate(entries):
        e = SignedEntry.parse(item["envelope"]).entry
        kinds[i] = (item["index"], e.chain, e.seq, e.type, e.body.get("party") if isinstance(e.body, dict) else None)
    chain = [i for i, k in kinds.items() if k[1] == M0]
    must_fail = {0: "genesis", 2: "checkpoint key"}  # bundle positions 0 and 2: log indices 0 and 2
    must_fail.update({i: "registration or key of M0" for i, k in kinds.items() if k[4] == M0})
    must_fail.update({i: "chain entry before the last" for i in chain[:-1]})
    for i, what in must_fail.items():
        msg = failure(rebuild(data, entries=entries[:i] + entries[i + 1:]))
        assert msg, what
        if what == "chain entry before the last":
            assert "chain is incomplete" in msg, msg
        if what == "genesis":
            assert "genesis" in msg, msg
    # all of the party's entries gone
    assert "no entry of party" in failure(rebuild(data, entries=[x for i, x in enumerate(entries) if i not in chain]))


def test_dropping_the_end_of_the_chain_is_caught(db_url, tmp_path):
    """The checkpoint commits to every chain's head (ledger/heads.py), and the bundle proves
    its party's: a bundle that leaves out the last entries of the chain, or the proof, or
    bends the proof, is refused; the whole bundle says the chain is complete."""
    small_ledger(db_url, per_party=3).close()
    assert export_bundle(db_url, M0, tmp_path / "b")["chain_end_proven"] is True
    data = (tmp_path / "b").read_bytes()
    rep = verify_bundle(data)
    assert rep.ok and rep.complete and rep.chain_length == 3 and rep.to_dict()["chain_complete"] is True
    b = decode_bundle(data)
    entries, h = b["entries"], b["heads"]
    mine = [i for i, e in enumerate(entries) if SignedEntry.parse(e["envelope"]).entry.chain == M0]
    assert len(mine) == 3 and mine[-1] == len(entries) - 1
    for cut in (1, 2):  # the last entry, the last two: the chain still links up, its end is a lie
        assert "the end of the chain" in failure(rebuild(data, entries=entries[:-cut]))
    assert "no proof of" in failure(rebuild(data, heads=None))
    for bent in ({**h, "position": h["position"] ^ 1}, {**h, "count": h["count"] + 1},
                 {**h, "proof": h["proof"][:-1]}, {**h, "proof": [bytes(32)] + h["proof"][1:]}):
        assert "the end of the chain" in failure(rebuild(data, heads=bent))
    for malformed in ({**h, "extra": 1}, {"position": 0, "count": 1}, {**h, "proof": "x"}):
        with pytest.raises(BundleError, match="heads"):
            decode_bundle(rebuild(data, heads=malformed))


def test_a_checkpoint_without_chain_heads_verifies_but_proves_no_end(tmp_path):
    """A checkpoint written before chain heads were committed (no heads line): its bundle
    verifies, says the chain's end is not proven, and may not carry a heads proof."""
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    url = f"sqlite:///{tmp_path / 'l.db'}"
    led = small_ledger(url)
    st = led.store
    st.append([led.parties[M0].sign("MiningOutput", {"qty": "1"}, T0)])
    size = st.size()
    st.recorder.write_checkpoint(size, st.root(size), sign_checkpoint(Checkpoint(ORIGIN, size, st.root(size)),
                                                                      led.note_signer), 0)
    led.close()
    summary = export_bundle(url, M0, tmp_path / "b")
    assert summary["chain_end_proven"] is False
    proc = cli("verify-bundle", str(tmp_path / "b"))
    assert proc.returncode == 3 and "the end of the chain is not proven" in proc.stdout, proc.stdout + proc.stderr
    data = (tmp_path / "b").read_bytes()
    assert "heads" not in decode_bundle(data)
    rep = verify_bundle(data)
    assert rep.ok and not rep.complete and rep.chain_length == 3
    proof = {"position": 0, "count": 1, "proof": []}
    assert "commits to no chain heads" in failure(rebuild(data, heads=proof))


def test_swapped_moved_and_retimed_entries(db_url, tmp_path):
    led = small_ledger(db_url, per_party=3)
    led.close()
    export_bundle(db_url, M0, tmp_path / "b")
    data = (tmp_path / "b").read_bytes()
    entries = decode_bundle(data)["entries"]
    n = len(entries)
    # two entries swapped in the list
    for i, j in ((0, 1), (n - 2, n - 1), (3, n - 1)):
        swapped = list(entries)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert "is not after" in failure(rebuild(data, entries=swapped))
    # two proofs swapped; two envelopes swapped (each keeping its index, time and proof)
    for field in ("proof", "envelope", "index", "recorded_at"):
        for i, j in ((n - 2, n - 1), (1, 5)):
            swapped = [dict(x) for x in entries]
            swapped[i][field], swapped[j][field] = entries[j][field], entries[i][field]
            msg = failure(rebuild(data, entries=swapped))
            assert "not in the checkpointed log" in msg or "is not after" in msg, (field, msg)
    # a record time changed by a second, or respelled with the same meaning
    for delta in (1, -1):
        changed = [dict(x) for x in entries]
        t = encoding.time_to_micros(encoding.parse_time(changed[-1]["recorded_at"])) + delta * 1_000_000
        changed[-1]["recorded_at"] = encoding.micros_to_time_text(t)
        assert "not in the checkpointed log" in failure(rebuild(data, entries=changed))
    changed = [dict(x) for x in entries]
    changed[-1]["recorded_at"] = changed[-1]["recorded_at"].replace("Z", "+00:00")
    assert failure(rebuild(data, entries=changed))
    # an entry duplicated, an entry of another party slipped in, another party named
    assert "is not after" in failure(rebuild(data, entries=entries + entries[-1:]))
    assert failure(rebuild(data, party=M1))
    assert failure(rebuild(data, party="X"))
    # a consistency proof swapped with an inclusion proof, or cut short
    b = decode_bundle(data)
    cons = [dict(c) for c in b["consistency"]]
    cons[0]["proof"] = cons[0]["proof"][:-1]
    assert "consistency[0]" in failure(rebuild(data, consistency=cons))
    cons[0]["proof"] = entries[-1]["proof"]
    assert "consistency[0]" in failure(rebuild(data, consistency=cons))
    # an earlier checkpoint of a different size presented as this one
    assert failure(rebuild(data, checkpoint=b["consistency"][0]["note"]))


# --- checkpoints: consistency with earlier ones ----------------------------------------------------------

def test_bundles_of_one_ledger_at_two_times_are_consistent_both_ways(db_url, tmp_path):
    led = small_ledger(db_url)
    older_note = led.store.latest_checkpoint()[2]
    export_bundle(db_url, M0, tmp_path / "old")
    led.add(M0)
    led.checkpoint()
    led.add(M1)
    led.add(M0)
    led.checkpoint()
    led.close()
    export_bundle(db_url, M0, tmp_path / "new")
    old, new = (tmp_path / "old").read_bytes(), (tmp_path / "new").read_bytes()
    r_new = verify_bundle(new, older=[old])
    assert r_new.ok, r_new.problems
    assert r_new.size == 14 and r_new.consistency_checked == [7, 11, 12, 11]
    r_old = verify_bundle(old, older=[new])
    assert r_old.ok, r_old.problems
    assert r_old.consistency_checked == [7, 14]
    for data in (old, new):
        rep = verify_bundle(data, older=[old, new, older_note])
        assert rep.ok, rep.problems
    # the CLI: exit 0 both ways, with bundles or a kept note
    (tmp_path / "note").write_bytes(older_note)
    proc = cli("verify-bundle", str(tmp_path / "new"), str(tmp_path / "old"), "--checkpoint", str(tmp_path / "note"))
    assert proc.returncode == 3, proc.stdout + proc.stderr  # consistent, but nothing pinned: not anchored
    proc = cli("verify-bundle", "--json", str(tmp_path / "old"), str(tmp_path / "new"))
    assert proc.returncode == 3 and json.loads(proc.stdout)["anchored"] is False, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_another_history_signed_with_the_same_operator_key(db_url, tmp_path):
    """A second ledger with the same regulator and operator keys but a different history: each
    bundle verifies alone; checked against each other they fail, both ways."""
    small_ledger(db_url).close()
    export_bundle(db_url, M0, tmp_path / "a")
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other = small_ledger(other_url)
    same_size_note = other.store.latest_checkpoint()[2]
    other.add(M0)
    other.checkpoint()
    other.close()
    export_bundle(other_url, M0, tmp_path / "b")
    a, b = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    assert verify_bundle(a).ok and verify_bundle(b).ok
    assert decode_bundle(a)["checkpoint"] != same_size_note
    assert "earlier checkpoint #1" in failure(b, older=[a])
    assert "earlier checkpoint #1" in failure(a, older=[b])
    assert "the log was rewritten" in failure(a, older=[same_size_note])
    proc = cli("verify-bundle", str(tmp_path / "b"), str(tmp_path / "a"))
    assert proc.returncode == 1 and "FAILED" in proc.stdout, proc.stdout + proc.stderr


def test_history_rewritten_with_raw_sql_and_checkpointed_again(db_url, tmp_path):
    """The operator deletes the last entries and the checkpoints, lets the party write other
    entries in their place and signs fresh checkpoints with its own key. The new bundle verifies
    on its own; against the bundle (or note) exported before, it fails."""
    led = small_ledger(db_url)
    old_note = led.store.latest_checkpoint()[2]
    size = led.store.size()
    led.close()
    export_bundle(db_url, M0, tmp_path / "before")
    drop_triggers(db_url)
    for chain, seq, idx in sql(db_url, "SELECT chain, seq, idx FROM {log} WHERE idx >= ?", (size - 2,)):
        sql(db_url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
        sql(db_url, "DELETE FROM {log} WHERE idx = ?", (idx,))
    sql(db_url, "DELETE FROM {checkpoints}")
    with LedgerStore(db_url) as store:
        for chain in (M0, M1):
            led.parties[chain].seq, led.parties[chain].head = store.chain_head(chain)
        store.append([led.parties[M0].sign("MiningOutput", {"qty": "0.001"}, T0),
                      led.parties[M1].sign("MiningOutput", {"qty": "0.002"}, T0)])
        assert store.size() == size
        store.checkpoint(led.note_signer)
        store.append([led.parties[M0].sign("MiningOutput", {"qty": "0.003"}, T0)])
        store.checkpoint(led.note_signer)
    export_bundle(db_url, M0, tmp_path / "after")
    before, after = (tmp_path / "before").read_bytes(), (tmp_path / "after").read_bytes()
    assert verify_bundle(after).ok  # nothing inside the new bundle tells
    msg = failure(after, older=[before])
    assert "earlier checkpoint #1" in msg and "the log was rewritten" in msg, msg
    assert "the log was rewritten" in failure(before, older=[after])
    assert "the log was rewritten" in failure(after, older=[old_note])
    proc = cli("verify-bundle", "--json", str(tmp_path / "after"), str(tmp_path / "before"))
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False, proc.stdout + proc.stderr


def test_cli_exit_codes(tmp_path, tiny_bundle):
    good = tmp_path / "good.bundle"
    good.write_bytes(tiny_bundle)
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(tiny_bundle[:-40] + bytes([tiny_bundle[-40] ^ 0x20]) + tiny_bundle[-39:])
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a bundle")
    # no database anywhere: RELEDGER_DB points at a file that does not exist, and stays so
    nowhere = tmp_path / "nowhere.db"
    proc = cli("verify-bundle", str(good), db=f"sqlite:///{nowhere}")
    # valid, but it vouches for itself: its own exit status and a warning, never a green OK
    assert proc.returncode == 3 and "NOT ANCHORED" in proc.stdout, proc.stdout + proc.stderr
    assert "the chain is complete" in proc.stdout  # its checkpoint signs the chain heads
    genesis = verify_bundle(tiny_bundle).genesis
    proc = cli("verify-bundle", str(good), "--genesis", genesis, db=f"sqlite:///{nowhere}")
    assert proc.returncode == 0 and "OK" in proc.stdout and "anchored" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("verify-bundle", str(good), "--genesis", "ab" * 32, db=f"sqlite:///{nowhere}")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # another ledger's genesis pinned
    proc = cli("verify-bundle", "--json", str(good), db=f"sqlite:///{nowhere}")
    assert json.loads(proc.stdout)["chain_complete"] is True and json.loads(proc.stdout)["anchored"] is False
    proc = cli("verify-bundle", "--json", str(bad), db=f"sqlite:///{nowhere}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["problems"]
    proc = cli("verify-bundle", str(junk))
    assert proc.returncode == 1 and "not a bundle" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("verify-bundle", str(tmp_path / "missing.bundle"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not nowhere.exists()


# --- FORMAT.md 4.4, 5, 7b: the departures an independent verifier found (issue 17) --------------

def test_bundles_exported_after_a_checkpoint_key_rotation_verify(db_url, tmp_path):
    """KeyAuthorized a new checkpoint key, KeyRevoked the old one, checkpoint with the new: the
    earlier notes (signed by the old key) are judged with the keys valid at their own sizes."""
    from helpers import seeded_key
    from reledger.ledger.checkpoint import NoteSigner
    from reledger.ledger.genesis import key_authorized_body
    from reledger.storage.verify import verify_database

    led = small_ledger(db_url)
    new = seeded_key("MIIT", SEED + 7, "checkpoint")
    led.store.append([led.regulator.sign("KeyAuthorized", key_authorized_body(new, T0, name=ORIGIN), T0)])
    led.store.append([led.regulator.sign("KeyRevoked", {"party": "MIIT", "key_id": led.checkpoint_key.key_id,
                                                        "reason": "rotation"}, T0)])
    with pytest.raises(ValueError):
        led.checkpoint()  # the old key is revoked now
    led.note_signer = NoteSigner(ORIGIN, new.private_key)
    led.add(M0)
    led.checkpoint()
    out = tmp_path / "m0.bundle"
    export_bundle(db_url, M0, out)
    led.close()
    rep = verify_bundle(out.read_bytes())
    assert rep.ok and rep.complete, rep.problems
    assert len(rep.consistency_checked) == 2  # both notes of the old key
    assert verify_database(db_url, workers=1).ok


def _note(led, size: int, signer=None) -> bytes:
    from reledger.ledger import heads as chain_heads
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    line = chain_heads.line(led.store.queries.chain_heads(led.store.read_cursor(), size))
    return sign_checkpoint(Checkpoint(ORIGIN, size, led.store.root(size), (line,)), signer or led.note_signer)


def test_an_earlier_note_signed_before_its_key_was_authorized_is_refused(db_url, tmp_path):
    """The checkpoint key is authorized at log index 2: a note of size 2 cannot be its."""
    led = small_ledger(db_url)
    out = tmp_path / "m0.bundle"
    export_bundle(db_url, M0, out)
    data = out.read_bytes()
    early = _note(led, 2)
    proof = led.store.consistency_proof(2, led.store.size())
    led.close()
    b = decode_bundle(data)
    bad = rebuild(data, consistency=[{"note": early, "proof": proof}] + b["consistency"])
    assert "consistency[0]" in failure(bad) and "no checkpoint key" in failure(bad)


def test_recorded_at_backwards_and_a_repeated_command_id_are_refused():
    """As whole-log verify refuses them (the tamper corpus builds the logs)."""
    from tamper_corpus import MINE, p_duplicate_command_id, p_recorded_at_backwards

    assert "record times go backwards" in failure(p_recorded_at_backwards().bundle(MINE))
    assert "already used on chain" in failure(p_duplicate_command_id().bundle(MINE))


def test_a_size_0_note_must_sign_the_empty_root():
    from tamper_corpus import MINE, p_checkpoint_size0_nonempty_root, p_clean, vkey
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint
    from reledger.ledger import merkle
    from tamper_corpus import ORIGIN as CORPUS_ORIGIN, note_signer

    msg = failure(p_checkpoint_size0_nonempty_root().bundle(MINE), trusted_checkpoint_keys=[vkey()])
    assert "consistency[0]" in msg and "empty tree's root" in msg
    # and an empty one with the empty root is a fine (if useless) earlier checkpoint
    data = p_clean().bundle(MINE)
    empty = sign_checkpoint(Checkpoint(CORPUS_ORIGIN, 0, merkle.EMPTY_ROOT), note_signer())
    good = rebuild(data, consistency=[{"note": empty, "proof": []}] + decode_bundle(data)["consistency"])
    assert verify_bundle(good, trusted_checkpoint_keys=[vkey()]).ok


def test_the_checkpoint_origin_must_be_its_key_name():
    from tamper_corpus import MINE, p_checkpoint_origin_mismatch

    assert "is not the name of the key that signed it" in failure(p_checkpoint_origin_mismatch().bundle(MINE))


def test_signature_lines_unknown_are_ignored_repeated_are_refused():
    """c2sp.org/signed-note: a line of a key the verifier does not know is ignored (a witness's
    cosignature, a post-quantum signature); two lines of one key refuse the note (FORMAT.md 5.2)."""
    from tamper_corpus import MINE, p_note_repeated_signature_line, p_note_unknown_signature_line

    assert verify_bundle(p_note_unknown_signature_line().bundle(MINE)).ok
    assert "two signature lines of key" in failure(p_note_repeated_signature_line().bundle(MINE))
