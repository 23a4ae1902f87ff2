"""The test vectors of docs/FORMAT.md, checked against ledger/ byte for byte.

* docs/vectors/format-v1.json is exactly what tests/vectors/make_format_vectors.py builds from
  the code, and the vector section of docs/FORMAT.md is exactly what it renders from that JSON
  (so neither the file nor the document can drift from the code or from each other);
* every vector is also recomputed here piece by piece: with ledger/, and where cheap with a
  second implementation written from FORMAT.md alone (a canonical msgpack encoder, RFC 9162
  MTH/PATH/PROOF by the recursive definitions, Ed25519 with `cryptography` directly);
* every refusal vector is refused.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import struct
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reledger.ledger import encoding, merkle
from reledger.ledger.checkpoint import Checkpoint, NoteSigner, NoteVerifier, sign_checkpoint, verify_checkpoint
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import ENTRY_TAG, ZERO_HASH, EntryError, SignedEntry, leaf_bytes, validate_content
from reledger.ledger.genesis import ChainSigner, genesis_entries
from reledger.ledger.keys import SigningKey, key_id
from reledger.ledger.verify import LogVerifier, check_entries, key_table

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_format_vectors", ROOT / "tests/vectors/make_format_vectors.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

V = json.loads(gen.JSON_PATH.read_text(encoding="utf-8"))
DOC = gen.DOC_PATH.read_text(encoding="utf-8")
KEYS = {k["role"]: k for k in V["keys"]}
ENTRIES = V["entries"]
H = bytes.fromhex


# --- a second canonical encoder, written from FORMAT.md section 1 alone ------------------

def spec_encode(v) -> bytes:
    if v is None:
        return b"\xc0"
    if v is False:
        return b"\xc2"
    if v is True:
        return b"\xc3"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if -32 <= v < 0:
            return bytes([v & 0xFF])
        if v > 0:
            for fmt, code in ((">B", 0xCC), (">H", 0xCD), (">I", 0xCE), (">Q", 0xCF)):
                if v < 1 << (8 * struct.calcsize(fmt)):
                    return bytes([code]) + struct.pack(fmt, v)
        for fmt, code in ((">b", 0xD0), (">h", 0xD1), (">i", 0xD2), (">q", 0xD3)):
            if v >= -(1 << (8 * struct.calcsize(fmt) - 1)):
                return bytes([code]) + struct.pack(fmt, v)
        raise ValueError(v)

    def sized(n: int, fix: int | None, fixmax: int, codes: tuple[int, int, int] | tuple[int, int]) -> bytes:
        if fix is not None and n <= fixmax:
            return bytes([fix | n])
        widths = (1, 2, 4) if len(codes) == 3 else (2, 4)
        for code, w in zip(codes, widths):
            if n < 1 << (8 * w):
                return bytes([code]) + n.to_bytes(w, "big")
        raise ValueError(n)

    if isinstance(v, str):
        b = v.encode("utf-8")
        return sized(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB)) + b
    if isinstance(v, bytes):
        return sized(len(v), None, -1, (0xC4, 0xC5, 0xC6)) + v
    if isinstance(v, list):
        return sized(len(v), 0x90, 15, (0xDC, 0xDD)) + b"".join(spec_encode(x) for x in v)
    if isinstance(v, dict):
        items = sorted(((k.encode("utf-8"), x) for k, x in v.items()), key=lambda kv: kv[0])
        return sized(len(items), 0x80, 15, (0xDE, 0xDF)) + b"".join(
            spec_encode(k.decode("utf-8")) + spec_encode(x) for k, x in items)
    raise TypeError(type(v))


# --- RFC 9162 by its recursive definitions (section 2.1) ---------------------------------

def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = _k(n)
    if m <= k:
        return subproof(m, leaves[:k], b) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def doc_inclusion_ok(leaf_hash: bytes, m: int, n: int, proof: list[bytes], root: bytes) -> bool:
    """FORMAT.md 6.1, line by line."""
    if any(len(h) != 32 for h in [leaf_hash, root, *proof]) or m >= n:
        return False
    fn, sn, r = m, n - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def doc_consistency_ok(m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes) -> bool:
    """FORMAT.md 6.2, line by line (m < n)."""
    if any(len(h) != 32 for h in [r1, r2, *proof]) or not proof:
        return False
    if m & (m - 1) == 0:
        proof = [r1] + proof
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == r1 and sr == r2


def leaf_data() -> list[bytes]:
    return [H(e["leaf"]) for e in ENTRIES]


# --- the files agree with the generator and with each other ------------------------------

def test_json_is_what_the_generator_builds_from_the_code():
    assert gen.build() == V, "docs/vectors/format-v1.json is stale: run tests/vectors/make_format_vectors.py"


def test_format_md_vector_section_is_rendered_from_the_json():
    assert DOC.count(gen.BEGIN) == 1 and DOC.count(gen.END) == 1
    section = DOC[DOC.index(gen.BEGIN):DOC.index(gen.END) + len(gen.END) + 1]
    assert section == gen.render_markdown(V), "docs/FORMAT.md vectors are stale: run the generator"


# text values (not hex), ENTRY_TAG || content (shown as its two parts), the nodes column (shown
# hash by hash)
SHOWN_OTHERWISE = {"str", "signed_message", "nodes_column"}


def test_every_hex_string_of_the_json_appears_in_format_md():
    flat = "".join(DOC.split())  # hex blocks are wrapped; join them
    missing = []

    def walk(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in SHOWN_OTHERWISE:
                    walk(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        elif isinstance(x, str) and len(x) >= 8 and all(c in "0123456789abcdef" for c in x) and x not in flat:
            missing.append(where)

    for key in ("canonical", "refused", "keys", "entries", "tree", "inclusion", "consistency", "checkpoint"):
        walk(V[key], key)
    assert not missing, missing[:10]


# --- 1. canonical encoding ---------------------------------------------------------------

@pytest.mark.parametrize("case", V["canonical"], ids=lambda c: c["name"])
def test_canonical_vector(case):
    value, want = gen.untyped(case["value"]), H(case["hex"])
    assert encoding.canonical(value) == want
    assert spec_encode(value) == want
    assert encoding.decode(want) == value
    assert encoding.canonical(encoding.decode(want)) == want


@pytest.mark.parametrize("case", V["refused"], ids=lambda c: c["name"])
def test_refused_bytes(case):
    with pytest.raises(EncodingError):
        encoding.decode(H(case["hex"]))


def test_refused_cases_are_not_produced_by_the_encoder():
    produced = {c["hex"] for c in V["canonical"]}
    assert not produced & {c["hex"] for c in V["refused"]}


def test_integers_outside_the_range_and_floats_are_not_encoded():
    for bad in (2**64, -(2**63) - 1, 1.0, float("nan")):
        with pytest.raises(EncodingError):
            encoding.canonical(bad)
    with pytest.raises(EncodingError):
        encoding.canonical({1: "non-text key"})
    with pytest.raises(EncodingError):
        encoding.canonical(gen.nested_arrays(34))


@pytest.mark.parametrize("case", V["decimal"]["normal"], ids=lambda c: c["input"])
def test_decimal_normal_form(case):
    assert encoding.decimal_text(case["input"], places=V["decimal"]["places"]) == case["text"]
    assert encoding.is_decimal_text(case["text"])
    assert encoding.parse_decimal(case["text"]) == Decimal(case["input"])


@pytest.mark.parametrize("text", V["decimal"]["refused"])
def test_decimal_refused(text):
    with pytest.raises(EncodingError):
        encoding.decimal_text(text, places=V["decimal"]["places"])


@pytest.mark.parametrize("text", V["decimal"]["not_normal"])
def test_decimal_not_normal(text):
    assert not encoding.is_decimal_text(text)
    with pytest.raises(EncodingError):
        encoding.parse_decimal(text)


@pytest.mark.parametrize("case", V["time"]["normal"], ids=lambda c: c["input"])
def test_time_normal_form(case):
    assert encoding.time_text(datetime.fromisoformat(case["input"])) == case["text"]
    assert encoding.parse_time(case["text"]) == datetime.fromisoformat(case["input"])


@pytest.mark.parametrize("text", V["time"]["not_normal"])
def test_time_not_normal(text):
    with pytest.raises(EncodingError):
        encoding.parse_time(text)


def records_for(envelopes_and_times: list[tuple[bytes, str]]) -> list[SimpleNamespace]:
    """Log rows (as the reader gives them) for envelopes recorded at the given times."""
    f, out = merkle.Frontier(), []
    for i, (env, at) in enumerate(envelopes_and_times):
        s = SignedEntry.parse(env)
        completed = f.append(merkle.leaf_hash(leaf_bytes(s.hash, i, at)))
        out.append(SimpleNamespace(index=i, recorded_us=encoding.time_to_micros(encoding.parse_time(at)),
                                   chain=s.entry.chain, seq=s.entry.seq, type=s.entry.type, entry_hash=s.hash,
                                   nodes=b"".join(h for _, _, h in completed), envelope=env))
    return out


def verify_records(records, checkpoints=(), trusted_keys=()):
    v = LogVerifier(list(checkpoints), expected_size=len(records), trusted_checkpoint_keys=list(trusted_keys))
    for c in check_entries(records, key_table(r.envelope for r in records)):
        v.feed(c)
    return v.finish()


SAMPLE = [(H(e["envelope"]), e["recorded_at"]) for e in ENTRIES]


def _verify_refuses(what: str) -> bool:
    c = V["checkpoint"]
    if what.startswith("recorded_at"):
        rep = verify_records(records_for(SAMPLE[:6] + [(SAMPLE[6][0], "2026-03-31T16:05:07Z")]))
    elif what.startswith("a command id"):
        rep = verify_records(records_for(SAMPLE + [(_reused_command_id().envelope, "2026-04-01T03:00:00Z")]))
    else:
        rep = verify_records(records_for(SAMPLE), [(c["size"], H(c["root"]), _note_under_other_name())])
    return not rep.ok


def _reused_command_id() -> SignedEntry:
    mine = SigningKey.from_seed(KEYS["mine"]["party"], H(KEYS["mine"]["seed"]))
    signer = ChainSigner(mine, seq=2, head=H(ENTRIES[6]["entry_hash"]))
    return signer.sign("StockCounted", {"lot": "X", "counted_kg": "1"}, "2026-04-01T00:00:00Z",
                       command_id=ENTRIES[6]["command_id"])


def _note_under_other_name() -> bytes:
    c = V["checkpoint"]
    priv = Ed25519PrivateKey.from_private_bytes(H(KEYS["checkpoint"]["seed"]))
    return sign_checkpoint(Checkpoint("other.example/log", c["size"], H(c["root"])),
                           NoteSigner("other.example/log", priv))


def test_deviation_controls():
    """The logs the deviation checks build are otherwise valid: only the one flaw differs."""
    c = V["checkpoint"]
    assert verify_records(records_for(SAMPLE[:6] + [(SAMPLE[6][0], "2026-03-31T16:05:08Z")])).ok
    fresh = _reused_command_id()
    other = SignedEntry.parse(fresh.envelope).entry.as_map()
    assert other["command_id"] == ENTRIES[6]["command_id"] and other["seq"] == 3
    assert verify_records(records_for(SAMPLE), [(c["size"], H(c["root"]), c["note"].encode())]).ok
    assert _note_under_other_name() != c["note"].encode()


def _deviation_refused(d) -> bool:
    if d["check"] == "verify_refused":
        return _verify_refuses(d["input"])
    if d["check"] == "decimal_not_normal":
        try:
            encoding.parse_decimal(d["input"])
        except EncodingError:
            return True
        return False
    m = SignedEntry.parse(H(ENTRIES[5]["envelope"])).entry.as_map()
    if d["input"].startswith("chain"):
        m["chain"] += "\n"
    else:
        m["command_id"] += "\n"
    try:
        validate_content(m)
    except EntryError:
        return True
    return False


def test_no_known_deviations():
    """FORMAT.md V.8 lists where ledger/ departs from the spec; there are none now. Should one be
    recorded again, it must really be a deviation (the code accepts what the spec refuses)."""
    assert V["known_deviations"] == [], "FORMAT.md V.8 says ledger/ departs from the spec nowhere"
    for dev in V["known_deviations"]:  # pragma: no cover - only once one is recorded again
        assert not _deviation_refused(dev), f"{dev['input']!r} is refused now: empty KNOWN_DEVIATIONS"


def test_the_deviation_check_can_tell_a_deviation():
    """_deviation_refused, which would judge a recorded deviation, answers True for input the
    code refuses and False for input it accepts: the check above is not vacuous should the list
    fill again."""
    assert _deviation_refused({"check": "decimal_not_normal", "input": "1.50"})
    assert not _deviation_refused({"check": "decimal_not_normal", "input": "1.5"})


# --- 2. keys and entries -----------------------------------------------------------------

@pytest.mark.parametrize("role", list(KEYS))
def test_key_vector(role):
    k = KEYS[role]
    priv = Ed25519PrivateKey.from_private_bytes(H(k["seed"]))
    pub = SigningKey.from_seed(k["party"], H(k["seed"]), k["purpose"]).public_key
    assert pub.hex() == k["public_key"]
    assert hashlib.sha256(pub).hexdigest() == k["key_id_sha256"]
    assert key_id(pub) == k["key_id"] == k["key_id_sha256"][:16]
    if "vkey" in k:
        signer = NoteSigner(k["note_name"], priv)
        assert signer.key_id.hex() == k["note_key_id"]
        assert hashlib.sha256(k["note_name"].encode() + b"\n\x01" + pub).digest()[:4].hex() == k["note_key_id"]
        assert NoteVerifier.from_vkey(k["vkey"]).key_id.hex() == k["note_key_id"]
        assert k["vkey"] == f"{k['note_name']}+{k['note_key_id']}+" + base64.b64encode(b"\x01" + pub).decode()


def test_entry_tag():
    assert ENTRY_TAG == H(V["entry_tag"]) == b"reledger/v1/entry\n"


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: f"{e['index']}-{e['type']}")
def test_entry_vector(e):
    key = KEYS[e["signer"]]
    content = H(e["content"])
    value = gen.untyped(e["content_value"])
    # the content: canonical bytes of the content map, by both encoders
    assert encoding.canonical(value) == content == spec_encode(value)
    assert encoding.decode(content) == value
    assert sorted(value) == ["body", "chain", "command_id", "key_id", "occurred_at", "prev", "seq", "type", "v"]
    assert (value["chain"], value["seq"], value["type"], value["command_id"], value["occurred_at"]) == (
        e["chain"], e["seq"], e["type"], e["command_id"], e["occurred_at"])
    assert value["key_id"] == key["key_id"] and value["v"] == 1
    # the signature: deterministic Ed25519 over ENTRY_TAG || content
    assert H(e["signed_message"]) == ENTRY_TAG + content
    priv = Ed25519PrivateKey.from_private_bytes(H(key["seed"]))
    assert priv.sign(ENTRY_TAG + content) == H(e["signature"])
    Ed25519PublicKey.from_public_bytes(H(key["public_key"])).verify(H(e["signature"]), ENTRY_TAG + content)
    # the envelope and the entry hash
    envelope = H(e["envelope"])
    assert envelope == encoding.canonical({"entry": content, "sig": H(e["signature"])})
    assert envelope == spec_encode({"sig": H(e["signature"]), "entry": content})
    assert hashlib.sha256(envelope).hexdigest() == e["entry_hash"]
    s = SignedEntry.parse(envelope)
    assert s.hash.hex() == e["entry_hash"] and s.content == content and s.signature_valid(H(key["public_key"]))
    # the leaf and its hash; the nodes the row stores
    leaf = H(e["leaf"])
    assert leaf == leaf_bytes(H(e["entry_hash"]), e["index"], e["recorded_at"])
    assert leaf == spec_encode(gen.untyped(e["leaf_value"]))
    assert merkle.leaf_hash(leaf).hex() == e["leaf_hash"] == hashlib.sha256(b"\x00" + leaf).hexdigest()
    assert e["nodes_column"] == "".join(n["hash"] for n in e["nodes"])
    assert e["nodes"][0] == {"level": 0, "index": e["index"], "hash": e["leaf_hash"]}
    trailing_ones = (~e["index"] & (e["index"] + 1)).bit_length() - 1
    assert len(e["nodes"]) == 1 + trailing_ones
    leaves = leaf_data()
    for n in e["nodes"]:
        span = leaves[n["index"] << n["level"]:(n["index"] + 1) << n["level"]]
        assert mth(span).hex() == n["hash"]


def test_entries_chain_by_prev():
    heads: dict[str, bytes] = {}
    for e in ENTRIES:
        m = gen.untyped(e["content_value"])
        assert m["seq"] == sum(1 for x in ENTRIES[:e["index"]] if x["chain"] == e["chain"]) + 1
        assert m["prev"] == heads.get(e["chain"], ZERO_HASH)
        heads[e["chain"]] = H(e["entry_hash"])


def test_genesis_is_what_ledger_genesis_builds():
    reg = SigningKey.from_seed(KEYS["regulator"]["party"], H(KEYS["regulator"]["seed"]))
    ck = SigningKey.from_seed(KEYS["checkpoint"]["party"], H(KEYS["checkpoint"]["seed"]), "checkpoint")
    built = genesis_entries(ChainSigner(reg), ck, name="Ministry of Industry and Information Technology",
                            origin=V["checkpoint"]["origin"], at=ENTRIES[0]["occurred_at"])
    assert len(built) == 3
    for b, e in zip(built, ENTRIES[:3]):
        got, want = b.entry.as_map(), gen.untyped(e["content_value"])
        got.pop("command_id"), want.pop("command_id")
        if b.entry.seq == 1:
            assert got == want
        else:  # prev differs with the command ids of the earlier entries
            got.pop("prev"), want.pop("prev")
            assert got == want


def test_the_sample_log_verifies_with_registry_checkpoint_keys():
    c = V["checkpoint"]
    rep = verify_records(records_for(SAMPLE), [(c["size"], H(c["root"]), c["note"].encode())])
    assert rep.ok and rep.checkpoints == 1 and rep.root.hex() == c["root"], [str(p) for p in rep.problems]
    assert [r.nodes.hex() for r in records_for(SAMPLE)] == [e["nodes_column"] for e in ENTRIES]


def test_the_sample_log_verifies():
    records = [SimpleNamespace(index=e["index"], recorded_us=encoding.time_to_micros(encoding.parse_time(e["recorded_at"])),
                               chain=e["chain"], seq=e["seq"], type=e["type"], entry_hash=H(e["entry_hash"]),
                               nodes=H(e["nodes_column"]), envelope=H(e["envelope"])) for e in ENTRIES]
    keys = key_table(r.envelope for r in records)
    cp = V["checkpoint"]
    v = LogVerifier([(cp["size"], H(cp["root"]), cp["note"].encode())], expected_size=len(records),
                    trusted_genesis=ENTRIES[0]["entry_hash"], trusted_checkpoint_keys=[cp["vkey"]])
    for c in check_entries(records, keys):
        v.feed(c)
    rep = v.finish()
    assert rep.ok, [str(p) for p in rep.problems]
    assert (rep.size, rep.root.hex(), rep.checkpoints, rep.genesis) == (7, cp["root"], 1, ENTRIES[0]["entry_hash"])
    assert micros_roundtrip(records)


def micros_roundtrip(records) -> bool:
    return all(encoding.micros_to_time_text(r.recorded_us) == e["recorded_at"] for r, e in zip(records, ENTRIES))


def test_a_changed_byte_breaks_the_sample_log():
    e = ENTRIES[5]
    env = bytearray(H(e["envelope"]))
    env[-1] ^= 1  # last signature byte
    s = SignedEntry.parse(bytes(env))
    assert not s.signature_valid(H(KEYS["mine"]["public_key"]))
    assert s.hash.hex() != e["entry_hash"]


# --- 3. the Merkle log and proofs --------------------------------------------------------

def test_roots():
    leaves = leaf_data()
    for r in V["tree"]["roots"]:
        assert mth(leaves[:r["size"]]).hex() == r["root"]
    assert V["tree"]["roots"][0]["root"] == hashlib.sha256(b"").hexdigest()
    f = merkle.Frontier()
    for e in ENTRIES:
        f.append(H(e["leaf_hash"]))
    assert f.root().hex() == V["tree"]["roots"][-1]["root"] == V["checkpoint"]["root"]
    for n in V["tree"]["perfect_nodes"]:
        assert mth(leaves[n["index"] << n["level"]:(n["index"] + 1) << n["level"]]).hex() == n["hash"]


@pytest.mark.parametrize("p", V["inclusion"], ids=lambda p: f"{p['index']}@{p['size']}")
def test_inclusion_proof(p):
    leaves = leaf_data()
    proof = [H(h) for h in p["proof"]]
    assert path(p["index"], leaves[:p["size"]]) == proof
    assert mth(leaves[:p["size"]]).hex() == p["root"]
    assert merkle.leaf_hash(leaves[p["index"]]).hex() == p["leaf_hash"]
    merkle.verify_inclusion(H(p["leaf_hash"]), p["index"], p["size"], proof, H(p["root"]))
    assert doc_inclusion_ok(H(p["leaf_hash"]), p["index"], p["size"], proof, H(p["root"]))
    assert not doc_inclusion_ok(H(p["leaf_hash"]), p["index"], p["size"], proof + [bytes(32)], H(p["root"]))
    if proof:
        assert not doc_inclusion_ok(H(p["leaf_hash"]), p["index"], p["size"], proof[:-1], H(p["root"]))
        bad = list(proof)
        bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(H(p["leaf_hash"]), p["index"], p["size"], bad, H(p["root"]))


@pytest.mark.parametrize("p", V["consistency"], ids=lambda p: f"{p['size1']}-{p['size2']}")
def test_consistency_proof(p):
    leaves = leaf_data()
    proof = [H(h) for h in p["proof"]]
    assert subproof(p["size1"], leaves[:p["size2"]], True) == proof
    assert mth(leaves[:p["size1"]]).hex() == p["root1"] and mth(leaves[:p["size2"]]).hex() == p["root2"]
    merkle.verify_consistency(p["size1"], p["size2"], proof, H(p["root1"]), H(p["root2"]))
    assert doc_consistency_ok(p["size1"], p["size2"], proof, H(p["root1"]), H(p["root2"]))
    assert not doc_consistency_ok(p["size1"], p["size2"], proof, H(p["root2"]), H(p["root1"]))
    assert not doc_consistency_ok(p["size1"], p["size2"], proof[:-1], H(p["root1"]), H(p["root2"]))
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(p["size1"], p["size2"], proof, H(p["root2"]), H(p["root1"]))


# --- 4. the checkpoint -------------------------------------------------------------------

def test_checkpoint():
    c = V["checkpoint"]
    k = KEYS["checkpoint"]
    priv = Ed25519PrivateKey.from_private_bytes(H(k["seed"]))
    # the chain heads (5.3), from FORMAT.md alone: the last entry of each chain of the sample log,
    # leaves [chain, seq, entry hash] in canonical msgpack, in chain order, their RFC 9162 root
    last = {}
    for e in V["entries"]:
        last[e["chain"]] = (e["seq"], H(e["entry_hash"]))
    order = sorted(last, key=lambda chain: chain.encode())
    leaves = [spec_encode([chain, *last[chain]]) for chain in order]
    assert [h["chain"] for h in c["heads"]] == order and [H(h["leaf"]) for h in c["heads"]] == leaves
    assert [H(h["leaf_hash"]) for h in c["heads"]] == [hashlib.sha256(b"\x00" + x).digest() for x in leaves]
    assert (c["heads_count"], H(c["heads_root"])) == (len(leaves), mth(leaves))
    assert c["heads_line"] == f"reledger-heads-v1 {len(leaves)} {base64.b64encode(mth(leaves)).decode()}"
    hp = c["heads_proof"]
    assert [H(x) for x in hp["proof"]] == path(hp["position"], leaves) and order[hp["position"]] == hp["chain"]
    assert doc_inclusion_ok(hashlib.sha256(b"\x00" + leaves[hp["position"]]).digest(), hp["position"], len(leaves),
                            [H(x) for x in hp["proof"]], mth(leaves))
    body = (f"{c['origin']}\n{c['size']}\n{base64.b64encode(H(c['root'])).decode()}\n{c['heads_line']}\n").encode()
    assert body == c["body"].encode() == H(c["body_hex"]) == Checkpoint(c["origin"], c["size"], H(c["root"]),
                                                                          (c["heads_line"],)).body()
    assert base64.b64encode(H(c["root"])).decode() == c["root_base64"]
    assert H(c["note_key_id_input"]) == c["origin"].encode() + b"\n\x01" + H(k["public_key"])
    assert hashlib.sha256(H(c["note_key_id_input"])).digest()[:4].hex() == c["note_key_id"] == k["note_key_id"]
    assert priv.sign(body).hex() == c["signature"]
    line = "\u2014 " + c["origin"] + " " + base64.b64encode(H(c["note_key_id"]) + H(c["signature"])).decode() + "\n"
    assert line == c["signature_line"]
    note = body + b"\n" + line.encode()
    assert note == c["note"].encode() == H(c["note_hex"])
    assert sign_checkpoint(Checkpoint(c["origin"], c["size"], H(c["root"]), (c["heads_line"],)),
                           NoteSigner(c["origin"], priv)) == note
    cp = verify_checkpoint(note, NoteVerifier.from_vkey(c["vkey"]), c["origin"])
    assert (cp.origin, cp.size, cp.root.hex(), cp.extensions) == (c["origin"], c["size"], c["root"], (c["heads_line"],))
    assert c["vkey"] == k["vkey"]


def test_checkpoint_with_changed_root_is_refused():
    c = V["checkpoint"]
    note = c["note"].replace(c["root_base64"], base64.b64encode(bytes(32)).decode()).encode()
    with pytest.raises(ValueError):
        verify_checkpoint(note, NoteVerifier.from_vkey(c["vkey"]), c["origin"])


# --- the algorithms of FORMAT.md section 6 against the public RFC 9162 vectors -----------

RFC_VECTORS = ROOT / "tests" / "vectors" / "rfc9162"


def _doc_consistency(m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes) -> bool:
    if m == 0 or m > n:
        return False
    if m == n:
        return not proof and r1 == r2
    return doc_consistency_ok(m, n, proof, r1, r2)


@pytest.mark.parametrize("path", sorted(RFC_VECTORS.rglob("*.json")), ids=lambda p: str(p.relative_to(RFC_VECTORS)))
def test_format_md_proof_algorithms_on_public_vectors(path: Path):
    probe = json.loads(path.read_text())
    proof = [base64.b64decode(h) for h in probe["proof"] or []]
    if "leafIdx" in probe:
        ok = doc_inclusion_ok(base64.b64decode(probe["leafHash"]), probe["leafIdx"], probe["treeSize"], proof,
                              base64.b64decode(probe["root"]))
    else:
        ok = _doc_consistency(probe["size1"], probe["size2"], proof, base64.b64decode(probe["root1"]),
                              base64.b64decode(probe["root2"]))
    assert ok is not probe["wantErr"], probe["desc"]


# --- envelopes that must be refused, signatures that must fail ---------------------------

@pytest.mark.parametrize("r", V["refused_envelopes"], ids=lambda r: r["name"])
def test_refused_envelope(r):
    with pytest.raises(EntryError):
        SignedEntry.parse(H(r["envelope"]))


@pytest.mark.parametrize("r", V["bad_signatures"], ids=lambda r: r["name"])
def test_bad_signature(r):
    s = SignedEntry.parse(H(r["envelope"]))
    assert s.entry.key_id == KEYS["mine"]["key_id"]
    assert not s.signature_valid(H(KEYS["mine"]["public_key"]))
    pub = Ed25519PublicKey.from_public_bytes(H(KEYS["mine"]["public_key"]))
    with pytest.raises(Exception):
        pub.verify(s.signature, ENTRY_TAG + s.content)
