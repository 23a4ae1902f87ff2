"""Tampering with the database as an attacker (or the operator) with raw SQL access would:
drop the append-only triggers, then change, delete, swap, truncate or replace rows.
``reledger.storage.verify.verify_database`` must notice, and its first problem must name the entry."""

from __future__ import annotations

import pytest

from reledger.ledger import encoding, merkle
from reledger.ledger.checkpoint import NoteSigner
from reledger.ledger.entry import ENTRY_TAG, SignedEntry, leaf_bytes
from reledger.ledger.genesis import ChainSigner
from reledger.ledger.keys import SigningKey
from reledger.storage.store import AppendError, LedgerStore
from reledger.storage.verify import verify_database

from helpers import ORIGIN, REGULATOR_ID, T0, count, drop_triggers, new_ledger, populated_ledger, sql

M0, M1 = "9111000000MINE0000", "9111000000MINE0001"
SIZE = 17  # genesis 3 + two registrations of 2 + 2 x 5 entries
# log layout of populated_ledger(url, 2, 5): 0-2 genesis (MIIT 1-3), 3-4 M0 registered (MIIT 4-5),
# 5-6 M1 registered (MIIT 6-7), then M0:1, M1:1, M0:2, M1:2, ... at 7..16
KEY_OF_M0 = 4  # the KeyAuthorized entry of M0's key (MIIT seq 5)


def where(index: int) -> tuple[str, int]:
    """(chain, seq) of a log index in the layout above."""
    if index < 7:
        return REGULATOR_ID, index + 1
    k = index - 7
    return (M0 if k % 2 == 0 else M1), k // 2 + 1


@pytest.fixture
def ledger(db_url):
    """A ledger of SIZE entries with a checkpoint, the store closed, the triggers dropped."""
    led = populated_ledger(db_url, parties=2, per_party=5)
    note = led.checkpoint()
    assert led.store.size() == SIZE
    led.close()
    assert verify_database(db_url, workers=1).ok
    drop_triggers(db_url)
    led.note = note  # type: ignore[attr-defined]
    return led


def state_of(url: str, chain: str, seq: int) -> bytes:
    return bytes(sql(url, "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = ?",
                     (chain, seq))[0][0])


def set_state(url: str, chain: str, seq: int, state: bytes) -> None:
    sql(url, "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?", (state, chain, seq))


def assert_caught(url: str, index: int, chain: str | None = None, seq: int | None = None, *,
                  codes: tuple[str, ...] = (), **kw):
    rep = verify_database(url, workers=1, **kw)
    assert not rep.ok, "tampering went unnoticed"
    first = rep.first
    assert first.index == index, (first, rep.problems)
    if chain is not None:
        assert (first.chain, first.seq) == (chain, seq), (first, rep.problems)
    if codes:
        assert first.code in codes, (first, rep.problems)
    return rep


# --- a clean ledger -----------------------------------------------------------------------

def test_clean_ledger_verifies(db_url):
    led = populated_ledger(db_url, parties=2, per_party=5)
    note = led.checkpoint()
    root, genesis = led.store.root(), led.store.record(0).entry_hash.hex()
    led.close()
    rep = verify_database(db_url, workers=1)
    assert rep.ok, rep.problems
    assert (rep.entries, rep.size, rep.chains, rep.keys, rep.checkpoints) == (SIZE, SIZE, 3, 4, 1)
    assert rep.root == root and rep.genesis == genesis and rep.first is None
    assert rep.to_dict()["ok"] is True
    # with trust anchors given from outside
    vkey = led.note_signer.verifier().vkey()
    assert verify_database(db_url, workers=1, trusted_genesis=genesis, trusted_checkpoint_keys=[vkey],
                           checkpoint_notes=[note]).ok
    assert verify_database(db_url, workers=4, chunk=3).ok  # the parallel path
    # a wrong trust anchor is reported
    rep = verify_database(db_url, workers=1, trusted_genesis="00" * 32)
    assert not rep.ok and rep.first.index == 0 and rep.first.code == "genesis"
    other = NoteSigner("reledger.test/log", SigningKey.generate("X1").private_key).verifier().vkey()
    rep = verify_database(db_url, workers=1, trusted_checkpoint_keys=[other])
    assert not rep.ok and rep.first.code == "checkpoint"


def test_empty_and_genesis_only(db_url):
    led = new_ledger(db_url)
    led.close()
    rep = verify_database(db_url, workers=1)
    assert rep.ok and rep.entries == 3 and rep.keys == 2


