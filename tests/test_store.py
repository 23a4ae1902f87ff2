"""The event store (ledger.store) on SQLite and PostgreSQL: genesis, registry, appends,
receipts, idempotency, groups, reads, proofs, checkpoints, reopening, two writers, refusals
that write nothing, and append-only enforcement in the database."""

from __future__ import annotations

import threading
import uuid

import pytest

from reledger.ledger import encoding, merkle
from reledger.ledger.checkpoint import verify_checkpoint
from reledger.ledger.entry import ZERO_HASH, SignedEntry, leaf_bytes
from reledger.ledger.genesis import ChainSigner, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.ledger.registry import REGULATOR
from reledger.storage.store import AppendError, LedgerStore, Receipt
from reledger.storage.verify import verify_database

from helpers import (ORIGIN, REGULATOR_ID, T0, count, entry_with, fact, future_time, is_pg, new_ledger,
                     past_time, raw_connection, sql, tables)

MINE = "91110000MINE0001"
PLANT = "91150000SEPA0002"


@pytest.fixture
def led(db_url):
    ledger = new_ledger(db_url)
    yield ledger
    ledger.close()


@pytest.fixture
def mine(led):
    return led.register(MINE, ["MINE"])


# --- genesis and registry ----------------------------------------------------------------

def test_genesis(led):
    st = led.store
    assert st.size() == 3
    seq, head = st.chain_head(REGULATOR_ID)
    assert seq == 3 and head == led.regulator.head
    assert st.chain_head("NOBODY") == (0, ZERO_HASH)
    assert [r.type for r in st.records()] == ["KeyAuthorized", "PartyRegistered", "KeyAuthorized"]
    reg = st.registry()
    assert reg.root == REGULATOR_ID and REGULATOR in reg.roles[REGULATOR_ID]
    assert reg.keys[led.regulator.key.key_id].purpose == "entries"
    assert reg.keys[led.checkpoint_key.key_id].purpose == "checkpoint"
    assert st.chains() == [(REGULATOR_ID, 3)]


def test_first_entry_must_be_genesis(db_url):
    with LedgerStore(db_url) as st:
        key = SigningKey.generate(REGULATOR_ID)
        s = ChainSigner(key)
        with pytest.raises(AppendError) as ei:
            st.append([s.sign("PartyRegistered", {"party": REGULATOR_ID, "roles": ["REGULATOR"]}, T0)])
        assert ei.value.code == "genesis"
        other = SigningKey.generate(REGULATOR_ID)
        with pytest.raises(AppendError) as ei:  # authorizes a key other than the one signing it
            st.append([entry_with(key, type="KeyAuthorized", body=key_authorized_body(other, T0))])
        assert ei.value.code == "genesis"
        assert st.size() == 0


def test_register_party_and_keys(led):
    st = led.store
    m = led.register(MINE, ["MINE"])
    p = led.register(PLANT, ["SEPARATION", "SMELTER"])
    second = SigningKey.generate(MINE)
    led.authorize(second)
    reg = st.registry()
    assert reg.roles[MINE] == frozenset({"MINE"}) and reg.roles[PLANT] == frozenset({"SEPARATION", "SMELTER"})
    assert reg.keys[m.key.key_id].party == MINE and reg.keys[second.key_id].party == MINE
    assert reg.keys[p.key.key_id].authorized_at == 6
    # both keys of the mine sign its chain
    st.append([fact(m)])
    s2 = ChainSigner(second, seq=m.seq, head=m.head)
    st.append([fact(s2)])
    assert st.chain_head(MINE)[0] == 2
    # the registry as of an earlier size
    assert MINE not in st.registry(3).roles
    assert MINE in st.registry(5).roles and PLANT not in st.registry(5).roles


