"""Signed entries (ledger.entry, ledger.keys, ledger.genesis): sign/parse round trip, strict
parsing of envelopes and content, and that no single-byte change survives."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import example, given, strategies as st

from reledger.ledger import encoding
from reledger.ledger.encoding import canonical
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import (ENTRY_TAG, MAX_ENVELOPE, ZERO_HASH, Entry, EntryError, SignedEntry, leaf_bytes,
                          make_entry, new_command_id, validate_content)
from reledger.ledger.genesis import ChainSigner, genesis_entries
from reledger.ledger.keys import KeyError_, SigningKey, key_id, verify_signature

from helpers import T0, seeded_key

KEY = seeded_key("91110000MINE0001", 7)
OTHER = seeded_key("91110000MINE0001", 8)

chains = st.from_regex(r"[A-Z0-9][A-Z0-9._-]{1,20}", fullmatch=True)
types = st.from_regex(r"[A-Z][A-Za-z0-9]{0,20}", fullmatch=True)
body_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=encoding.MIN_INT, max_value=encoding.MAX_INT)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=10), body_values, max_size=6)
times = st.datetimes(timezones=st.just(encoding.timezone.utc),
                     min_value=encoding.datetime(2000, 1, 1), max_value=encoding.datetime(2100, 1, 1)
                     ).map(encoding.time_text)


def content_map(**over) -> dict:
    m = {"body": {"qty": "1"}, "chain": KEY.party, "command_id": new_command_id(), "key_id": KEY.key_id,
         "occurred_at": T0, "prev": ZERO_HASH, "seq": 1, "type": "MiningOutput", "v": 1}
    m.update(over)
    return m


def envelope_of(m: dict, key: SigningKey = KEY, sig: bytes | None = None) -> bytes:
    content = canonical(m)
    return canonical({"entry": content, "sig": sig if sig is not None else key.sign(ENTRY_TAG, content)})


# --- round trip ------------------------------------------------------------------------

@given(chains, st.integers(min_value=1, max_value=2**63), st.binary(min_size=32, max_size=32), types, times,
       bodies, st.uuids())
def test_sign_parse_round_trip(chain, seq, prev, type_, at, body, cid):
    key = SigningKey.from_seed(chain, KEY.seed)
    prev = ZERO_HASH if seq == 1 else prev
    s = make_entry(key, seq=seq, prev=prev, type=type_, occurred_at=at, body=body, command_id=str(cid))
    again = SignedEntry.parse(s.envelope)
    assert again == s
    assert again.entry == s.entry
    e = again.entry
    assert (e.chain, e.seq, e.prev, e.type, e.occurred_at, e.key_id, e.command_id, e.v) == \
        (chain, seq, prev, type_, at, key.key_id, str(cid), 1)
    assert encoding.canonical(e.body) == encoding.canonical(body)
    assert again.hash == hashlib.sha256(s.envelope).digest()
    assert again.signature_valid(key.public_key)
    assert not again.signature_valid(OTHER.public_key)
    assert again.content == e.content_bytes()
    assert encoding.decode(s.envelope) == {"entry": s.content, "sig": s.signature}


def test_signature_is_over_tag_and_content():
    s = make_entry(KEY, seq=1, prev=ZERO_HASH, type="MiningOutput", occurred_at=T0, body={"qty": "1"})
    assert verify_signature(KEY.public_key, ENTRY_TAG, s.content, s.signature)
    assert not verify_signature(KEY.public_key, b"", s.content, s.signature)
    assert not verify_signature(KEY.public_key, b"reledger/v1/checkpoint\n", s.content, s.signature)
    # a signature over the bare content (no tag) is refused
    bare = SignedEntry.from_parts(s.content, KEY.private_key.sign(s.content))
    assert not bare.signature_valid(KEY.public_key)


def test_key_id_and_mismatched_key():
    assert KEY.key_id == hashlib.sha256(KEY.public_key).hexdigest()[:16] == key_id(KEY.public_key)
    entry = Entry(chain=KEY.party, seq=1, prev=ZERO_HASH, type="MiningOutput", occurred_at=T0, body={},
                  key_id=KEY.key_id, command_id=new_command_id())
    with pytest.raises(EntryError) as ei:
        entry.sign(OTHER)
    assert ei.value.field == "key_id"
    with pytest.raises(KeyError_):
        key_id(b"short")


def test_chain_signer_links_prev():
    signer = ChainSigner(KEY)
    a = signer.sign("MiningOutput", {"qty": "1"}, T0)
    peeked = signer.peek("MiningOutput", {"qty": "2"}, T0)
    assert signer.seq == 1  # peek does not advance
    b = signer.sign("MiningOutput", {"qty": "2"}, T0)
    assert (a.entry.seq, a.entry.prev) == (1, ZERO_HASH)
    assert (b.entry.seq, b.entry.prev) == (2, a.hash)
    assert peeked.entry.seq == 2 and peeked.entry.prev == a.hash
    signer.advance(peeked)
    assert signer.head == peeked.hash


def test_genesis_entries_shape():
    reg = ChainSigner(seeded_key("MIIT", 1))
    ck = seeded_key("MIIT", 2, "checkpoint")
    g = genesis_entries(reg, ck, name="Ministry", origin="example.org/log", at=T0)
    assert [s.entry.type for s in g] == ["KeyAuthorized", "PartyRegistered", "KeyAuthorized"]
    assert [s.entry.seq for s in g] == [1, 2, 3]
    assert g[0].entry.body["public_key"] == reg.key.public_key and g[0].entry.body["key_id"] == reg.key.key_id
    assert g[2].entry.body["purpose"] == "checkpoint" and g[2].entry.body["public_key"] == ck.public_key
    assert g[1].entry.body["roles"] == ["REGULATOR"]
    assert all(s.signature_valid(reg.key.public_key) for s in g)


def test_key_file_round_trip(tmp_path):
    path = KEY.write(tmp_path / "k.json")
    assert (path.stat().st_mode & 0o777) == 0o600
    back = SigningKey.read(path)
    assert (back.party, back.key_id, back.seed) == (KEY.party, KEY.key_id, KEY.seed)
    with pytest.raises(FileExistsError):
        KEY.write(path)


def test_leaf_bytes_canonical():
    leaf = leaf_bytes(b"\x01" * 32, 5, T0)
    assert encoding.decode(leaf) == {"entry_hash": b"\x01" * 32, "index": 5, "recorded_at": T0}


# --- strict parsing ----------------------------------------------------------------------

@pytest.mark.parametrize("over,field", [
    ({"v": 2}, "v"), ({"v": True}, "v"), ({"v": "1"}, "v"),
    ({"chain": "m1"}, "chain"), ({"chain": "X"}, "chain"), ({"chain": "A" * 65}, "chain"), ({"chain": b"MIIT"}, "chain"),
    ({"chain": "MINE 1"}, "chain"),
    ({"seq": 0}, "seq"), ({"seq": -1}, "seq"), ({"seq": "1"}, "seq"), ({"seq": True}, "seq"),
    ({"prev": bytes(31)}, "prev"), ({"prev": "00" * 32}, "prev"), ({"prev": b"\x01" * 32}, "prev"),
    ({"prev": "\x00" * 32}, "prev"), ({"prev": bytes(33)}, "prev"), ({"prev": None}, "prev"),
    ({"type": "miningOutput"}, "type"), ({"type": ""}, "type"), ({"type": "Mining Output"}, "type"),
    ({"occurred_at": "2024-01-01"}, "occurred_at"), ({"occurred_at": "2024-01-01T00:00:00.0Z"}, "occurred_at"),
    ({"occurred_at": 1704067200}, "occurred_at"),
    ({"body": []}, "body"), ({"body": "x"}, "body"), ({"body": None}, "body"),
    ({"key_id": "ABCDEF0123456789"}, "key_id"), ({"key_id": "abc"}, "key_id"),
    ({"command_id": "1B4E28BA-2FA1-11D2-883F-0016D3CCA427"}, "command_id"), ({"command_id": "not-a-uuid"}, "command_id"),
    ({"command_id": "1b4e28ba2fa111d2883f0016d3cca427"}, "command_id"),
])
def test_bad_content_refused(over, field):
    with pytest.raises(EntryError) as ei:
        SignedEntry.parse(envelope_of(content_map(**over)))
    assert ei.value.field == field


def test_missing_and_extra_fields_refused():
    for k in ("body", "chain", "command_id", "key_id", "occurred_at", "prev", "seq", "type", "v"):
        m = content_map()
        del m[k]
        with pytest.raises(EntryError) as ei:
            SignedEntry.parse(envelope_of(m))
        assert ei.value.field == k
    with pytest.raises(EntryError) as ei:
        SignedEntry.parse(envelope_of(content_map(extra=1)))
    assert ei.value.field == "extra"


def test_seq_above_one_with_any_prev_parses():
    SignedEntry.parse(envelope_of(content_map(seq=2, prev=b"\x07" * 32)))
    SignedEntry.parse(envelope_of(content_map(seq=2, prev=ZERO_HASH)))  # the store decides the chain


def test_bad_envelopes_refused():
    good = SignedEntry.parse(envelope_of(content_map()))
    cases = [
        canonical({"entry": good.content}),
        canonical({"entry": good.content, "sig": good.signature, "x": 1}),
        canonical({"entry": good.content.decode("latin-1"), "sig": good.signature}),
        canonical({"entry": good.content, "sig": good.signature.decode("latin-1")}),  # sig as text
        canonical({"entry": good.content, "sig": None}),
        canonical({"entry": good.content, "sig": good.signature[:63]}),
        canonical({"entry": good.content, "sig": good.signature + b"\x00"}),
        canonical([good.content, good.signature]),
        canonical({"entry": canonical([1]), "sig": good.signature}),
        canonical({"entry": good.content + b"\x00", "sig": good.signature}),  # trailing bytes in content
        msgpack.packb({"sig": good.signature, "entry": good.content}, use_bin_type=True),  # unsorted
        good.envelope + b"\x00",
        good.envelope[:-1],
        b"",
    ]
    for env in cases:
        with pytest.raises(EntryError):
            SignedEntry.parse(env)
    with pytest.raises(EntryError):
        SignedEntry.parse("text")  # type: ignore[arg-type]


def test_non_canonical_content_refused():
    m = content_map()
    unsorted = msgpack.packb(dict(reversed(list(m.items()))), use_bin_type=True)
    env = canonical({"entry": unsorted, "sig": KEY.sign(ENTRY_TAG, unsorted)})
    with pytest.raises(EntryError) as ei:
        SignedEntry.parse(env)
    assert ei.value.field == "entry"
    with_float = msgpack.packb({**m, "body": {"qty": 1.5}}, use_bin_type=True)
    with pytest.raises(EntryError):
        SignedEntry.parse(canonical({"entry": with_float, "sig": bytes(64)}))


def test_oversized_envelope_refused():
    big = envelope_of(content_map(body={"blob": b"x" * MAX_ENVELOPE}))
    with pytest.raises(EntryError) as ei:
        SignedEntry.parse(big)
    assert ei.value.field == "envelope"


@pytest.mark.parametrize("field_name", ["chain", "type", "command_id", "key_id"])
def test_trailing_newline_in_ids_refused(field_name):
    m = content_map()
    m[field_name] = m[field_name] + "\n"
    with pytest.raises(EntryError):
        SignedEntry.parse(envelope_of(m))


# --- any single-byte change is caught ----------------------------------------------------

SIGNED = make_entry(KEY, seq=3, prev=b"\x05" * 32, type="MiningOutput", occurred_at=T0,
                    body={"qty": "12.5", "lot": "L1", "refs": [b"\x01\x02", 3, None, True]})


def _refused_or_unsigned(env: bytes, public_key: bytes) -> None:
    try:
        s = SignedEntry.parse(env)
    except EntryError:
        return
    assert not s.signature_valid(public_key), "a changed envelope still parses and verifies"


@given(st.integers(min_value=0, max_value=len(SIGNED.envelope) - 1), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_refused(pos, delta):
    env = bytearray(SIGNED.envelope)
    env[pos] = (env[pos] + delta) % 256
    _refused_or_unsigned(bytes(env), KEY.public_key)


def test_every_single_byte_change_refused_exhaustive_xor():
    env = SIGNED.envelope
    for pos in range(len(env)):
        for mask in (0x01, 0x80, 0xFF):
            changed = bytearray(env)
            changed[pos] ^= mask
            _refused_or_unsigned(bytes(changed), KEY.public_key)


@given(st.integers(min_value=0, max_value=len(SIGNED.envelope)), st.binary(min_size=1, max_size=3))
def test_inserted_or_deleted_bytes_refused(pos, extra):
    env = SIGNED.envelope
    _refused_or_unsigned(env[:pos] + extra + env[pos:], KEY.public_key)
    if pos < len(env):
        _refused_or_unsigned(env[:pos] + env[pos + len(extra):], KEY.public_key)


def test_resigned_by_another_key_refused():
    m = encoding.decode(SIGNED.content)
    forged = SignedEntry.parse(envelope_of(m, key=OTHER))
    assert forged.entry.key_id == KEY.key_id  # names the victim's key...
    assert not forged.signature_valid(KEY.public_key)  # ...but the victim's key did not sign it


def test_remembered_signature_check_is_per_key():
    s = SignedEntry.parse(SIGNED.envelope)
    assert not s.signature_valid(OTHER.public_key)
    assert s.signature_valid(KEY.public_key)
    assert s.signature_valid(KEY.public_key)  # remembered
    assert not s.signature_valid(OTHER.public_key)  # a success with one key says nothing of another
    forged = SignedEntry.from_parts(s.content, bytes(64))
    assert not forged.signature_valid(KEY.public_key)
    assert not forged.signature_valid(KEY.public_key)


# --- the fast parsing path judges like the strict one ------------------------------------

def _strict_content(content: bytes):
    """The strict path alone: encoding._decode_strict + validate_content (None when refused)."""
    try:
        m = encoding._decode_strict(content)
        validate_content(m)
        return m
    except (EncodingError, EntryError):
        return None


field_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=2**64 - 1), st.text(max_size=40),
    st.binary(max_size=40), st.just(ZERO_HASH), st.just(KEY.party), st.just(KEY.key_id), st.just(T0),
    st.just("2024-01-01T00:00:00.0Z"), st.just("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    st.just("1B4E28BA-2FA1-11D2-883F-0016D3CCA427"), st.just("MiningOutput"), st.just("A" * 65), body_values,
    st.floats(allow_nan=False, width=32))  # packing 2 writes single precision: only 32-bit floats fit


@given(st.dictionaries(st.sampled_from(("body", "chain", "command_id", "key_id", "occurred_at", "prev", "seq",
                                        "type", "v", "extra")), field_values, max_size=4),
       st.sets(st.sampled_from(("body", "chain", "command_id", "seq", "v")), max_size=2),
       st.integers(min_value=0, max_value=3))
@example(over={"chain": []}, dropped=set(), packing=0)
@example(over={"type": {}}, dropped=set(), packing=0)
@example(over={"key_id": ["a"]}, dropped=set(), packing=0)
def test_fast_content_path_agrees_with_the_strict_path(over, dropped, packing):
    """SignedEntry parsing takes a fast path for canonical, well-formed contents; whatever the
    bytes (valid, mutated fields, missing or extra keys, unsorted keys, longer forms, floats),
    it must accept exactly what the strict path accepts and decode to the same value."""
    from reledger.ledger.entry import _fast_content

    m = content_map(**over)
    for k in dropped:
        m.pop(k, None)
    if packing == 0:
        try:
            content = canonical(m)
        except EncodingError:
            content = msgpack.packb(m, use_bin_type=True)
    elif packing == 1:  # insertion order, not sorted
        content = msgpack.packb(dict(reversed(list(m.items()))), use_bin_type=True)
    elif packing == 2:  # floats as single precision, strings as raw (longer or other forms)
        content = msgpack.packb(m, use_bin_type=False, use_single_float=True)
    else:  # a non-shortest integer for seq
        head = msgpack.packb(m, use_bin_type=True)
        content = head.replace(b"\xa3seq\x01", b"\xa3seq\xcd\x00\x01", 1)
    fast, strict = _fast_content(content), _strict_content(content)
    if strict is None:
        assert fast is None
    else:
        assert fast is None or fast == strict
        if packing == 0:  # canonical and valid: the fast path itself must take it
            assert fast == strict
        parsed = SignedEntry.parse(canonical({"entry": content, "sig": bytes(64)}))
        assert parsed.entry.as_map() == strict


@given(st.integers(min_value=0, max_value=len(SIGNED.envelope) - 1), st.integers(min_value=0, max_value=255),
       st.booleans())
def test_check_envelopes_judges_like_parse_and_signature_valid(pos, value, known_key):
    """``check_envelopes`` (the work a store hands to worker processes) refuses exactly what
    SignedEntry.parse refuses, or a bad signature when the key is known, and otherwise answers
    the parsed fields."""
    from reledger.ledger.entry import check_envelopes

    env = bytearray(SIGNED.envelope)
    env[pos] = value
    env = bytes(env)
    keys = {KEY.key_id: KEY.public_key} if known_key else {}
    answer = check_envelopes([SIGNED.envelope, env], keys, frozenset({"MiningOutput"}))
    try:
        s = SignedEntry.parse(env)
    except EntryError as e:
        assert answer[0] == "error" and answer[1:4] == ("malformed", str(e), e.field) and answer[4] == 1
        return
    pub = keys.get(s.entry.key_id)
    if pub is not None and not s.signature_valid(pub):
        assert answer[0] == "error" and answer[1] == "signature" and answer[4:] == (1, s.entry.chain, s.entry.seq)
        return
    assert isinstance(answer, list) and len(answer) == 2
    e = s.entry
    assert answer[1] == (e.chain, e.seq, e.prev, e.type, e.key_id, e.command_id, s.hash, pub is not None,
                         e.body if e.type == "MiningOutput" else None)


@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**63), times)
def test_leaf_hasher_is_leaf_hash_of_leaf_bytes(entry_hash, index, recorded_at):
    """The append and verify hot paths hash leaves with LeafHasher: the same hash as the
    specified leaf_bytes (docs/FORMAT.md), whatever the index's msgpack width."""
    from reledger.ledger import merkle
    from reledger.ledger.entry import LeafHasher

    assert LeafHasher(recorded_at)(entry_hash, index) == merkle.leaf_hash(leaf_bytes(entry_hash, index, recorded_at))