# --- one changed byte -----------------------------------------------------------------

@pytest.mark.parametrize("index", [0, KEY_OF_M0, 7, 12, SIZE - 1])
def test_changed_byte_in_body(ledger, index):
    url = ledger.url
    chain, seq = where(index)
    env = state_of(url, chain, seq)
    s = SignedEntry.parse(env)
    # change one byte inside the signed content so that the entry still parses
    body = dict(s.entry.body)
    key = "qty" if "qty" in body else "reason" if "reason" in body else "name"
    text = body[key]
    body[key] = text[:-1] + chr(ord(text[-1]) ^ 1)
    m = {**encoding.decode(s.content), "body": body}
    content = encoding.canonical(m)
    assert len(content) == len(s.content) and sum(a != b for a, b in zip(content, s.content)) == 1
    changed = encoding.canonical({"entry": content, "sig": s.signature})
    set_state(url, chain, seq, changed)
    rep = assert_caught(url, index, chain, seq, codes=("hash", "signature", "key"))
    assert {p.code for p in rep.problems if p.index == index} >= {"hash", "signature"}


def test_single_byte_changes_of_a_state_caught(ledger):
    url = ledger.url
    index = 10
    chain, seq = where(index)
    original = state_of(url, chain, seq)
    # every 8th byte, plus the first and last few (each position costs one full verification;
    # test_any_changed_value_is_caught tries random positions)
    positions = sorted(set(range(0, len(original), 8)) | set(range(6)) | set(range(len(original) - 6, len(original))))
    for pos in positions:
        changed = bytearray(original)
        changed[pos] ^= 0x01
        set_state(url, chain, seq, bytes(changed))
        rep = verify_database(url, workers=1)
        assert not rep.ok, f"byte {pos} changed went unnoticed"
        assert rep.first.index == index, (pos, rep.first)
    set_state(url, chain, seq, original)
    assert verify_database(url, workers=1).ok


def test_malformed_state_problem_names_chain_and_seq(ledger):
    url = ledger.url
    chain, seq = where(9)
    set_state(url, chain, seq, b"\x00not msgpack")
    assert_caught(url, 9, chain, seq, codes=("malformed",))


def test_malformed_state_caught(ledger):
    url = ledger.url
    chain, seq = where(9)
    set_state(url, chain, seq, b"\x00not msgpack")
    assert_caught(url, 9, codes=("malformed",))


# --- deletions --------------------------------------------------------------------------

@pytest.mark.parametrize("index", [3, 8, 12])
def test_delete_event_row(ledger, index):
    url = ledger.url
    chain, seq = where(index)
    sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
    assert_caught(url, index, codes=("missing",))


@pytest.mark.parametrize("index", [1, 8, 12])
def test_delete_entry_from_both_tables(ledger, index):
    url = ledger.url
    chain, seq = where(index)
    sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
    sql(url, "DELETE FROM {log} WHERE idx = ?", (index,))
    rep = assert_caught(url, index, codes=("gap",))
    assert rep.first.index == index


def test_delete_log_row_only(ledger):
    url = ledger.url
    chain, seq = where(11)
    sql(url, "DELETE FROM {log} WHERE idx = ?", (11,))
    rep = assert_caught(url, 11, codes=("gap",))
    assert any(p.code == "unlogged" and (p.chain, p.seq) == (chain, seq) for p in rep.problems)


def test_delete_and_renumber(ledger):
    """Delete an entry and shift the later log rows down so that the index stays gap-free."""
    url = ledger.url
    chain, seq = where(12)
    sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
    sql(url, "DELETE FROM {log} WHERE idx = ?", (12,))
    for i in range(13, SIZE):
        sql(url, "UPDATE {log} SET idx = ? WHERE idx = ?", (i - 1, i))
    rep = verify_database(url, workers=1)
    assert not rep.ok and rep.first.index == 12, rep.problems


def test_unlogged_event_caught(ledger):
    """An event inserted without its log row (e.g. a write that bypassed the store)."""
    url = ledger.url
    sql(url, "INSERT INTO {events} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
        (M0, 99, "MiningOutput", b"\x80"))
    rep = verify_database(url, workers=1)
    assert not rep.ok and any(p.code == "unlogged" and (p.chain, p.seq) == (M0, 99) for p in rep.problems)


# --- swaps ------------------------------------------------------------------------------