def test_registry_body_errors(led):
    led.register(MINE)
    k = SigningKey.generate(MINE)
    body = key_authorized_body(k, T0)
    body["key_id"] = "0" * 16
    n = led.store.size()
    with pytest.raises(AppendError) as ei:
        led.store.append([fact(ChainSigner(led.regulator.key, led.regulator.seq, led.regulator.head),
                               "KeyAuthorized", body)])
    assert ei.value.code == "body"
    with pytest.raises(AppendError) as ei:  # a party registered twice
        led.store.append([led.regulator.peek("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0)])
    assert ei.value.code == "body"
    with pytest.raises(AppendError) as ei:  # a key for an unregistered party
        led.store.append([led.regulator.peek("KeyAuthorized", key_authorized_body(SigningKey.generate("NOPE01"), T0),
                                             T0)])
    assert ei.value.code == "body"
    assert led.store.size() == n


# --- appends and receipts -----------------------------------------------------------------

def test_append_single_and_batched(led, mine):
    st = led.store
    n = st.size()
    r1 = st.append([fact(mine)])
    assert len(r1) == 1 and isinstance(r1[0], Receipt)
    assert (r1[0].index, r1[0].chain, r1[0].seq, r1[0].duplicate) == (n, MINE, 1, False)
    batch = [fact(mine) for _ in range(50)]
    rs = st.append(batch)
    assert [r.index for r in rs] == list(range(n + 1, n + 51))
    assert [r.seq for r in rs] == list(range(2, 52))
    assert [r.entry_hash for r in rs] == [s.hash for s in batch]
    assert len({r.recorded_at for r in rs}) == 1  # one transaction, one record time
    assert st.record(r1[0].index).recorded_us <= st.record(rs[0].index).recorded_us  # not as text: see test_encoding
    assert st.size() == n + 51
    assert st.chain_head(MINE) == (51, batch[-1].hash)
    rec = st.entry(MINE, 51)
    assert rec.envelope == batch[-1].envelope and rec.index == n + 50 and rec.recorded_at == rs[-1].recorded_at
    assert st.record(n).entry_hash == r1[0].entry_hash
    assert st.record(10**6) is None and st.entry(MINE, 52) is None
    assert [r.seq for r in st.chain_records(MINE, 10, 13)] == [10, 11, 12]
    assert dict(st.chains())[MINE] == 51
    assert r1[0].to_dict()["entry_hash"] == r1[0].entry_hash.hex()


def test_append_bytes_and_several_chains_in_one_group(led, mine):
    plant = led.register(PLANT, ["SEPARATION"])
    group = [fact(mine).envelope, fact(plant), fact(mine).envelope, fact(plant)]
    rs = led.store.append(group)
    assert [(r.chain, r.seq) for r in rs] == [(MINE, 1), (PLANT, 1), (MINE, 2), (PLANT, 2)]
    assert led.store.chain_head(PLANT) == (2, plant.head)


def test_records_iterates_pages(led, mine):
    led.store.append([fact(mine) for _ in range(30)])
    recs = list(led.store.records(page=7))
    assert [r.index for r in recs] == list(range(led.store.size()))
    for r in recs:
        s = SignedEntry.parse(r.envelope)
        assert (s.entry.chain, s.entry.seq, s.entry.type, s.hash) == (r.chain, r.seq, r.type, r.entry_hash)
        assert r.nodes[:32] == merkle.leaf_hash(leaf_bytes(r.entry_hash, r.index, r.recorded_at))
    assert [r.index for r in led.store.records(5, 9)] == [5, 6, 7, 8]


def test_append_pipelined(led, mine):
    n = led.store.size()
    batches = [[fact(mine) for _ in range(10)] for _ in range(5)]
    out = list(led.store.append_pipelined(batches))
    assert [len(b) for b in out] == [10] * 5
    assert led.store.size() == n + 50
    assert verify_database(led.url, workers=1).ok


# --- idempotency ----------------------------------------------------------------------

def test_same_command_same_bytes_returns_original_receipt(led, mine):
    st = led.store
    s = fact(mine)
    first = st.append([s])[0]
    st.append([fact(mine)])
    n = st.size()
    again = st.append([s])[0]
    assert again.duplicate is True
    assert (again.index, again.chain, again.seq, again.entry_hash, again.recorded_at) == \
        (first.index, first.chain, first.seq, first.entry_hash, first.recorded_at)
    assert st.size() == n
    # a retried batch whose first entries landed: duplicates then the new one
    t = fact(mine)
    rs = st.append([s, t])
    assert [r.duplicate for r in rs] == [True, False] and rs[1].index == n


def test_same_command_other_bytes_refused(led, mine):
    st = led.store
    cid = str(uuid.uuid4())
    st.append([fact(mine, command_id=cid)])
    n, events = st.size(), count(led.url, "events")
    other = fact(mine, body={"qty": "99"}, command_id=cid, advance=False)  # a fresh seq, same command
    with pytest.raises(AppendError) as ei:
        st.append([other])
    assert ei.value.code == "command_conflict" and ei.value.field == "command_id"
    assert st.size() == n and count(led.url, "events") == events
    # the same command id on another chain is another command
    plant = led.register(PLANT)
    assert not st.append([fact(plant, command_id=cid)])[0].duplicate


def test_same_command_other_bytes_within_one_group_refused(led, mine):
    cid = str(uuid.uuid4())
    n = led.store.size()
    with pytest.raises(AppendError) as ei:
        led.store.append([fact(mine, command_id=cid), fact(mine, body={"qty": "2"}, command_id=cid)])
    assert ei.value.code == "command_conflict" and ei.value.position == 1
    assert led.store.size() == n


def test_same_envelope_twice_in_one_group(led, mine):
    s = fact(mine)
    n = led.store.size()
    try:
        rs = led.store.append([s, s])
    except AppendError:
        assert led.store.size() == n
        return
    assert rs[0].index == rs[1].index == n and rs[1].duplicate
    assert led.store.size() == n + 1


def test_same_envelope_in_two_groups_of_one_call(led, mine):
    s = fact(mine)
    out = led.store.append_groups([[s], [s]])
    assert isinstance(out[0], list) and not isinstance(out[1], Exception)


# --- groups ----------------------------------------------------------------------------

def test_append_groups_bad_group_refused_whole(led, mine):
    st = led.store
    plant = led.register(PLANT)
    n = st.size()
    g1 = [fact(mine), fact(mine)]
    bad = [fact(plant), fact(plant), b"\x00garbage"]
    g3 = [fact(mine)]
    out = st.append_groups([g1, bad, g3])
    assert isinstance(out[0], list) and [r.index for r in out[0]] == [n, n + 1]
    assert isinstance(out[1], AppendError) and out[1].code == "malformed" and out[1].position == 2
    assert isinstance(out[2], list) and out[2][0].index == n + 2 and out[2][0].seq == 3
    assert st.size() == n + 3
    assert st.chain_head(PLANT) == (0, ZERO_HASH)  # nothing of the bad group landed


def test_append_groups_later_group_continues_earlier(led, mine):
    n = led.store.size()
    a, b = fact(mine), fact(mine)
    wrong = fact(mine, advance=False)
    wrong_prev = SignedEntry.parse(entry_with(mine.key, seq=wrong.entry.seq, prev=a.hash).envelope)
    out = led.store.append_groups([[a], [b], [wrong_prev]])
    assert [r.seq for r in out[0]] == [1] and [r.seq for r in out[1]] == [2]
    assert isinstance(out[2], AppendError) and out[2].code == "conflict" and out[2].field == "prev"
    assert led.store.size() == n + 2


def test_append_groups_registry_group_then_user(led):
    """A group registering a party and a later group of the same call using its key."""
    key = SigningKey.generate(MINE)
    reg = led.regulator
    g1 = [reg.sign("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0),
          reg.sign("KeyAuthorized", key_authorized_body(key, T0), T0)]
    s = ChainSigner(key)
    out = led.store.append_groups([g1, [fact(s)]])
    assert all(isinstance(o, list) for o in out)
    assert led.store.chain_head(MINE)[0] == 1


def test_refused_registry_group_does_not_leak_into_later_groups(led):
    key = SigningKey.generate(MINE)
    reg = led.regulator
    g1 = [reg.sign("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0),
          reg.sign("KeyAuthorized", key_authorized_body(key, T0), T0), b"bad"]
    out = led.store.append_groups([g1, [fact(ChainSigner(key))]])
    assert isinstance(out[0], AppendError)
    assert isinstance(out[1], AppendError) and out[1].code == "unregistered"
    assert led.store.size() == 3


# --- Merkle proofs and checkpoints ---------------------------------------------------------

def test_inclusion_and_consistency_proofs(led, mine):
    st = led.store
    for k in range(1, 6):
        st.append([fact(mine) for _ in range(k)])  # log sizes 4, 6, 9, 13, 18
    size = st.size()
    roots = {n: st.root(n) for n in range(0, size + 1)}
    assert roots[0] == merkle.EMPTY_ROOT
    assert roots[size] == st.root()
    leaves = [merkle.leaf_hash(leaf_bytes(r.entry_hash, r.index, r.recorded_at)) for r in st.records()]
    for n in range(1, size + 1):
        f = merkle.Frontier()
        for leaf in leaves[:n]:
            f.append(leaf)
        assert f.root() == roots[n]
    for n in (1, 2, 3, 7, 8, size):
        for i in range(n):
            assert st.leaf_hash(i) == leaves[i]
            merkle.verify_inclusion(leaves[i], i, n, st.inclusion_proof(i, n), roots[n])
    for n1 in range(1, size + 1):
        for n2 in range(n1, size + 1):
            merkle.verify_consistency(n1, n2, st.consistency_proof(n1, n2), roots[n1], roots[n2])
    # a proof does not verify against another root or leaf
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(leaves[1], 0, size, st.inclusion_proof(0, size), roots[size])
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(3, size, st.consistency_proof(3, size), roots[4], roots[size])
    with pytest.raises(ValueError):
        st.inclusion_proof(size, size)
    with pytest.raises(ValueError):
        st.consistency_proof(2, size + 1)
    with pytest.raises(LookupError):
        st.leaf_hash(size)


def test_checkpoint(led, mine):
    st = led.store
    assert st.latest_checkpoint() is None
    note1 = led.checkpoint()
    cp1 = verify_checkpoint(note1, led.note_signer.verifier(), ORIGIN)
    assert (cp1.size, cp1.root) == (st.size(), st.root(st.size()))
    assert led.checkpoint() == note1  # same size: the stored note
    st.append([fact(mine) for _ in range(4)])
    note2 = led.checkpoint()
    cp2 = verify_checkpoint(note2, led.note_signer.verifier(), ORIGIN)
    assert (cp2.size, cp2.root) == (st.size(), st.root())
    assert st.latest_checkpoint() == (cp2.size, cp2.root, note2)
    assert [c[0] for c in st.checkpoints()] == [cp1.size, cp2.size]
    merkle.verify_consistency(cp1.size, cp2.size, st.consistency_proof(cp1.size, cp2.size), cp1.root, cp2.root)
    rep = verify_database(led.url, workers=1)
    assert rep.ok and rep.checkpoints == 2


def test_heads_moved_on_equal_the_heads_read_whole(led, mine):
    """``heads_at`` (the heads a checkpoint signs) moves the heads it found last on by the
    entries since, instead of reading the whole log: at every size, going up by uneven steps and
    back down, on a fresh store and on one that asked before, they equal the whole-log query's."""
    import random

    st = led.store
    plant = led.register(PLANT, ["SEPARATION"])
    rng = random.Random(5)
    for _ in range(12):
        st.append([fact(rng.choice([mine, plant])) for _ in range(rng.randint(1, 6))])
    size = st.size()
    whole = {n: st.queries.chain_heads(st.read_cursor(), n) for n in range(size + 1)}
    sizes = sorted(rng.sample(range(size + 1), 8)) + [size, 3, size, 0, size]
    for n in sizes:
        assert st.heads_at(n) == whole[n], n
    with LedgerStore(led.url, create=False) as fresh:  # a store that never asked
        assert fresh.heads_at(size // 2) == whole[size // 2]
        assert fresh.heads_at(size) == whole[size]


def test_checkpoint_commits_to_every_chain_head(led, mine, monkeypatch):
    """Each checkpoint signs the head of every chain at its size (ledger/heads.py); verify
    rebuilds them from the log, on the fast path and the detailed one. A checkpoint signed by
    the log's own key whose heads hide the end of a chain is a problem; a checkpoint without
    heads (written before they existed) still verifies."""
    import reledger.storage.verify as verify_module
    from reledger.ledger import heads
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    st = led.store
    plant = led.register(PLANT, ["SEPARATION"])
    st.append([fact(mine) for _ in range(3)] + [fact(plant)])
    cp = verify_checkpoint(led.checkpoint(), led.note_signer.verifier(), ORIGIN)
    expected = {}
    for r in st.records():
        expected[r.chain] = (r.seq, r.entry_hash)
    assert len(expected) == 3 and heads.of_extensions(cp.extensions) == heads.commitment(expected)
    st.append([fact(mine)])  # after the checkpoint: not in its heads
    size = st.size()
    st.recorder.write_checkpoint(size, st.root(size), sign_checkpoint(Checkpoint(ORIGIN, size, st.root(size)),
                                                                      led.note_signer), 0)  # no heads line
    real, used = verify_module._fast_verify, []
    monkeypatch.setattr(verify_module, "_fast_verify", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    for workers in (1, 2):
        rep = verify_database(led.url, workers=workers)
        assert rep.ok and rep.checkpoints == 2, rep.problems
    assert all(r is not None for r in used)  # the fast path took it
    # the operator signs a checkpoint whose heads leave out the mine's last entry
    st.append([fact(mine)])
    size, root = st.size(), st.root()
    stale = dict(expected, **{MINE: (expected[MINE][0] + 1, [r.entry_hash for r in st.records()][-2])})
    assert stale != {r.chain: (r.seq, r.entry_hash) for r in st.records()}
    st.recorder.write_checkpoint(size, root, sign_checkpoint(Checkpoint(ORIGIN, size, root, (heads.line(stale),)),
                                                             led.note_signer), 0)
    used.clear()
    for workers in (1, 2):
        rep = verify_database(led.url, workers=workers)
        assert [p.code for p in rep.problems] == ["checkpoint"], rep.problems
        assert f"checkpoint of size {size}: the chain heads it signs (3 chains" in rep.problems[0].message
    assert used and all(r is None for r in used)  # the fast path doubted, the detailed path named it


def test_index_at_time(led, mine):
    st = led.store
    rs = []
    for _ in range(4):
        rs += st.append([fact(mine), fact(mine)])
    recs = list(st.records())
    assert st.index_at_time(0) == 0
    assert st.index_at_time(recs[0].recorded_us - 1) == 0
    assert st.index_at_time(2**62) == st.size()
    for r in recs:
        # every entry recorded at the same time as r counts: the answer covers r and its batch
        n = st.index_at_time(r.recorded_us)
        assert n > r.index
        assert all(x.recorded_us <= r.recorded_us for x in recs[:n])
        assert all(x.recorded_us > r.recorded_us for x in recs[n:])
        for t in (r.recorded_us - 1, r.recorded_us + 1):  # between record times: the same partition
            n = st.index_at_time(t)
            assert n == sum(1 for x in recs if x.recorded_us <= t)
    times = [r.recorded_us for r in recs]
    assert times == sorted(times)  # record times never go backwards along the log


# --- reopening and two writers --------------------------------------------------------

def test_reopen_continues_chains_and_root(led, mine):
    url = led.url
    led.store.append([fact(mine) for _ in range(5)])
    size, root, head = led.store.size(), led.store.root(), led.store.chain_head(MINE)
    led.store.close()
    with LedgerStore(url) as st:
        assert (st.size(), st.root(), st.chain_head(MINE)) == (size, root, head)
        rs = st.append([fact(mine)])
        assert rs[0].index == size and rs[0].seq == 6
        f = merkle.Frontier()
        for r in st.records():
            f.append(r.nodes[:32])
        assert f.root() == st.root()
        merkle.verify_consistency(size, size + 1, st.consistency_proof(size, size + 1), root, st.root())
        # a key registered before reopening still works; registry rebuilt from the log
        assert st.registry().keys[mine.key.key_id].party == MINE
    led.store = LedgerStore(url)  # for the fixture's close
    assert verify_database(url, workers=1).ok


def test_two_stores_alternate(led, mine):
    url = led.url
    other = LedgerStore(url)
    try:
        a, b = led.store, other
        last = a.size() - 1
        for i in range(6):
            st = a if i % 2 == 0 else b
            rs = st.append([fact(mine) for _ in range(i + 1)])
            assert rs[0].index == last + 1, "a stale cache would reuse or skip an index"
            last = rs[-1].index
        assert a.size() == b.size() == last + 1
        assert a.root() == b.root()
        # a key registered through one store is usable through the other, a revocation too
        plant = led.register(PLANT)  # through a
        assert b.append([fact(plant)])[0].chain == PLANT
        led.revoke(PLANT, plant.key.key_id)  # through a
        with pytest.raises(AppendError) as ei:
            b.append([fact(plant, advance=False)])
        assert ei.value.code == "revoked_key"
        # a chain advanced through b is continued through a
        b.append([fact(mine)])
        assert a.append([fact(mine)])[0].seq == mine.seq
    finally:
        other.close()
    rep = verify_database(url, workers=1)
    assert rep.ok, rep.problems


def test_fork_attempt_from_two_stores_concurrently(led, mine):
    """Two different entries for the same seq, submitted at once through two stores: exactly
    one is stored, the other is refused with code conflict."""
    url = led.url
    other = LedgerStore(url)
    try:
        led.store.append([fact(mine)])
        x = fact(mine, body={"qty": "1"}, advance=False)
        y = fact(mine, body={"qty": "2"}, advance=False)
        assert x.entry.seq == y.entry.seq and x.hash != y.hash
        n = led.store.size()
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def run(name, st, s):
            barrier.wait()
            try:
                results[name] = st.append([s])
            except AppendError as e:
                results[name] = e

        threads = [threading.Thread(target=run, args=("x", led.store, x)),
                   threading.Thread(target=run, args=("y", other, y))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        errors = [r for r in results.values() if isinstance(r, AppendError)]
        stored = [r for r in results.values() if isinstance(r, list)]
        assert len(errors) == 1 and len(stored) == 1, results
        assert errors[0].code == "conflict"
        assert led.store.size() == n + 1
        winner = x if results["x"] is stored[0] else y
        assert led.store.entry(MINE, x.entry.seq).entry_hash == winner.hash
    finally:
        other.close()
    assert verify_database(url, workers=1).ok


# --- refusals: a clear code and nothing written ---------------------------------------

def assert_refused(led, envelopes, code: str, field: str | None = None):
    st = led.store
    n, events, root = st.size(), count(led.url, "events"), st.root()
    with pytest.raises(AppendError) as ei:
        st.append(envelopes)
    err = ei.value
    assert err.code == code, err.to_dict()
    if field is not None:
        assert err.field == field, err.to_dict()
    assert str(err) and err.to_dict()["code"] == code
    assert st.size() == n and count(led.url, "events") == events and st.root() == root
    return err


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x80", b"\x82\xa5entry\xc4\x00\xa3sig\xc4\x00", None, "text",
                                  bytearray(b"\x80"), 12])
def test_malformed_bytes(led, mine, data):
    assert_refused(led, [data], "malformed")
    assert_refused(led, [fact(mine, advance=False), data], "malformed").position == 1


def test_wrong_signature(led, mine):
    s = fact(mine, advance=False)
    forged = SignedEntry.from_parts(s.content, SigningKey.generate(MINE).sign(b"reledger/v1/entry\n", s.content))
    assert_refused(led, [forged], "signature", "sig")
    flipped = SignedEntry.from_parts(s.content, bytes([s.signature[0] ^ 1]) + s.signature[1:])
    assert_refused(led, [flipped.envelope], "signature")


def test_wrong_signature_with_key_unknown_at_precheck(led):
    """The key is authorized in the same group: the signature is checked under the lock."""
    key = SigningKey.generate(MINE)
    reg = led.regulator
    s = entry_with(key)
    forged = SignedEntry.from_parts(s.content, bytes(64))
    g = [ChainSigner(reg.key, reg.seq, reg.head).sign("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0)]
    g.append(ChainSigner(reg.key, reg.seq + 1, g[0].hash).sign("KeyAuthorized", key_authorized_body(key, T0), T0))
    assert_refused(led, g + [forged], "signature")
    assert led.store.append(g + [s])[2].seq == 1


def test_unknown_key(led, mine):
    stranger = SigningKey.generate(MINE)
    assert_refused(led, [entry_with(stranger)], "unknown_key", "key_id")


def test_revoked_key(led, mine):
    led.store.append([fact(mine)])
    led.revoke(MINE, mine.key.key_id)
    assert_refused(led, [fact(mine, advance=False)], "revoked_key", "key_id")
    # a new key for the same party continues the chain
    new = SigningKey.generate(MINE)
    led.authorize(new)
    assert led.store.append([fact(ChainSigner(new, mine.seq, mine.head))])[0].seq == 2


def test_key_of_another_party(led, mine):
    plant = led.register(PLANT)
    assert_refused(led, [entry_with(plant.key, chain=MINE)], "foreign_key", "key_id")
    # the regulator's key does not sign for the mine either
    assert_refused(led, [entry_with(led.regulator.key, chain=MINE)], "foreign_key")


def test_unregistered_party(led):
    k = SigningKey.generate("91440000GHOST001")
    assert_refused(led, [entry_with(k)], "unregistered", "chain")


def test_party_registered_without_key(led):
    led.store.append([led.regulator.sign("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0)])
    assert_refused(led, [entry_with(SigningKey.generate(MINE))], "unknown_key")


@pytest.mark.parametrize("type_", ["PartyRegistered", "PartyDesignationChanged", "KeyAuthorized", "KeyRevoked"])
def test_non_regulator_writing_registry_types(led, mine, type_):
    body = {"party": MINE, "roles": ["MINE", "REGULATOR"]}
    if type_ == "KeyAuthorized":
        body = key_authorized_body(SigningKey.generate(MINE), T0)
    elif type_ == "KeyRevoked":
        body = {"party": MINE, "key_id": mine.key.key_id}
    assert_refused(led, [fact(mine, type_, body, advance=False)], "forbidden", "type")


def test_checkpoint_key_does_not_sign_entries(led):
    ck = led.checkpoint_key
    s = entry_with(SigningKey(REGULATOR_ID, ck.private_key), seq=led.regulator.seq + 1, prev=led.regulator.head)
    assert_refused(led, [s], "unknown_key")


def test_seq_gap(led, mine):
    led.store.append([fact(mine)])
    gap = entry_with(mine.key, seq=3, prev=mine.head)
    assert_refused(led, [gap], "conflict", "seq")
    assert_refused(led, [entry_with(mine.key, seq=5, prev=b"\x01" * 32)], "conflict", "seq")


def test_first_entry_of_chain_must_be_seq_1(led, mine):
    assert_refused(led, [entry_with(mine.key, seq=2, prev=b"\x01" * 32)], "conflict", "seq")


def test_wrong_prev(led, mine):
    led.store.append([fact(mine), fact(mine)])
    assert_refused(led, [entry_with(mine.key, seq=3, prev=b"\x07" * 32)], "conflict", "prev")
    assert_refused(led, [entry_with(mine.key, seq=3, prev=ZERO_HASH)], "conflict", "prev")


def test_seq_reuse_fork_attempt(led, mine):
    st = led.store
    a = fact(mine, body={"qty": "1"}, advance=False)
    b = fact(mine, body={"qty": "2"}, advance=False)
    st.append([a])
    assert_refused(led, [b], "conflict", "seq")
    assert st.entry(MINE, 1).entry_hash == a.hash and st.chain_head(MINE) == (1, a.hash)
    # and within one group
    mine.advance(a)
    c = fact(mine, body={"qty": "3"}, advance=False)
    d = fact(mine, body={"qty": "4"}, advance=False)
    err = assert_refused(led, [c, d], "conflict")
    assert err.position == 1 and err.seq == 2


def test_expired_key(led):
    key = SigningKey.generate(MINE)
    led.register(MINE, key=key, valid_until=past_time(1))
    assert_refused(led, [entry_with(key)], "expired_key", "key_id")


def test_key_not_yet_valid(led):
    key = SigningKey.generate(MINE)
    led.register(MINE, key=key, valid_from=future_time(30))
    assert_refused(led, [entry_with(key)], "expired_key", "key_id")


def test_key_valid_until_future_works(led):
    key = SigningKey.generate(MINE)
    led.register(MINE, key=key, valid_until=future_time(30))
    assert led.store.append([entry_with(key)])[0].seq == 1


def test_bad_entry_refuses_its_whole_group(led, mine):
    n = led.store.size()
    good = [fact(mine), fact(mine)]
    stranger = entry_with(SigningKey.generate(MINE), seq=3, prev=good[-1].hash)
    err = assert_refused(led, good + [stranger], "unknown_key")
    assert (err.position, err.chain, err.seq) == (2, MINE, 3)
    assert led.store.size() == n and led.store.chain_head(MINE) == (0, ZERO_HASH)


# --- the database itself is append-only ---------------------------------------------------

def _expect_db_refusal(url: str, statement: str) -> None:
    t = tables(url)
    with raw_connection(url) as conn:
        with pytest.raises(Exception) as ei:
            conn.execute(t.q(statement))
    assert "append-only" in str(ei.value) or "denied" in str(ei.value), ei.value


_COLUMNS = {"events": ("originator_id", "originator_version", "topic", "state"),
            "log": ("idx", "chain", "seq", "type", "command_id", "entry_hash", "recorded_us", "nodes"),
            "checkpoints": ("size", "root", "note", "created_us")}
_ORDER = {"events": "originator_id, originator_version", "log": "idx", "checkpoints": "size"}
# each table's unique keys, and a column outside them that a forged row changes
_KEYS = {"events": [("originator_id", "originator_version")],
         "log": [("idx",), ("chain", "seq"), ("command_id", "chain")],
         "checkpoints": [("size",)]}
_CHANGED = {"events": "state", "log": "entry_hash", "checkpoints": "note"}


def _table_rows(url: str, table: str) -> list[tuple]:
    """The whole table, in key order, binary values as bytes."""
    rows = sql(url, f"SELECT {', '.join(_COLUMNS[table])} FROM {{{table}}} ORDER BY {_ORDER[table]}")
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]


def _forgeries(url: str, table: str, row: tuple, size: int) -> list[tuple[str, str, tuple]]:
    """(what, SQL, parameters) of each way to change or remove ``row`` (a stored row of
    ``table``) with one statement: UPDATE, DELETE, and on each unique key an INSERT that meets
    the row: REPLACE, INSERT OR REPLACE and upserts on SQLite, upserts (ON CONFLICT DO UPDATE)
    and TRUNCATE on PostgreSQL. A forged row differs from ``row`` in one column outside its
    keys; on the log it takes the next index (what the gap-free trigger admits) unless the
    conflict is on the index itself."""
    cols = _COLUMNS[table]
    changed = _CHANGED[table]
    names = ", ".join(cols)
    marks = ", ".join("?" * len(cols))
    out = [("UPDATE", f"UPDATE {{{table}}} SET {changed} = ?", (b"forged",)),
           ("DELETE", f"DELETE FROM {{{table}}}", ())]
    if is_pg(url):
        out.append(("TRUNCATE", f"TRUNCATE {{{table}}}", ()))
        out.append(("TRUNCATE CASCADE", f"TRUNCATE {{{table}}} CASCADE", ()))
    for key in _KEYS[table]:
        forged = dict(zip(cols, row))
        forged[changed] = b"forged"
        if table == "log" and key != ("idx",):
            forged["idx"] = size
        values = tuple(forged[c] for c in cols)
        label = "(" + ", ".join(key) + ")"
        upsert = (f"INSERT INTO {{{table}}} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(key)}) "
                  f"DO UPDATE SET {changed} = excluded.{changed}")
        out.append((f"upsert on {label}", upsert, values))
        out.append((f"upsert on {label}, all columns", upsert.replace(
            f"DO UPDATE SET {changed} = excluded.{changed}",
            "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in cols)), values))
        if not is_pg(url):
            out.append((f"REPLACE on {label}", f"REPLACE INTO {{{table}}} ({names}) VALUES ({marks})", values))
            out.append((f"INSERT OR REPLACE on {label}",
                        f"INSERT OR REPLACE INTO {{{table}}} ({names}) VALUES ({marks})", values))
    return out


@pytest.mark.parametrize("table", ["events", "log", "checkpoints"])
def test_every_change_to_a_stored_row_is_refused_by_the_database(led, mine, table):
    """UPDATE, DELETE, REPLACE, INSERT OR REPLACE and upserts (ON CONFLICT DO UPDATE) on every
    unique key of every ledger table, and TRUNCATE on PostgreSQL, run on the database itself
    (not through the store): each is refused, and the table is unchanged, row for row. (SQLite
    fires no DELETE trigger for the rows REPLACE removes: an INSERT that meets an existing row
    is refused by a trigger of its own.)"""
    led.store.append([fact(mine)])
    led.checkpoint()
    url = led.url
    before = _table_rows(url, table)
    size = led.store.size()
    forgeries = _forgeries(url, table, before[-1], size)
    assert len(forgeries) >= 4
    t = tables(url)
    for what, statement, params in forgeries:
        with raw_connection(url) as conn:
            with pytest.raises(Exception) as ei:
                conn.execute(t.q(statement), params)
        message = str(ei.value)
        assert "append-only" in message or "gap-free" in message, (what, message)
        assert _table_rows(url, table) == before, what
    assert verify_database(url, workers=1).ok
    assert led.store.append([fact(mine)])[0].index == size  # and the store appends as before


@pytest.mark.parametrize("table", ["events", "log", "checkpoints"])
def test_an_insert_of_a_new_row_is_not_refused_by_the_replace_trigger(led, mine, table):
    """The trigger that refuses an INSERT meeting an existing row lets a new row in (a raw
    INSERT of a row no key of which exists passes it; the log's index must still be the next)."""
    url = led.url
    size = led.store.size()
    values = {"events": ("NEWCHAIN", 1, "T", b"x"),
              "log": (size, "NEWCHAIN", 1, "T", "c-new", b"h" * 32, 0, b"n" * 32),
              "checkpoints": (10 ** 9, b"r", b"n", 0)}[table]
    cols = _COLUMNS[table]
    before = len(_table_rows(url, table))
    sql(url, f"INSERT INTO {{{table}}} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
    assert len(_table_rows(url, table)) == before + 1


def test_sqlite_trigger_names(sqlite_url):
    led = new_ledger(sqlite_url)
    led.close()
    with raw_connection(sqlite_url) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    for table in ("stored_events", "reledger_log", "reledger_checkpoints"):
        assert {f"{table}_no_update", f"{table}_no_delete", f"{table}_no_replace"} <= names


def test_log_index_gap_refused_by_database(led, mine):
    """Even a raw INSERT cannot leave a hole in the log index."""
    url = led.url
    n = led.store.size()
    with raw_connection(url) as conn:
        with pytest.raises(Exception) as ei:
            conn.execute(tables(url).q(
                "INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
                "VALUES (?, 'X1', 1, 'T', 'c', ?, 0, ?)"), (n + 5, b"\x00" * 32, b"\x00" * 32))
    assert "gap-free" in str(ei.value)


def test_serving_role_insert_and_select_only(pg_url):
    import psycopg

    led = new_ledger(pg_url)
    role = "reledger_t_" + uuid.uuid4().hex[:8]
    try:
        led.checkpoint()
        led.store.grant_serving_role(role)
        led.store.grant_serving_role(role)  # idempotent
        t = tables(pg_url)
        with raw_connection(pg_url) as conn:
            conn.execute(f'SET ROLE "{role}"')
            for table in (t.events, t.log, t.checkpoints):
                assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
            # INSERT allowed (rolled back: the rows are not real entries)
            with pytest.raises(_Rollback):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t.events} (originator_id, originator_version, topic, state) "
                                 "VALUES ('ROLE1', 1, 'T', %s)", (b"x",))
                    conn.execute(t.q("INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, "
                                     "recorded_us, nodes) VALUES (3, 'ROLE1', 1, 'T', 'c', ?, 0, ?)"),
                                 (b"h", b"n"))
                    raise _Rollback
            # checkpoints come from the operator's checkpoint key only: the serving role may not add one
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"INSERT INTO {t.checkpoints} (size, root, note, created_us) "
                             "VALUES (999, %s, %s, 0)", (b"r", b"n"))
            for table in (t.events, t.log, t.checkpoints):
                for stmt in (f"UPDATE {table} SET {'topic' if table == t.events else 'size' if table == t.checkpoints else 'seq'} "
                             f"= {'topic' if table == t.events else 'size' if table == t.checkpoints else 'seq'}",
                             f"DELETE FROM {table}", f"TRUNCATE {table}"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(stmt)
        assert led.store.size() == 3 and verify_database(pg_url, workers=1).ok
    finally:
        led.close()
        with raw_connection(pg_url) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


class _Rollback(Exception):
    pass


def test_serving_role_refused_on_sqlite(sqlite_url):
    led = new_ledger(sqlite_url)
    try:
        with pytest.raises(ValueError):
            led.store.grant_serving_role()
    finally:
        led.close()


# --- more registry, concurrency and operational cases ----------------------------------

def test_empty_group(led):
    n = led.store.size()
    assert led.store.append([]) == []
    assert led.store.append_groups([[], []]) == [[], []]
    assert led.store.size() == n


def test_provincial_regulator_registers_and_loses_role(led):
    prov = led.register("PROV-NM", ["REGULATOR"])
    key = SigningKey.generate(MINE)
    led.store.append([prov.sign("PartyRegistered", {"party": MINE, "roles": ["MINE"]}, T0),
                      prov.sign("KeyAuthorized", key_authorized_body(key, T0), T0)])
    assert led.store.append([entry_with(key)])[0].chain == MINE
    led.store.append([led.regulator.sign("PartyDesignationChanged", {"party": "PROV-NM", "roles": ["AUDITOR"]},
                                         T0)])
    assert_refused(led, [fact(prov, "PartyRegistered", {"party": PLANT, "roles": ["MINE"]}, advance=False)],
                   "forbidden")
    # the root regulator cannot lose its role
    assert_refused(led, [led.regulator.peek("PartyDesignationChanged",
                                            {"party": REGULATOR_ID, "roles": ["AUDITOR"]}, T0)], "body")
    assert verify_database(led.url, workers=1).ok


def test_revoked_key_in_same_call_refused(led, mine):
    """A revocation in one group of a call applies to the following groups of that call."""
    rev = [led.regulator.sign("KeyRevoked", {"party": MINE, "key_id": mine.key.key_id}, T0)]
    after = [fact(mine, advance=False)]
    out = led.store.append_groups([rev, after])
    assert isinstance(out[0], list)
    assert isinstance(out[1], AppendError) and out[1].code == "revoked_key"


def test_concurrent_writers_two_stores(led):
    signers = [led.register(f"9111000000MINE{i:04d}") for i in range(4)]
    other = LedgerStore(led.url)
    stores = [led.store, other]
    errors: list = []

    def work(i):
        st, s = stores[i % 2], signers[i]
        for _ in range(15):
            try:
                st.append([fact(s) for _ in range(3)])
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
                return

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        n = 3 + 8 + 4 * 15 * 3
        assert led.store.size() == other.size() == n
        assert [seq for _, seq in led.store.chains() if _ != REGULATOR_ID] == [45] * 4
        assert led.store.root() == other.root()
    finally:
        other.close()
    rep = verify_database(led.url, workers=1)
    assert rep.ok, rep.problems


def test_checkpoint_with_unregistered_key_refused(led):
    from reledger.ledger.checkpoint import NoteSigner

    rogue = NoteSigner(ORIGIN, SigningKey.generate(REGULATOR_ID).private_key)
    try:
        led.store.checkpoint(rogue)
    except Exception:  # noqa: BLE001 - refusing is the expected behaviour
        pass
    assert led.store.checkpoints() == []
    assert verify_database(led.url, workers=1).ok


def test_schema_with_upper_case(pg_url):
    from reledger.storage.reader import DatabaseURL, DatabaseURLError

    schema = "Ledger_" + uuid.uuid4().hex[:6]
    url = pg_url.split("?")[0] + "?schema=" + schema
    try:
        try:
            DatabaseURL.parse(url)
        except DatabaseURLError:
            return  # refusing the name is fine too
        led = new_ledger(url)
        try:
            assert led.store.size() == 3
        finally:
            led.close()
    finally:
        with raw_connection(pg_url) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_serving_role_can_append(pg_url):
    led = new_ledger(pg_url)
    m = led.register(MINE)
    role = "reledger_t_" + uuid.uuid4().hex[:8]
    try:
        led.store.grant_serving_role(role)
        with raw_connection(pg_url) as conn:
            conn.execute(f'ALTER ROLE "{role}" LOGIN')
        u = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
        with LedgerStore(u, create=False) as st:
            assert st.size() == 5
            assert st.append([fact(m)])[0].index == 5
            assert st.append_groups([[fact(m)], [b"junk"], [fact(m)]])[2][0].index == 7
            s8 = fact(m)
            assert st.append([s8])[0].seq == 4
            assert st.append([s8])[0].duplicate
            with pytest.raises(AppendError) as ei:  # refusals still answer cleanly
                st.append([entry_with(m.key, seq=4, prev=s8.entry.prev, body={"qty": "5"})])
            assert ei.value.code == "conflict"
            with pytest.raises(Exception) as refused:  # the serving role writes no checkpoint (the operator does)
                st.checkpoint(led.note_signer)
            assert "permission denied" in str(refused.value)
        note = led.store.checkpoint(led.note_signer)
        assert verify_checkpoint(note, led.note_signer.verifier(), ORIGIN).size == 9
        rep = verify_database(u, workers=1)  # an auditor with the serving role's rights
        assert rep.ok and rep.entries == 9 and rep.checkpoints == 1, rep.problems
    finally:
        led.close()
        with raw_connection(pg_url) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


# --- a random mix of operations, against a model ------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("dup"), st.integers(0, 10**6)),
    st.tuples(st.just("fork"), st.integers(0, 2)),
    st.tuples(st.just("command_conflict"), st.integers(0, 10**6)),
    st.tuples(st.just("bad_sig"), st.integers(0, 2)),
    st.tuples(st.just("groups"), st.integers(0, 2), st.integers(0, 2)),
    st.just(("reopen",)),
    st.just(("checkpoint",)),
), min_size=1, max_size=12)


def _fresh_url(db_url: str) -> str:
    if is_pg(db_url):
        return db_url.rsplit("schema=", 1)[0] + "schema=" + "t_" + uuid.uuid4().hex[:12]
    return db_url.rsplit("/", 1)[0] + f"/h_{uuid.uuid4().hex[:8]}.db"


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(ops=OPS)
def test_random_operations_match_a_model(db_url, ops):
    from conftest import drop_schema

    url = _fresh_url(db_url)
    led = new_ledger(url)
    try:
        parties = [led.register(f"9111000000MINE{i:04d}") for i in range(3)]
        stored: list[SignedEntry] = []  # every accepted entry, in log order from index 3
        notes: list[bytes] = []
        for op in ops:
            st_ = led.store
            n = st_.size()
            if op[0] == "append":
                group = [fact(parties[op[1]]) for _ in range(op[2])]
                rs = st_.append(group)
                assert [r.index for r in rs] == list(range(n, n + op[2]))
                stored += group
            elif op[0] == "dup" and stored:
                s = stored[op[1] % len(stored)]
                r = st_.append([s])[0]
                assert r.duplicate and r.entry_hash == s.hash
            elif op[0] == "fork" and parties[op[1]].seq:
                p = parties[op[1]]
                rec = st_.entry(p.chain, p.seq)
                prev = bytes(32) if p.seq == 1 else st_.entry(p.chain, p.seq - 1).entry_hash
                forged = entry_with(p.key, seq=p.seq, prev=prev, body={"qty": "666"})
                with pytest.raises(AppendError) as ei:
                    st_.append([forged])
                assert ei.value.code == "conflict"
                assert st_.entry(p.chain, p.seq).entry_hash == rec.entry_hash
            elif op[0] == "command_conflict" and stored:
                s = stored[op[1] % len(stored)]
                p = next(q for q in parties if q.chain == s.entry.chain)
                with pytest.raises(AppendError) as ei:
                    st_.append([fact(p, body={"qty": "7"}, command_id=s.entry.command_id, advance=False)])
                assert ei.value.code == "command_conflict"
            elif op[0] == "bad_sig":
                s = fact(parties[op[1]], advance=False)
                with pytest.raises(AppendError) as ei:
                    st_.append([SignedEntry.from_parts(s.content, bytes(64))])
                assert ei.value.code == "signature"
            elif op[0] == "groups":
                good = [fact(parties[op[1]])]
                bad = [fact(parties[op[2]], advance=False), b"junk"]
                out = st_.append_groups([bad, good, bad])
                assert isinstance(out[0], AppendError) and isinstance(out[2], AppendError)
                assert out[1][0].index == n
                stored += good
            elif op[0] == "reopen":
                st_.close()
                led.store = LedgerStore(url)
            elif op[0] == "checkpoint":
                notes.append(led.checkpoint())
            assert led.store.size() == 9 + len(stored)
        st_ = led.store
        for i, s in enumerate(stored):
            rec = st_.record(9 + i)
            assert rec.envelope == s.envelope and (rec.chain, rec.seq) == (s.entry.chain, s.entry.seq)
        size = st_.size()
        for note in notes:
            cp = verify_checkpoint(note, led.note_signer.verifier(), ORIGIN)
            merkle.verify_consistency(cp.size, size, st_.consistency_proof(cp.size, size), cp.root, st_.root())
        rep = verify_database(url, workers=1, checkpoint_notes=notes)
        assert rep.ok, rep.problems
        assert rep.entries == size
    finally:
        led.close()
        if is_pg(url):
            drop_schema(url.rsplit("schema=", 1)[1])


def test_concurrent_checkpoints_return_the_stored_note(led, mine):
    other = LedgerStore(led.url)
    try:
        for _ in range(5):
            led.store.append([fact(mine)])
            barrier = threading.Barrier(2)
            notes: list = []

            def run(st):
                barrier.wait()
                try:
                    notes.append(st.checkpoint(led.note_signer))
                except Exception as e:  # noqa: BLE001 - reported by the assertion below
                    notes.append(e)

            threads = [threading.Thread(target=run, args=(s,)) for s in (led.store, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert all(isinstance(n, bytes) for n in notes), notes
            assert notes[0] == notes[1] == led.store.latest_checkpoint()[2]
    finally:
        other.close()


class _Clock:
    def __init__(self, us: int):
        self.us = us

    def __call__(self) -> int:
        return self.us


def _us(text: str) -> int:
    from reledger.ledger.encoding import parse_time, time_to_micros

    return time_to_micros(parse_time(text))


def test_key_validity_window_follows_the_record_clock(db_url):
    clock = _Clock(_us("2024-01-01T00:00:00Z"))
    led = new_ledger(db_url, clock=clock)
    try:
        key = SigningKey.generate(MINE)
        led.register(MINE, key=key, valid_from="2024-02-01T00:00:00Z", valid_until="2024-03-01T00:00:00Z")
        s = ChainSigner(key)
        assert_refused(led, [fact(s, advance=False)], "expired_key")  # not valid yet
        clock.us = _us("2024-02-01T00:00:00Z")  # valid_from is inclusive
        r = led.store.append([fact(s)])[0]
        assert r.recorded_at == "2024-02-01T00:00:00Z"
        clock.us = _us("2024-02-29T23:59:59.999999Z")
        led.store.append([fact(s)])
        clock.us = _us("2024-03-01T00:00:00Z")  # valid_until is exclusive
        assert_refused(led, [fact(s, advance=False)], "expired_key")
        # a clock that goes backwards never makes record times go backwards
        clock.us = _us("2023-06-01T00:00:00Z")
        led.store.append([led.regulator.sign("PartyRegistered", {"party": PLANT, "roles": ["MINE"]}, T0)])
        times = [r.recorded_us for r in led.store.records()]
        assert times == sorted(times)
        assert led.store.index_at_time(_us("2024-02-15T00:00:00Z")) == 6
        rep = verify_database(db_url, workers=1)
        assert rep.ok, rep.problems  # each entry was valid when it was recorded
    finally:
        led.close()


def test_checkpoint_key_rotation(led, mine):
    from reledger.ledger.checkpoint import NoteSigner

    first = led.checkpoint()
    led.revoke(REGULATOR_ID, led.checkpoint_key.key_id)
    led.store.append([fact(mine)])
    with pytest.raises(ValueError):
        led.checkpoint()  # the revoked key signs no more
    new = SigningKey.generate(REGULATOR_ID, "checkpoint")
    led.store.append([led.regulator.sign("KeyAuthorized", key_authorized_body(new, T0, name=ORIGIN), T0)])
    with pytest.raises(ValueError):
        led.store.checkpoint(NoteSigner("other.name", new.private_key))  # the registered name only
    signer = NoteSigner(ORIGIN, new.private_key)
    note = led.store.checkpoint(signer)
    cp = verify_checkpoint(note, signer.verifier(), ORIGIN)
    assert cp.size == led.store.size()
    rep = verify_database(led.url, workers=1, checkpoint_notes=[first])
    assert rep.ok and rep.checkpoints == 3, rep.problems


def test_append_pipelined_stops_at_a_refused_batch(led, mine):
    n = led.store.size()
    b1 = [fact(mine) for _ in range(3)]
    bad = [fact(mine), b"junk"]
    b3 = [entry_with(mine.key, seq=4, prev=b1[-1].hash)]
    got = []
    with pytest.raises(AppendError) as ei:
        for receipts in led.store.append_pipelined([b1, bad, b3]):
            got.append(receipts)
    assert ei.value.code == "malformed" and len(got) == 1
    assert led.store.size() == n + 3


def test_sqlite_two_processes_append_at_once(sqlite_url):
    import subprocess
    import sys

    led = new_ledger(sqlite_url)
    keys = []
    for i in range(2):
        k = SigningKey.generate(f"9111000000MINE{i:04d}")
        led.register(k.party, key=k)
        keys.append(k)
    led.close()
    child = (
        "import sys\n"
        "from reledger.ledger.genesis import ChainSigner\n"
        "from reledger.ledger.keys import SigningKey\n"
        "from reledger.storage.store import LedgerStore\n"
        "url, party, seed = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])\n"
        "s = ChainSigner(SigningKey.from_seed(party, seed))\n"
        "with LedgerStore(url) as st:\n"
        "    for i in range(40):\n"
        "        st.append([s.sign('MiningOutput', {'qty': str(i + 1)}, '2024-01-01T00:00:00Z') for _ in range(5)])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", child, sqlite_url, k.party, k.seed.hex()]) for k in keys]
    assert [p.wait(120) for p in procs] == [0, 0]
    rep = verify_database(sqlite_url, workers=1)
    assert rep.ok and rep.entries == 7 + 2 * 200, rep.problems


# --- database URLs ----------------------------------------------------------------------

@pytest.mark.parametrize("url,expected", [
    ("postgresql://postgres@127.0.0.1:5432/test", {"user": "postgres", "host": "127.0.0.1", "port": "5432",
                                                   "dbname": "test"}),
    ("postgresql://alice:p%3Dq@db.example:6543/ledger?schema=prov_nm",
     {"user": "alice", "password": "p=q", "host": "db.example", "port": "6543", "dbname": "ledger"}),
    ("postgres://bob@localhost/x", {"user": "bob", "host": "localhost", "port": "5432", "dbname": "x"}),
])
def test_database_url_conninfo(url, expected):
    from psycopg.conninfo import conninfo_to_dict

    from reledger.storage.reader import DatabaseURL

    assert conninfo_to_dict(DatabaseURL.parse(url).conninfo()) == expected


@pytest.mark.parametrize("url,key,value", [
    ("postgresql://postgres:a%20b@127.0.0.1:5432/test", "password", "a b"),
    ("postgresql://postgres:x%20dbname%3Dother@127.0.0.1:5432/test", "dbname", "test"),
    ("postgresql://us%20er@127.0.0.1/test", "user", "us er"),
    ("postgresql://postgres@127.0.0.1/my%20db", "dbname", "my db"),
])
def test_database_url_conninfo_quoting(url, key, value):
    from psycopg.conninfo import conninfo_to_dict

    from reledger.storage.reader import DatabaseURL

    assert conninfo_to_dict(DatabaseURL.parse(url).conninfo())[key] == value


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "mysql://x@y/z",
                                 "postgresql://postgres@h/db?schema=Upper", "postgresql://p@h/db?schema=a;drop",
                                 "postgresql://p@h/db?schema=a.b"])
def test_database_url_refused(url):
    from reledger.storage.reader import DatabaseURL, DatabaseURLError

    with pytest.raises(DatabaseURLError):
        DatabaseURL.parse(url)


# --- registry bodies (FORMAT 4.1): refused with code body, nothing written ------------------

def _ka(key, **over):
    body = key_authorized_body(key, T0)
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("case", [
    "reuse_after_revocation", "revoke_twice", "revoke_wrong_party", "revoke_unknown", "designation_unregistered",
    "checkpoint_key_without_name", "no_valid_from", "bad_valid_until", "short_public_key", "unknown_purpose",
    "roles_not_a_list", "roles_missing", "party_missing", "key_id_mismatch",
])
def test_registry_body_rules(led, mine, case):
    reg = led.regulator
    k = SigningKey.generate(MINE)
    if case in ("reuse_after_revocation", "revoke_twice"):
        led.authorize(k)
        led.revoke(MINE, k.key_id)
    bodies = {
        "reuse_after_revocation": ("KeyAuthorized", _ka(k)),
        "revoke_twice": ("KeyRevoked", {"party": MINE, "key_id": k.key_id}),
        "revoke_wrong_party": ("KeyRevoked", {"party": PLANT, "key_id": mine.key.key_id}),
        "revoke_unknown": ("KeyRevoked", {"party": MINE, "key_id": "0123456789abcdef"}),
        "designation_unregistered": ("PartyDesignationChanged", {"party": PLANT, "roles": ["MINE"]}),
        "checkpoint_key_without_name": ("KeyAuthorized", _ka(SigningKey.generate(REGULATOR_ID, "checkpoint"))),
        "no_valid_from": ("KeyAuthorized", _ka(k, valid_from=None)),
        "bad_valid_until": ("KeyAuthorized", _ka(k, valid_until="2024-01-01")),
        "short_public_key": ("KeyAuthorized", _ka(k, public_key=k.public_key[:31])),
        "unknown_purpose": ("KeyAuthorized", _ka(k, purpose="everything")),
        "roles_not_a_list": ("PartyRegistered", {"party": PLANT, "roles": "MINE"}),
        "roles_missing": ("PartyRegistered", {"party": PLANT}),
        "party_missing": ("PartyRegistered", {"roles": ["MINE"]}),
        "key_id_mismatch": ("KeyAuthorized", _ka(k, key_id=SigningKey.generate(MINE).key_id)),
    }
    type_, body = bodies[case]
    err = assert_refused(led, [reg.peek(type_, body, T0)], "body")
    assert err.field and err.field.startswith("body")


# --- O(log n): appends and proofs never re-read the log -------------------------------------

def test_append_and_proofs_read_o_log_n_rows(led, mine, monkeypatch):
    from reledger.storage.reader import Queries

    st = led.store
    for _ in range(4):
        st.append([fact(mine) for _ in range(1000)])
    size = st.size()
    st.append([fact(mine)])  # caches warm
    rows = {"n": 0, "calls": 0}

    def counting(name):
        original = getattr(Queries, name)

        def wrapped(self, *a, **kw):
            out = original(self, *a, **kw)
            rows["calls"] += 1
            rows["n"] += len(out) if isinstance(out, (list, dict)) else 1
            return out
        monkeypatch.setattr(Queries, name, wrapped)

    for name in ("records", "records_of_types", "records_of_chain", "nodes", "commands", "chain_head", "size",
                 "record_of"):
        counting(name)
    st.append([fact(mine) for _ in range(3)])
    assert rows["n"] <= 10 and rows["calls"] <= 6, rows
    rows.update(n=0, calls=0)
    st.inclusion_proof(1234, size)
    st.consistency_proof(777, size)
    st.root(size)
    assert rows["n"] <= 60, rows  # ~3 x log2(4000) nodes
    # a second store (cold caches, another writer's appends in between) reads O(registry + log n)
    other = LedgerStore(led.url)
    try:
        rows.update(n=0, calls=0)
        other.append([fact(mine)])
        assert rows["n"] <= 40, rows
    finally:
        other.close()


def test_reopening_restores_dropped_triggers(led, mine):
    from helpers import drop_triggers

    url = led.url
    led.store.append([fact(mine)])
    led.checkpoint()
    led.store.close()
    drop_triggers(url)
    led.store = LedgerStore(url)  # create=True re-runs the DDL
    for table in ("events", "log", "checkpoints"):
        _expect_db_refusal(url, f"DELETE FROM {{{table}}}")
    assert led.store.append([fact(mine)])[0].seq == 2
    assert verify_database(url, workers=1).ok


def test_registration_groups_do_not_copy_the_whole_registry(led, monkeypatch):
    from reledger.ledger.registry import Registry

    reg = led.regulator
    bulk = []
    for i in range(150):
        k = SigningKey.generate(f"9111{i:010d}")
        bulk += [reg.sign("PartyRegistered", {"party": k.party, "roles": ["MINE"]}, T0),
                 reg.sign("KeyAuthorized", key_authorized_body(k, T0), T0)]
    led.store.append(bulk)
    copied = {"records": 0}
    original = Registry.copy

    def counting(self):
        copied["records"] += len(self.keys)
        return original(self)

    monkeypatch.setattr(Registry, "copy", counting)
    groups = []
    for i in range(40):
        k = SigningKey.generate(f"9222{i:010d}")
        groups.append([reg.sign("PartyRegistered", {"party": k.party, "roles": ["MINE"]}, T0),
                       reg.sign("KeyAuthorized", key_authorized_body(k, T0), T0)])
    out = led.store.append_groups(groups)
    assert all(isinstance(o, list) for o in out)
    keys = len(led.store.registry().keys)
    # copying the registry once per call is fine; once per group is O(groups x keys)
    assert copied["records"] <= 2 * keys + 10 * len(groups), copied


def test_opening_a_store_does_not_stall_appends_during_verification(pg_url):
    import time

    from reledger.storage.reader import LogReader

    led = new_ledger(pg_url)
    m = led.register(MINE)
    reader = LogReader(pg_url)
    reader.begin_snapshot()  # what verify_database does for its whole run
    reader.queries.size(reader.cursor())
    done: dict = {}

    def open_store():
        st = LedgerStore(pg_url)
        done["open"] = True
        st.close()

    def append():
        led.store.append([fact(m)])
        done["append"] = True

    opener = threading.Thread(target=open_store)
    appender = threading.Thread(target=append)
    try:
        opener.start()
        time.sleep(0.5)
        appender.start()
        appender.join(1.5)
        opener.join(1.5)
        assert done == {"open": True, "append": True}, done
    finally:
        reader.end_snapshot()
        reader.close()
        opener.join(60)
        appender.join(60)
        led.close()


def test_checkpoint_with_a_foreign_origin(led):
    """The store signs only with the log's origin (the key's name); a note with another origin
    written into the table (by an operator's tool) is reported by verify."""
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    size = led.store.size()
    note = sign_checkpoint(Checkpoint("someone.else/log", size, led.store.root(size)), led.note_signer)
    led.store.recorder.write_checkpoint(size, led.store.root(size), note, 0)
    rep = verify_database(led.url, workers=1)
    assert not rep.ok and rep.first.code == "checkpoint" and "origin" in rep.first.message


def _open_concurrently(url: str, n: int = 4) -> list[str]:
    barrier = threading.Barrier(n)
    errors: list[str] = []

    def op():
        barrier.wait()
        try:
            LedgerStore(url).close()
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(e)[:200])

    threads = [threading.Thread(target=op) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_stores_opened_at_once_on_an_existing_ledger(pg_url):
    new_ledger(pg_url).close()
    errors = [e for _ in range(3) for e in _open_concurrently(pg_url)]
    assert not errors, errors


def test_stores_opened_at_once_on_a_new_schema(pg_url):
    from conftest import drop_schema

    errors = []
    for _ in range(3):
        schema = "t_" + uuid.uuid4().hex[:12]
        url = pg_url.rsplit("schema=", 1)[0] + "schema=" + schema
        try:
            errors += _open_concurrently(url)
        finally:
            drop_schema(schema)
    assert not errors, errors


# --- fuzz: signed entries with arbitrary fields only ever get a receipt or an AppendError ---------

_fuzz_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=12)
    | st.binary(max_size=40),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(data=st.data())
def test_fuzzed_signed_entries(led, mine, data):
    from reledger.ledger.entry import ENTRY_TAG
    from reledger.ledger.encoding import canonical

    st_ = led.store
    head_seq, head = st_.chain_head(MINE)
    m = {"body": data.draw(st.dictionaries(st.text(max_size=8), _fuzz_values, max_size=4)),
         "chain": data.draw(st.sampled_from([MINE, PLANT, REGULATOR_ID, "ZZ"])),
         "command_id": str(uuid.uuid4()),
         "key_id": data.draw(st.sampled_from([mine.key.key_id, led.regulator.key.key_id, "0" * 16])),
         "occurred_at": T0,
         "prev": data.draw(st.sampled_from([head, ZERO_HASH, b"\x01" * 32])),
         "seq": data.draw(st.sampled_from([head_seq + 1, head_seq, head_seq + 2, 1, 2**63, 2**64 - 1])),
         "type": data.draw(st.sampled_from(["MiningOutput", "KeyRevoked", "PartyRegistered", "X"])),
         "v": 1}
    for k in data.draw(st.lists(st.sampled_from(sorted(m)), max_size=2, unique=True)):
        m[k] = data.draw(_fuzz_values)  # any field may hold anything
    try:
        content = canonical(m)
    except Exception:  # noqa: BLE001 - not encodable at all: nothing to submit
        return
    signer = data.draw(st.sampled_from([mine.key, led.regulator.key]))
    env = canonical({"entry": content, "sig": signer.sign(ENTRY_TAG, content)})
    n = st_.size()
    try:
        rs = st_.append([env])
    except AppendError as e:
        assert e.code in ("malformed", "signature", "unregistered", "unknown_key", "foreign_key", "revoked_key",
                          "expired_key", "forbidden", "genesis", "body", "conflict", "command_conflict"), e.code
        assert st_.size() == n
        return
    assert st_.size() == n + 1 and rs[0].index == n
    s = SignedEntry.parse(env)
    if s.entry.chain == MINE:
        mine.advance(s)
    elif s.entry.chain == REGULATOR_ID:
        led.regulator.advance(s)


def test_same_envelope_submitted_through_two_stores_at_once(led, mine):
    """A client's retry reaching two server processes at the same moment: one entry is stored,
    both answers are receipts for it, one of them marked duplicate."""
    other = LedgerStore(led.url)
    try:
        for _ in range(3):
            s = fact(mine)
            barrier = threading.Barrier(2)
            answers: list = []

            def run(st):
                barrier.wait()
                try:
                    answers.append(st.append([s])[0])
                except Exception as e:  # noqa: BLE001 - reported by the assertion
                    answers.append(e)

            threads = [threading.Thread(target=run, args=(x,)) for x in (led.store, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert all(isinstance(a, Receipt) for a in answers), answers
            assert sorted(a.duplicate for a in answers) == [False, True]
            assert answers[0].index == answers[1].index and answers[0].entry_hash == s.hash
        assert led.store.chain_head(MINE)[0] == 3
    finally:
        other.close()


def test_retry_after_revocation_still_answers_the_receipt(led, mine):
    s = fact(mine)
    first = led.store.append([s])[0]
    led.revoke(MINE, mine.key.key_id)
    again = led.store.append([s])[0]
    assert again.duplicate and (again.index, again.entry_hash) == (first.index, first.entry_hash)
    assert_refused(led, [fact(mine, advance=False)], "revoked_key")


# --- the key registry against a model of FORMAT 4.3 ------------------------------------------

REG_OPS = st.lists(st.one_of(
    st.tuples(st.just("register"), st.integers(0, 3), st.sampled_from(["MINE", "REGULATOR"])),
    st.tuples(st.just("key"), st.integers(0, 3)),
    st.tuples(st.just("revoke"), st.integers(0, 3), st.integers(0, 5)),
    st.tuples(st.just("roles"), st.integers(0, 3), st.sampled_from(["MINE", "REGULATOR"])),
    st.tuples(st.just("append"), st.integers(0, 3), st.integers(0, 3), st.integers(0, 5),
              st.sampled_from(["MiningOutput", "PartyRegistered"])),
), min_size=1, max_size=25)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(ops=REG_OPS)
def test_registry_against_a_model(db_url, ops):
    from conftest import drop_schema

    url = _fresh_url(db_url)
    led = new_ledger(url)
    parties = [f"9111000000PRTY{i:04d}" for i in range(4)]
    roles: dict[str, set] = {}
    keys: dict[str, list[tuple[SigningKey, bool]]] = {p: [] for p in parties}  # (key, revoked)
    signers: dict[str, ChainSigner] = {}
    reg = led.regulator
    try:
        for op in ops:
            n = led.store.size()
            if op[0] == "register":
                p = parties[op[1]]
                s = reg.peek("PartyRegistered", {"party": p, "roles": [op[2]]}, T0)
                if p in roles:
                    assert_refused(led, [s], "body")
                else:
                    led.store.append([s])
                    reg.advance(s)
                    roles[p] = {op[2]}
            elif op[0] == "key":
                p = parties[op[1]]
                k = SigningKey.generate(p)
                s = reg.peek("KeyAuthorized", key_authorized_body(k, T0), T0)
                if p not in roles:
                    assert_refused(led, [s], "body")
                else:
                    led.store.append([s])
                    reg.advance(s)
                    keys[p].append((k, False))
            elif op[0] == "revoke":
                p = parties[op[1]]
                if not keys[p]:
                    continue
                i = op[2] % len(keys[p])
                k, revoked = keys[p][i]
                s = reg.peek("KeyRevoked", {"party": p, "key_id": k.key_id}, T0)
                if revoked:
                    assert_refused(led, [s], "body")
                else:
                    led.store.append([s])
                    reg.advance(s)
                    keys[p][i] = (k, True)
            elif op[0] == "roles":
                p = parties[op[1]]
                s = reg.peek("PartyDesignationChanged", {"party": p, "roles": [op[2]]}, T0)
                if p not in roles:
                    assert_refused(led, [s], "body")
                else:
                    led.store.append([s])
                    reg.advance(s)
                    roles[p] = {op[2]}
            elif op[0] == "append":
                chain, owner = parties[op[1]], parties[op[2]]
                if not keys[owner]:
                    continue
                k, revoked = keys[owner][op[3] % len(keys[owner])]
                signer = signers.setdefault(chain, ChainSigner(SigningKey(chain, k.private_key)))
                signer = ChainSigner(k, signer.seq, signer.head, chain=chain)
                type_ = op[4]
                body = {"party": "9111000000NEW00001", "roles": ["MINE"]} if type_ == "PartyRegistered" else {"q": "1"}
                s = signer.peek(type_, body, T0)
                if chain not in roles:
                    expected = "unregistered"
                elif owner != chain:
                    expected = "foreign_key"
                elif revoked:
                    expected = "revoked_key"
                elif type_ == "PartyRegistered" and "REGULATOR" not in roles[chain]:
                    expected = "forbidden"
                else:
                    expected = None
                if expected:
                    assert_refused(led, [s], expected)
                else:
                    try:
                        led.store.append([s])
                    except AppendError as e:  # a second registration of the same new party
                        assert type_ == "PartyRegistered" and e.code == "body", e.to_dict()
                        continue
                    signers[chain] = ChainSigner(k, s.entry.seq, s.hash, chain=chain)
                    if type_ == "PartyRegistered":
                        roles.setdefault("9111000000NEW00001", {"MINE"})
            assert led.store.size() >= n
        rep = verify_database(url, workers=1)
        assert rep.ok, rep.problems
    finally:
        led.close()
        if is_pg(url):
            drop_schema(url.rsplit("schema=", 1)[1])


@pytest.mark.parametrize("bad_at", [0, 130, 499])
def test_large_group_reports_the_position_of_its_bad_entry(led, mine, bad_at):
    group = [fact(mine, advance=False)]
    for _ in range(499):
        group.append(fact(ChainSigner(mine.key, group[-1].entry.seq, group[-1].hash), advance=True))
    good = list(group)
    group[bad_at] = b"\x00bad"
    err = assert_refused(led, group, "malformed")
    assert err.position == bad_at
    forged = list(good)
    forged[bad_at] = SignedEntry.from_parts(good[bad_at].content, bytes(64))
    err = assert_refused(led, forged, "signature")
    assert err.position == bad_at
    assert [r.seq for r in led.store.append(good)] == list(range(1, 501))


def test_failed_write_leaves_no_trace_in_the_caches(led, mine, monkeypatch):
    """The database refuses the transaction after the plan was made (a lost connection, a
    constraint): the registry, chain heads and Merkle frontier cached by the store must not
    keep anything of it."""
    st = led.store
    key = SigningKey.generate(PLANT)
    reg = led.regulator
    group = [reg.peek("PartyRegistered", {"party": PLANT, "roles": ["MINE"]}, T0)]
    group.append(ChainSigner(reg.key, reg.seq + 1, group[0].hash).sign(
        "KeyAuthorized", key_authorized_body(key, T0), T0))
    m1 = fact(mine, advance=False)
    n, root = st.size(), st.root()
    original = st.recorder.write

    def failing(plan):
        def doomed(cur):
            plan(cur)
            raise RuntimeError("connection lost")
        return original(doomed)

    monkeypatch.setattr(st.recorder, "write", failing)
    with pytest.raises(RuntimeError):
        st.append_groups([group, [m1]])
    monkeypatch.setattr(st.recorder, "write", original)
    assert st.size() == n and st.root() == root
    assert_refused(led, [entry_with(key)], "unregistered")  # the registration never happened
    r = st.append([m1])[0]  # the mine's seq 1 is still free
    assert (r.index, r.seq) == (n, 1)
    assert verify_database(led.url, workers=1).ok


# --- large batches: parsed and verified in worker processes -----------------------------

def _bad_sig(envelope: bytes) -> bytes:
    s = SignedEntry.parse(envelope)
    sig = bytes([s.signature[0] ^ 1]) + s.signature[1:]
    return encoding.canonical({"entry": s.content, "sig": sig})


@pytest.mark.parametrize("damage", ["malformed", "signature", "seq"])
def test_large_batch_refusal_is_the_same_with_processes_and_threads(db_url, damage):
    """A batch of PROCESS_THRESHOLD or more envelopes is checked in worker processes; its
    refusal (code, position, chain, seq) is the one the thread path gives, and nothing of it
    is written."""
    from reledger.storage.store import PROCESS_THRESHOLD

    led = new_ledger(db_url)
    try:
        led.register(MINE, ["MINE"])
        envs = [s.envelope for s in led.facts(MINE, PROCESS_THRESHOLD + 44)]
        pos = PROCESS_THRESHOLD + 7  # in the second worker's chunk
        if damage == "malformed":
            envs[pos] = envs[pos][:-1]
        elif damage == "signature":
            envs[pos] = _bad_sig(envs[pos])
        else:
            envs[pos], envs[pos + 1] = envs[pos + 1], envs[pos]
        size = led.store.size()
        answers = []
        for processes in (True, False):
            led.store.checks.use_processes = processes
            with pytest.raises(AppendError) as ei:
                led.store.append(envs)
            answers.append(ei.value.to_dict())
            assert led.store.size() == size
        assert led.store.checks.procs is not None  # the first attempt did use the worker processes
        assert answers[0] == answers[1]
        assert answers[0]["position"] == pos and answers[0]["code"] == {
            "malformed": "malformed", "signature": "signature", "seq": "conflict"}[damage]
    finally:
        led.close()


def test_large_batch_with_keys_authorized_in_it(db_url):
    """Keys authorized inside a large batch are unknown to the workers (they check against the
    registry known when the batch was handed to them): the writer checks those signatures
    under the lock, and refuses a bad one."""
    led = new_ledger(db_url)
    try:
        key = SigningKey.generate(MINE)
        signer = ChainSigner(key)
        head = [led.regulator.sign("PartyRegistered", {"party": MINE, "name": "m", "roles": ["MINE"],
                                                        "valid_from": T0}, T0),
                led.regulator.sign("KeyAuthorized", key_authorized_body(key, T0), T0)]
        body = [signer.sign("MiningOutput", {"qty": f"{i}"}, T0) for i in range(1, 301)]
        good = [s.envelope for s in head + body]
        bad = list(good)
        bad[200] = _bad_sig(bad[200])
        size = led.store.size()
        with pytest.raises(AppendError) as ei:
            led.store.append(bad)
        assert (ei.value.code, ei.value.position) == ("signature", 200)
        assert led.store.size() == size
        receipts = led.store.append(good)
        assert [r.index for r in receipts] == list(range(size, size + len(good)))
        assert led.store.checks.procs is not None
        assert verify_database(led.url).ok
    finally:
        led.close()


def test_pipelined_batches_through_worker_processes(db_url):
    led = new_ledger(db_url)
    try:
        led.register(MINE, ["MINE"])
        envs = [s.envelope for s in led.facts(MINE, 1500)]
        size = led.store.size()
        out = list(led.store.append_pipelined([envs[i:i + 300] for i in range(0, 1500, 300)]))
        assert [r.seq for batch in out for r in batch] == list(range(1, 1501))
        assert led.store.size() == size + 1500
        assert led.store.append(envs[:300])[0].duplicate  # idempotent: the same command ids
        assert verify_database(led.url).ok
    finally:
        led.close()


def test_worker_and_thread_paths_store_the_same_rows(db_url, tmp_path):
    """The worker processes' compact answers and the thread path's SignedEntry objects reach the
    plan as one checked-entry type: fed the same envelopes at the same record time, two ledgers
    (one checking in processes, one in threads) store the same rows and answer the same receipts."""
    import sqlite3

    from conftest import PG_URL, _with_schema, drop_schema

    from reledger.storage.store import PROCESS_THRESHOLD

    at = 1_750_000_000_000_000  # after T0, when the keys became valid
    led = new_ledger(db_url, clock=lambda: at)
    schema = None
    if db_url.startswith("sqlite"):
        other_url = f"sqlite:///{tmp_path / 'threads.db'}"
    else:
        schema = "t_" + uuid.uuid4().hex[:12]
        other_url = _with_schema(PG_URL, schema)
    other = LedgerStore(other_url, clock=lambda: at, processes=False)
    try:
        led.register(MINE, ["MINE"])
        setup = [r.envelope for r in led.store.records()]
        other.append(setup[:3])
        other.append(setup[3:])
        envs = [s.envelope for s in led.facts(MINE, PROCESS_THRESHOLD + 61)]
        # one registry entry among them: the writer parses it again to apply it
        envs.insert(100, led.regulator.sign("PartyRegistered", {"party": "9111000000SMELT001", "name": "s",
                                                                "roles": ["SMELTER"], "valid_from": T0}, T0).envelope)
        by_processes = led.store.append(envs)
        assert led.store.checks.procs is not None  # this batch did go through the worker processes
        by_threads = other.append(envs)
        assert other.checks.procs is None
        assert by_processes == by_threads
        assert list(led.store.records()) == list(other.records())
        if db_url.startswith("sqlite"):  # the binary columns are bound as bytearray: still BLOBs
            path = led.store.db.path
            with sqlite3.connect(path) as conn:
                t = led.store.tables
                kinds = conn.execute(f"SELECT DISTINCT typeof(entry_hash), typeof(nodes) FROM {t.log}").fetchall()
                states = conn.execute(f"SELECT DISTINCT typeof(state) FROM {t.events}").fetchall()
            assert kinds == [("blob", "blob")] and states == [("blob",)]
        assert verify_database(led.url).ok and verify_database(other_url).ok
    finally:
        led.close()
        other.close()
        if schema is not None:
            drop_schema(schema)


def test_checking_tasks_go_to_the_worker_with_the_fewest_unchecked_envelopes(db_url):
    """Answers that are ready are taken before a task is placed, and a worker's load counts
    envelopes: a worker whose answer merely waits unread is not busy, and a large task weighs
    more than a small one."""
    from reledger.processes.start import context
    from reledger.storage.pool import Checkers

    led = new_ledger(db_url)
    pool = Checkers(2, context())
    try:
        led.register(MINE, ["MINE"])
        envs = [s.envelope for s in led.facts(MINE, 40)]
        keys = led.store.checks.keys_of(led.store.current_registry())
        a, b = pool.workers
        first = pool.submit(envs[:10], keys)
        assert first.worker is a
        assert a.answers_in.poll(30)  # answered, not read yet
        second = pool.submit(envs[10:20], keys)
        assert second.worker is a  # a's answer was taken first: a is idle, and first in line
        assert first.result()[0][1] == 1 and second.result()[0][1] == 11
        big = pool.submit(envs * 50, keys)  # 2,000 envelopes on one worker
        small = pool.submit(envs[:5], keys)
        third = pool.submit(envs[5:10], keys)
        assert (big.worker, small.worker, third.worker) == (a, b, b)
        assert [len(t.result()) for t in (big, small, third)] == [2000, 5, 5]
        assert a.in_flight == b.in_flight == 0
    finally:
        pool.close()
        led.close()


def test_sqlite_appends_run_on_the_recorders_own_connection(sqlite_url):
    """On SQLite the append transaction runs on a connection of the recorder's own (a cache for
    all of its statements), under the pool's writer connection, and closes with the store."""
    import sqlite3

    led = new_ledger(sqlite_url)
    rec = led.store.recorder
    own = rec.writer_connection()
    assert own is not None
    led.register(MINE, ["MINE"])
    assert rec.writer_connection() is own
    size = led.store.size()
    other = LedgerStore(sqlite_url)  # another store (process) sees the commits and appends too
    try:
        other.append(led.facts(MINE, 3))
        led.add(MINE, 2)  # the caches follow the other writer's commits
        assert led.store.size() == other.size() == size + 5
        assert led.checkpoint()  # the pool's writer connection writes checkpoints meanwhile
    finally:
        other.close()
    led.close()
    with pytest.raises(sqlite3.ProgrammingError):
        own.execute("SELECT 1")
    assert verify_database(sqlite_url).ok


def test_key_revoked_inside_one_transaction(led, mine):
    """A key used, then revoked, then used again within one append: the last use is refused
    (the writer's per-transaction key cache is emptied by the registry entry)."""
    st = led.store
    key_id = mine.key.key_id
    before = fact(mine)
    revoke = led.regulator.sign("KeyRevoked", {"party": MINE, "key_id": key_id, "reason": "compromised"}, T0)
    after = fact(mine)
    size = st.size()
    with pytest.raises(AppendError) as ei:
        st.append([before, revoke, after])
    assert (ei.value.code, ei.value.position) == ("revoked_key", 2)
    assert st.size() == size
    # the same three as separate groups of one transaction: the first two go in, the third not
    results = st.append_groups([[before], [revoke], [after]])
    assert isinstance(results[0], list) and isinstance(results[1], list)
    assert isinstance(results[2], AppendError) and results[2].code == "revoked_key"


def test_a_dead_checking_process_falls_back_to_threads(db_url):
    """A checking process that dies (killed) does not fail appends: the batch is checked in
    threads, written whole, and later batches keep working."""
    import os
    import signal

    led = new_ledger(db_url)
    try:
        led.register(MINE, ["MINE"])
        envs = [s.envelope for s in led.facts(MINE, 900)]
        led.store.append(envs[:300])
        pool = led.store.checks.procs
        assert pool is not None
        for w in pool.workers:
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.join(5)
        receipts = led.store.append(envs[300:600])
        assert [r.seq for r in receipts] == list(range(301, 601))
        assert led.store.append(envs[600:])[-1].seq == 900
        assert verify_database(led.url).ok
    finally:
        led.close()


_KILLED_PARENT_SCRIPT = '''
import os, sys, tempfile
sys.path[:0] = [{tests!r}, {root!r}]
from helpers import new_ledger

def main():
    led = new_ledger("sqlite:///" + os.path.join(tempfile.mkdtemp(), "l.db"))
    led.register("91110000MINE0001", ["MINE"])
    led.store.append([s.envelope for s in led.facts("91110000MINE0001", 300)])
    print(" ".join(str(w.proc.pid) for w in led.store.checks.procs.workers), flush=True)
    os.kill(os.getpid(), 9)

if __name__ == "__main__":
    main()
'''


def test_checking_processes_exit_when_their_store_process_is_killed(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = str(Path(__file__).parent)
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_PARENT_SCRIPT.format(tests=tests, root=str(Path(tests).parent)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) >= 1, out.stderr

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_a_script_read_from_stdin_appends_large_batches_in_threads(tmp_path):
    """A child process cannot import a main module read from stdin: such a program checks its
    large batches in threads instead of failing."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    code = _KILLED_PARENT_SCRIPT.format(tests=tests, root=str(Path(tests).parent)).replace(
        'print(" ".join(str(w.proc.pid) for w in led.store.checks.procs.workers), flush=True)\n    os.kill(os.getpid(), 9)',
        'print(led.store.size(), led.store.checks.procs is None, flush=True)')
    out = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["305", "True"], out.stdout + out.stderr


def test_postgres_appends_never_read_the_log_sequentially(pg_url):
    """The append transaction's reads (log head, recorded command ids, chain heads, the gap
    check) are index look-ups. PostgreSQL plans them from its statistics, and psycopg prepares a
    statement after a few uses, so the plan chosen while the log was young (never analyzed: a
    few pages) was kept: a sequential scan for the command ids, one full read of the log per
    commit until autovacuum's next ANALYZE. The transaction turns sequential scans off.

    Counted in pg_stat_user_tables over one store's life: its connections report their
    counters when they end (a live backend may hold them back for up to 10 s)."""
    import time

    appends, per = 30, 10  # a server's group commits: several single-entry groups at a time
    schema, name = (part.strip('"') for part in tables(pg_url).log.split("."))
    led = new_ledger(pg_url)
    try:
        mine = led.register(MINE, ["MINE"])
        for _ in range(appends):
            led.store.append_groups([[fact(mine)] for _ in range(per)])
    finally:
        led.close()
    with raw_connection(pg_url) as conn:
        seen = []
        for _ in range(20):  # the ended backends' counters arrive within moments
            conn.execute("SELECT pg_stat_clear_snapshot()")
            seen.append(conn.execute("SELECT seq_scan, idx_scan FROM pg_stat_user_tables "
                                     "WHERE schemaname = %s AND relname = %s", (schema, name)).fetchone())
            if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:
                break
            time.sleep(0.25)
    seq_scan, idx_scan = seen[-1]
    assert idx_scan >= appends  # the counters did arrive
    # a few reads outside the transaction (the registry, once) may scan the young log; the
    # commits themselves never do (before: one scan per commit, 34 in all)
    assert seq_scan < 8, seen
    assert verify_database(pg_url, workers=1).ok


def test_the_plan_is_a_pure_function_of_the_caches_and_the_checked_entries(db_url):
    """storage/plan.py's plan, given the caches of an empty log and the entries a ledger holds
    (checked in a thread, or as a worker process answers them), answers the rows that ledger
    stored, the same twice over, and leaves its inputs as they were."""
    from reledger.ledger.entry import check_envelopes
    from reledger.ledger.registry import REGISTRY_TYPES, Registry
    from reledger.storage.plan import Caches, Checked, plan

    at = 1_750_000_000_000_000
    led = new_ledger(db_url, clock=lambda: at)
    try:
        mine = led.register(MINE, ["MINE"])
        led.store.append([fact(mine), fact(mine)])
        stored = list(led.store.records())
        envelopes = [r.envelope for r in stored]
        by_thread = [Checked.of(SignedEntry.parse(e), None) for e in envelopes]
        by_worker = [tuple.__new__(Checked, t[:7] + (None, t[8], e))
                     for t, e in zip(check_envelopes(envelopes, {}, REGISTRY_TYPES), envelopes)]
        caches = Caches(0, 0, merkle.Frontier(), {}, Registry())
        plans = [plan(caches, [group], {}, at) for group in (by_thread, by_worker, by_thread)]
        assert caches.size == 0 and caches.heads == {} and caches.frontier.size == 0
        assert caches.registry.keys == {} and caches.registry.roles == {} and caches.registry.size == 0
        for p in plans:
            assert not p.refused and isinstance(p.results[0], list)
            assert [(r.index, r.chain, r.seq, r.entry_hash) for r in p.results[0]] == \
                [(r.index, r.chain, r.seq, r.entry_hash) for r in stored]
            assert [(i, c, s, t, h, us, n) for i, c, s, t, _, h, us, n in p.rows] == \
                [(r.index, r.chain, r.seq, r.type, r.entry_hash, r.recorded_us, r.nodes) for r in stored]
            assert [e[3] for e in p.events] == envelopes
            assert p.caches.size == len(stored) and p.caches.registry.keys.keys() == led.store.registry().keys.keys()
        assert plans[0].rows == plans[1].rows == plans[2].rows
        # and a log that holds them refuses them again as conflicts, on the plan's own caches
        again = plan(plans[0].caches, [by_worker[-1:]], {}, at)
        assert again.refused and again.results[0].code == "conflict" and not again.rows
    finally:
        led.close()