@pytest.mark.parametrize("i,j", [(7, 8), (8, 10), (9, 15), (3, 5)])
def test_swap_two_states(ledger, i, j):
    url = ledger.url
    (ci, si), (cj, sj) = where(i), where(j)
    a, b = state_of(url, ci, si), state_of(url, cj, sj)
    set_state(url, ci, si, b)
    set_state(url, cj, sj, a)
    rep = assert_caught(url, min(i, j), codes=("mismatch",))
    # the index holds the other entry now: the problem names both what the log row says and
    # what the stored entry is
    first = rep.first
    (c1, s1), (c2, s2) = (where(i), where(j)) if i < j else (where(j), where(i))
    assert f"{c1}:{s1}" in first.message and f"{c2}:{s2}" in first.message
    assert (first.chain, first.seq) == (c2, s2)


def test_swap_two_log_rows(ledger):
    """Swap the order of two entries of different chains in the log (indices exchanged)."""
    url = ledger.url
    sql(url, "UPDATE {log} SET idx = -1 WHERE idx = 9")
    sql(url, "UPDATE {log} SET idx = 9 WHERE idx = 10")
    sql(url, "UPDATE {log} SET idx = 10 WHERE idx = -1")
    rep = verify_database(url, workers=1)
    assert not rep.ok and rep.first.index == 9, rep.problems


# --- truncation -----------------------------------------------------------------------

@pytest.mark.parametrize("drop", [1, 2, 5])
def test_truncate_log(ledger, drop):
    url = ledger.url
    for index in range(SIZE - drop, SIZE):
        chain, seq = where(index)
        sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
        sql(url, "DELETE FROM {log} WHERE idx = ?", (index,))
    assert count(url, "log") == SIZE - drop
    assert_caught(url, SIZE - drop, codes=("truncated",))


def test_truncate_log_and_checkpoints_caught_by_outside_note(ledger):
    url = ledger.url
    for index in range(SIZE - 3, SIZE):
        chain, seq = where(index)
        sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
        sql(url, "DELETE FROM {log} WHERE idx = ?", (index,))
    sql(url, "DELETE FROM {checkpoints}")
    assert verify_database(url, workers=1).ok  # consistent in itself: nothing inside tells
    assert_caught(url, SIZE - 3, codes=("truncated",), checkpoint_notes=[ledger.note])


# --- keys ---------------------------------------------------------------------------------

def _rewrite_key_authorized(url: str, attacker: SigningKey, resign: SigningKey | None) -> SignedEntry:
    chain, seq = where(KEY_OF_M0)
    s = SignedEntry.parse(state_of(url, chain, seq))
    assert s.entry.type == "KeyAuthorized" and s.entry.body["party"] == M0
    m = encoding.decode(s.content)
    m["body"] = {**m["body"], "public_key": attacker.public_key, "key_id": attacker.key_id}
    content = encoding.canonical(m)
    sig = resign.sign(ENTRY_TAG, content) if resign else s.signature
    forged = SignedEntry.parse(encoding.canonical({"entry": content, "sig": sig}))
    set_state(url, chain, seq, forged.envelope)
    return forged


@pytest.mark.parametrize("resign", ["kept", "attacker", "attacker_as_regulator_chain"])
def test_replace_a_key(ledger, resign):
    url = ledger.url
    attacker = SigningKey.generate(M0)
    signer = None
    if resign == "attacker":
        signer = attacker
    elif resign == "attacker_as_regulator_chain":
        signer = SigningKey.generate(REGULATOR_ID)
    _rewrite_key_authorized(url, attacker, signer)
    # and the attacker rewrites all of M0's entries with the new key, keeping chain links
    # and the log rows in step, so that only the key entry itself is wrong
    cs = ChainSigner(attacker)
    for index in range(7, SIZE, 2):
        chain, seq = where(index)
        old = SignedEntry.parse(state_of(url, chain, seq))
        new = cs.sign(old.entry.type, old.entry.body, old.entry.occurred_at, old.entry.command_id)
        set_state(url, chain, seq, new.envelope)
        sql(url, "UPDATE {log} SET entry_hash = ? WHERE idx = ?", (new.hash, index))
    chain, seq = where(KEY_OF_M0)
    assert_caught(url, KEY_OF_M0, chain, seq, codes=("hash", "signature"))


def test_replace_a_key_with_log_rebuilt(ledger):
    """The attacker also recomputes the log's hashes and Merkle nodes: the signature still
    fails, and the operator's checkpoint no longer matches."""
    url = ledger.url
    attacker = SigningKey.generate(M0)
    forged = _rewrite_key_authorized(url, attacker, attacker)
    _rebuild_log(url)
    rep = assert_caught(url, KEY_OF_M0, *where(KEY_OF_M0), codes=("signature",))
    assert any(p.code == "checkpoint" for p in rep.problems)
    assert forged.entry.body["public_key"] == attacker.public_key


def _rebuild_log(url: str) -> None:
    """Recompute entry hashes and Merkle nodes of every log row from the stored states (what
    an attacker with DB access, but without the operator's key, can do)."""
    rows = sql(url, "SELECT idx, chain, seq, recorded_us FROM {log} ORDER BY idx")
    f = merkle.Frontier()
    for idx, chain, seq, rec_us in rows:
        env = state_of(url, chain, seq)
        h = SignedEntry.parse(env).hash
        leaf = merkle.leaf_hash(leaf_bytes(h, idx, encoding.micros_to_time_text(rec_us)))
        nodes = b"".join(n for _, _, n in f.append(leaf))
        sql(url, "UPDATE {log} SET entry_hash = ?, nodes = ? WHERE idx = ?", (h, nodes, idx))


def test_entry_signed_by_unauthorized_key_with_log_rebuilt(ledger):
    url = ledger.url
    index = 11
    chain, seq = where(index)
    old = SignedEntry.parse(state_of(url, chain, seq))
    attacker = SigningKey.generate(chain)
    e = old.entry
    new = SignedEntry.parse(encoding.canonical({
        "entry": e.content_bytes(), "sig": attacker.sign(ENTRY_TAG, e.content_bytes())}))
    set_state(url, chain, seq, new.envelope)
    _rebuild_log(url)
    assert_caught(url, index, chain, seq, codes=("signature",))


# --- the log's own columns and the checkpoints ---------------------------------------------

def test_changed_recorded_time(ledger):
    url = ledger.url
    sql(url, "UPDATE {log} SET recorded_us = recorded_us - 1000000 WHERE idx = 8")
    assert_caught(url, 8, *where(8), codes=("time", "merkle"))


def test_changed_merkle_nodes(ledger):
    url = ledger.url
    nodes = bytes(sql(url, "SELECT nodes FROM {log} WHERE idx = 15")[0][0])
    sql(url, "UPDATE {log} SET nodes = ? WHERE idx = 15", (nodes[:40] + bytes([nodes[40] ^ 1]) + nodes[41:],))
    assert_caught(url, 15, *where(15), codes=("merkle",))


def test_changed_log_metadata(ledger):
    url = ledger.url
    sql(url, "UPDATE {log} SET type = 'Forged' WHERE idx = 13")
    assert_caught(url, 13, *where(13), codes=("mismatch",))


def test_changed_checkpoint_root(ledger):
    url = ledger.url
    size, root = sql(url, "SELECT size, root FROM {checkpoints}")[0]
    sql(url, "UPDATE {checkpoints} SET root = ? WHERE size = ?", (bytes(32), size))
    rep = verify_database(url, workers=1)
    assert not rep.ok and rep.first.code == "checkpoint" and rep.first.index == size - 1


def test_forged_checkpoint_note(ledger):
    url = ledger.url
    size = sql(url, "SELECT size FROM {checkpoints}")[0][0]
    note = bytes(sql(url, "SELECT note FROM {checkpoints}")[0][0])
    forged = note.replace(b"\n" + str(size).encode() + b"\n", b"\n" + str(size - 1).encode() + b"\n", 1)
    sql(url, "UPDATE {checkpoints} SET note = ? WHERE size = ?", (forged, size))
    rep = verify_database(url, workers=1)
    assert not rep.ok and rep.first.code == "checkpoint"


@pytest.mark.parametrize("column,value", [("chain", "'9111000000MINE0009'"), ("seq", "seq + 10")])
def test_altered_chain_or_seq_of_a_log_row_is_a_mismatch_not_a_loss(ledger, column, value):
    """The row no longer names its event, but the event is still there (found by its hash):
    the verdict names the altered row, not an entry gone from the events table."""
    url = ledger.url
    sql(url, f"UPDATE {{log}} SET {column} = {value} WHERE idx = 12")
    rep = assert_caught(url, 12, *where(12), codes=("mismatch",))
    assert "the log row says" in rep.first.message
    assert not [p for p in rep.problems if p.code in ("missing", "unlogged")], rep.problems


def test_altered_checkpoint_size_column_is_not_a_truncation(ledger):
    """Checkpoints are judged by their signed notes: a row whose size column was changed is an
    altered row (its note still verifies at its own size), not a log shorter than signed."""
    url = ledger.url
    sql(url, "UPDATE {checkpoints} SET size = size + 5")
    rep = verify_database(url, workers=1)
    assert [(p.code, p.index) for p in rep.problems] == [("checkpoint", SIZE - 1)], rep.problems
    assert "the stored row says size 22" in rep.first.message


@pytest.mark.parametrize("size,note", [(3, b"junk"), (99, b"\xff\xfenot even text"), (SIZE, b"")])
def test_junk_checkpoint_row_is_named_and_prove_and_export_go_on(ledger, size, note, tmp_path):
    url = ledger.url
    if size == SIZE:  # a row of the size of the real checkpoint cannot be added: replace the real one's note
        sql(url, "UPDATE {checkpoints} SET note = ?", (note,))
    else:
        sql(url, "INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, 0)", (size, bytes(32), note))
    rep = verify_database(url, workers=1)
    assert [(p.code, p.index) for p in rep.problems] == [("checkpoint", None)], rep.problems
    assert "holds no checkpoint note" in rep.problems[0].message
    from reledger.commands.cli import main

    out = tmp_path / "m0.bundle"
    assert main(["prove", "--entry", f"{M0}:1", "--db", url, "--json"]) == 0
    if size == SIZE:  # no valid checkpoint is left: export says so (a usage error), no traceback
        assert main(["export", "--party", M0, "--out", str(out), "--db", url]) == 2
    else:
        assert main(["export", "--party", M0, "--out", str(out), "--db", url]) == 0
        from reledger.ledger.bundle import verify_bundle

        assert verify_bundle(out.read_bytes()).ok


# --- the operator rewrites history ------------------------------------------------------

def test_operator_rewrite_caught_by_earlier_note(ledger):
    """The operator drops the last three entries (and the checkpoints), lets the colluding mine
    write other entries in their place, and signs a fresh checkpoint with its own key. The
    database is consistent in itself, but a checkpoint note kept outside exposes it."""
    url = ledger.url
    old_note = ledger.note
    for index in range(SIZE - 3, SIZE):
        chain, seq = where(index)
        sql(url, "DELETE FROM {events} WHERE originator_id = ? AND originator_version = ?", (chain, seq))
        sql(url, "DELETE FROM {log} WHERE idx = ?", (index,))
    sql(url, "DELETE FROM {checkpoints}")
    with LedgerStore(url) as st:
        for chain in (M0, M1):
            signer = ledger.parties[chain]
            seq, head = st.chain_head(chain)
            signer.seq, signer.head = seq, head
        st.append([ledger.parties[M1].sign("MiningOutput", {"qty": "0.001"}, "2024-01-02T00:00:00Z"),
                   ledger.parties[M0].sign("MiningOutput", {"qty": "0.002"}, "2024-01-02T00:00:00Z"),
                   ledger.parties[M1].sign("MiningOutput", {"qty": "0.003"}, "2024-01-02T00:00:00Z")])
        assert st.size() == SIZE
        st.checkpoint(ledger.note_signer)
    assert verify_database(url, workers=1).ok  # nothing inside the database tells
    rep = assert_caught(url, SIZE - 1, codes=("checkpoint",), checkpoint_notes=[old_note])
    assert "root" in rep.first.message


def test_operator_cannot_forge_earlier_note(ledger):
    """A note signed by a key that is not the registered checkpoint key is refused."""
    url = ledger.url
    rogue = NoteSigner("reledger.test/log", SigningKey.generate(REGULATOR_ID).private_key)
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    note = sign_checkpoint(Checkpoint("reledger.test/log", 5, bytes(32)), rogue)
    rep = verify_database(url, workers=1, checkpoint_notes=[note])
    assert not rep.ok and rep.first.code == "checkpoint"


def test_phantom_log_row_with_negative_index(ledger):
    url = ledger.url
    sql(url, "INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, nodes) "
        "VALUES (-1, ?, 99, 'MiningOutput', 'phantom', ?, 0, ?)", (M0, bytes(32), bytes(32)))
    with LedgerStore(url, create=False) as st:
        assert st.chain_head(M0)[0] == 99  # the store believes the phantom
    rep = verify_database(url, workers=1)
    assert not rep.ok


# --- verifying a live ledger: appends and checkpoints while the verifier reads ------------

def _during(monkeypatch, method: str, action) -> None:
    """Run ``action`` once, just before verify_database's read of ``Queries.<method>``: a
    deterministic stand-in for a writer committing while the verifier runs."""
    from reledger.storage.reader import Queries

    original = getattr(Queries, method)
    done = []

    def wrapped(self, *a, **kw):
        if not done:
            done.append(1)
            action()
        return original(self, *a, **kw)

    monkeypatch.setattr(Queries, method, wrapped)


def test_verify_while_appending(db_url, monkeypatch):
    led = populated_ledger(db_url, parties=1, per_party=2)
    try:
        p = next(iter(led.parties))
        _during(monkeypatch, "events_count", lambda: led.add(p, 3))
        rep = verify_database(db_url, workers=1)
        assert rep.ok, rep.problems
    finally:
        led.close()


def test_verify_while_checkpointing(db_url, monkeypatch):
    led = populated_ledger(db_url, parties=1, per_party=2)
    try:
        p = next(iter(led.parties))

        def grow_and_checkpoint():
            led.add(p, 2)
            led.checkpoint()

        _during(monkeypatch, "checkpoints", grow_and_checkpoint)
        rep = verify_database(db_url, workers=1)
        assert rep.ok, rep.problems
    finally:
        led.close()


# --- any change to any stored value is caught (property) ----------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_COLUMNS = [("events", "state"), ("log", "entry_hash"), ("log", "nodes"), ("log", "recorded_us"),
            ("log", "chain"), ("log", "seq"), ("log", "type"), ("checkpoints", "root"), ("checkpoints", "note")]


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(column=st.sampled_from(_COLUMNS), row=st.integers(0, SIZE - 1), pos=st.integers(0, 10**6),
       delta=st.integers(1, 255))
def test_any_changed_value_is_caught(ledger, column, row, pos, delta):
    url = ledger.url
    table, col = column
    if table == "events":
        chain, seq = where(row)
        key_sql, key = "originator_id = ? AND originator_version = ?", (chain, seq)
    elif table == "log":
        key_sql, key = "idx = ?", (row,)
    else:
        key_sql, key = "size = ?", (SIZE,)
    original = sql(url, f"SELECT {col} FROM {{{table}}} WHERE {key_sql}", key)[0][0]
    if isinstance(original, int):
        changed = original + delta if col != "seq" else original + 1000 + delta
    elif isinstance(original, str):
        i = pos % len(original)
        changed = original[:i] + chr(ord(original[i]) ^ (delta % 31 + 1)) + original[i + 1:]
    else:
        data = bytearray(bytes(original))
        data[pos % len(data)] = (data[pos % len(data)] + delta) % 256
        changed = bytes(data)
    sql(url, f"UPDATE {{{table}}} SET {col} = ? WHERE {key_sql}", (changed, *key))
    try:
        rep = verify_database(url, workers=1)
        assert not rep.ok, f"{table}.{col} of row {row} changed, unnoticed"
        if table != "checkpoints":
            assert rep.first.index == row, rep.problems
    finally:
        sql(url, f"UPDATE {{{table}}} SET {col} = ? WHERE {key_sql}", (original, *key))
    assert verify_database(url, workers=1).ok


# --- checkpoint notes signed by the wrong key or under the wrong name -----------------------

def _note(led, signer: NoteSigner, size: int | None = None) -> bytes:
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    with LedgerStore(led.url, create=False) as st:
        size = st.size() if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, size, st.root(size)), signer)


def test_note_under_another_name_does_not_count(ledger):
    """The checkpoint key, but under a name other than its registered one (FORMAT 4.4)."""
    note = _note(ledger, NoteSigner("evil.example/log", ledger.checkpoint_key.private_key))
    rep = verify_database(ledger.url, workers=1, checkpoint_notes=[note])
    assert not rep.ok and rep.first.code == "checkpoint"


def test_note_signed_by_an_entry_key_does_not_count(ledger):
    """Entry keys never sign checkpoints, not even the root regulator's (FORMAT 4.4)."""
    note = _note(ledger, NoteSigner(ORIGIN, ledger.regulator.key.private_key))
    rep = verify_database(ledger.url, workers=1, checkpoint_notes=[note])
    assert not rep.ok and rep.first.code == "checkpoint"
    with LedgerStore(ledger.url, create=False) as st:
        st.append([ledger.parties[M0].sign("MiningOutput", {"qty": "1"}, "2024-01-02T00:00:00Z")])
        with pytest.raises(ValueError):
            st.checkpoint(NoteSigner(ORIGIN, ledger.regulator.key.private_key))
        assert st.latest_checkpoint()[0] == SIZE


def test_correct_outside_note_of_an_earlier_size(ledger):
    note = _note(ledger, ledger.note_signer, size=9)
    rep = verify_database(ledger.url, workers=1, checkpoint_notes=[note])
    assert rep.ok and rep.checkpoints == 2, rep.problems


def test_note_of_a_revoked_checkpoint_key(db_url):
    """A checkpoint key revoked at index r signs no checkpoint of size > r (FORMAT 4.4)."""
    led = populated_ledger(db_url, parties=1, per_party=2)
    try:
        before = led.checkpoint()
        led.revoke(REGULATOR_ID, led.checkpoint_key.key_id)
        p = next(iter(led.parties))
        led.add(p, 2)
        late = _note(led, led.note_signer)
    finally:
        led.close()
    assert verify_database(db_url, workers=1, checkpoint_notes=[before]).ok
    rep = verify_database(db_url, workers=1, checkpoint_notes=[late])
    assert not rep.ok and rep.first.code == "checkpoint"


def test_changed_log_command_id(ledger):
    url = ledger.url
    chain, seq = where(12)
    sql(url, "UPDATE {log} SET command_id = ? WHERE idx = 12", ("00000000-0000-4000-8000-000000000000",))
    # the store now refuses the honest retry of that command instead of answering its receipt
    env = state_of(url, chain, seq)
    with LedgerStore(url, create=False) as st:
        with pytest.raises(AppendError):
            st.append([env])
    assert_caught(url, 12, chain, seq, codes=("mismatch",))


def test_parallel_verification_reports_the_same(ledger):
    url = ledger.url
    chain, seq = where(9)
    set_state(url, chain, seq, b"\x00")
    sql(url, "UPDATE {log} SET recorded_us = recorded_us + 5 WHERE idx = 14")
    one = verify_database(url, workers=1)
    many = verify_database(url, workers=3, chunk=4)
    assert not one.ok and one.problems == many.problems
    assert (one.entries, one.size, one.root, one.checkpoints) == (many.entries, many.size, many.root, many.checkpoints)


def test_command_id_reused_by_a_colluding_party(ledger):
    """The party itself (holding its key) and someone with DB access rewrite a later entry to
    carry the command id of an earlier one, re-sign it and rebuild the chain and log hashes:
    the verifier still sees one command recorded twice on one chain (FORMAT 2.6)."""
    url = ledger.url
    first = SignedEntry.parse(state_of(url, *where(7)))  # M0:1
    cs = ChainSigner(ledger.parties[M0].key, 1, first.hash)
    for index in range(9, SIZE, 2):  # M0:2 .. M0:5, re-signed in order
        chain, seq = where(index)
        old = SignedEntry.parse(state_of(url, chain, seq))
        cid = first.entry.command_id if index == 9 else old.entry.command_id
        new = cs.sign(old.entry.type, old.entry.body, old.entry.occurred_at, cid)
        set_state(url, chain, seq, new.envelope)
    _rebuild_log(url)
    rep = assert_caught(url, 9, M0, 2)
    assert "command" in {p.code for p in rep.problems if p.index == 9}


def test_verify_a_busy_ledger(db_url):
    """verify_database while a writer appends and checkpoints: never a false problem."""
    import threading
    import time

    led = populated_ledger(db_url, parties=1, per_party=1)
    p = next(iter(led.parties))
    stop = threading.Event()
    errors: list = []

    def writer():
        try:
            for _ in range(300):  # bounded: a slow machine verifies a smaller log
                if stop.is_set():
                    break
                led.add(p, 7)
                if led.parties[p].seq % 5 == 0:
                    led.checkpoint()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    reports = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            reports.append(verify_database(db_url, workers=1))
        reports.append(verify_database(db_url, workers=2, chunk=16))
    finally:
        stop.set()
        t.join(30)
        led.close()
    assert not errors, errors
    assert len(reports) >= 2
    bad = [r.problems[:3] for r in reports if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("value", [2**62, -(2**62), 253402300800000000])
def test_absurd_recorded_time_is_reported_not_a_crash(ledger, value):
    url = ledger.url
    sql(url, "UPDATE {log} SET recorded_us = ? WHERE idx = 8", (value,))
    assert_caught(url, 8, *where(8))


@pytest.mark.parametrize("statement,index", [
    ("UPDATE stored_events SET state = 'abc' WHERE originator_id = '9111000000MINE0000' AND originator_version = 2", 6),
    ("UPDATE reledger_log SET nodes = 'zz' WHERE idx = 5", 5),
    ("UPDATE reledger_log SET recorded_us = 'x' WHERE idx = 5", 5),
    ("UPDATE reledger_log SET seq = 'x' WHERE idx = 5", 5),
    ("UPDATE reledger_checkpoints SET note = 'x'", 6),
])
def test_sqlite_values_of_the_wrong_type_are_reported(sqlite_url, statement, index):
    led = populated_ledger(sqlite_url, parties=1, per_party=2)
    led.checkpoint()
    led.close()
    drop_triggers(sqlite_url)
    sql(sqlite_url, statement)
    rep = verify_database(sqlite_url, workers=1)
    assert not rep.ok and rep.first.index == index, rep.problems


def test_sqlite_log_index_cannot_hold_text(sqlite_url):
    """On SQLite the log index is the table's rowid (INTEGER PRIMARY KEY): even with the
    triggers dropped, the database itself refuses an index that is not an integer."""
    import sqlite3

    led = populated_ledger(sqlite_url, parties=1, per_party=2)
    led.close()
    drop_triggers(sqlite_url)
    with pytest.raises(sqlite3.IntegrityError, match="datatype mismatch"):
        sql(sqlite_url, "UPDATE reledger_log SET idx = 'x' WHERE idx = 6")
    assert verify_database(sqlite_url, workers=1).ok


@pytest.mark.parametrize("name", ["bad name", "a+b"])
def test_checkpoint_key_with_an_invalid_note_name(db_url, name):
    from reledger.ledger.genesis import key_authorized_body
    from reledger.storage.store import AppendError

    led = new_ledger(db_url)
    try:
        k = SigningKey.generate(REGULATOR_ID, "checkpoint")
        try:
            led.store.append([led.regulator.sign("KeyAuthorized", key_authorized_body(k, T0, name=name), T0)])
        except AppendError as e:
            assert e.code == "body"  # refusing the name is one fix
            return
        led.checkpoint()
    finally:
        led.close()
    rep = verify_database(db_url, workers=1)  # the other fix: the verifier copes
    assert rep.ok, rep.problems


def test_chain_break_at_a_fast_verification_range_boundary(db_url):
    """A colluding party and DB access re-sign the entry that opens the second range of the
    fast verification path with a wrong prev, then re-sign every later entry and rebuild all
    hashes and Merkle nodes (no checkpoint covers it): only the join of the ranges can see it."""
    import reledger.storage.verify as verify_module
    from helpers import raw_connection, tables

    unit = 1 << verify_module.FAST_BITS
    led = new_ledger(db_url)
    m = led.register(M0)
    n0 = led.store.size()
    total = unit + 100 - n0
    for k in range(0, total, 1000):
        led.add(M0, min(1000, total - k))
    led.close()
    assert verify_database(db_url, workers=2).ok
    drop_triggers(db_url)
    t = tables(db_url)
    with raw_connection(db_url) as conn:
        cur = conn.cursor()
        cur.execute(t.q("SELECT l.idx, l.seq, l.recorded_us, l.nodes, e.state FROM {log} l JOIN {events} e "
                        "ON e.originator_id = l.chain AND e.originator_version = l.seq ORDER BY l.idx"))
        rows = cur.fetchall()
        f = merkle.Frontier()
        for idx, _, _, nodes, _ in rows[:unit]:
            f.append(bytes(nodes)[:32])
        old = SignedEntry.parse(bytes(rows[unit][4]))
        cs = ChainSigner(m.key, old.entry.seq - 1, b"\x07" * 32)  # the wrong prev
        updates = []
        for idx, seq, rec_us, _, state in rows[unit:]:
            e = SignedEntry.parse(bytes(state)).entry
            new = cs.sign(e.type, e.body, e.occurred_at, e.command_id)
            leaf = merkle.leaf_hash(leaf_bytes(new.hash, idx, encoding.micros_to_time_text(rec_us)))
            nodes = b"".join(h for _, _, h in f.append(leaf))
            updates.append((new.envelope, new.hash, nodes, idx, M0, seq))
        for env, h, nodes, idx, chain, seq in updates:
            cur.execute(t.q("UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?"),
                        (env, chain, seq))
            cur.execute(t.q("UPDATE {log} SET entry_hash = ?, nodes = ? WHERE idx = ?"), (h, nodes, idx))
    rep = verify_database(db_url, workers=2)
    assert not rep.ok and rep.first.index == unit and rep.first.code in ("chain", "signature"), rep.problems[:3]
    assert (rep.first.chain, rep.first.seq) == (M0, unit - n0 + 1)
