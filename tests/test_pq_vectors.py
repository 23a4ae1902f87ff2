"""docs/vectors/pq-v1 (FORMAT.md V.9, made by tests/vectors/make_pq_vectors.py): the committed
post-quantum, witnessed evidence verifies as expected.json says, the reproducible parts are what
the code computes, and a change to a byte of the cosigned note, the tlog-proof or the bundle is
refused by a verifier holding the pinned trust file: every byte class is flipped (every byte of
the short fields and structure, a deterministic sample of the long signatures, keys and hashes;
see "flips" below); tests/test_bundle.py flips every byte of a small bundle."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from reledger.ledger import encoding
from reledger.ledger.bundle import BundleError, decode_bundle, verify_bundle
from reledger.ledger.checkpoint import Checkpoint, NoteError, NoteVerifier, open_note
from reledger.ledger.cosignature import (CosignatureError, CosignatureVerifier, Policy, ed25519_message, mldsa_message,
                                         signature_lines)
from reledger.ledger.keys import SigningKey
from reledger.ledger.tlogproof import ProofFormatError, verify as verify_proof
from reledger.ledger.trust import Trust, TrustError

V = Path(__file__).resolve().parents[1] / "docs" / "vectors" / "pq-v1"
EXPECTED = json.loads((V / "expected.json").read_text())
TRUST = Trust.read(V / "trust.json")
POLICY = Policy.parse((V / "policy").read_bytes())
NOTE = (V / "cosigned.note").read_bytes()


def logs():
    from reledger.ledger import rules
    from reledger.ledger.registry import Registry

    return rules.checkpoint_verifiers(Registry(), 0, TRUST.vkeys)


def pinned_accepts_note(note: bytes) -> bool:
    try:
        TRUST.check_note(note)
        return True
    except (TrustError, NoteError, UnicodeDecodeError):
        return False


def test_the_reproducible_parts_are_what_the_code_computes():
    e = EXPECTED
    key = SigningKey.read(V / "log.key")
    assert key.seed.hex() == e["log"]["ed25519_seed"] and key.mldsa_seed.hex() == e["log"]["mldsa44_seed"]
    assert key.public_key.hex() == e["log"]["ed25519_public_key"]
    assert key.mldsa_public_key.hex() == e["log"]["mldsa44_public_key"]
    assert TRUST.log_vkey == e["log"]["vkey"] and TRUST.log_mldsa_vkey == e["log"]["mldsa44_vkey"]
    pq = CosignatureVerifier.from_vkey(e["log"]["mldsa44_vkey"])
    assert pq.key_id.hex() == e["log"]["mldsa44_key_id"] and pq.public_key.hex() == e["log"]["mldsa44_public_key"]
    assert NoteVerifier.from_vkey(e["log"]["vkey"]).key_id.hex() == e["log"]["ed25519_key_id"]
    text, lines = signature_lines(NOTE)
    cp = Checkpoint.parse(text)
    assert (cp.origin, cp.size, cp.root.hex()) == (e["origin"], e["size"], e["root"])
    assert [{"name": n, "key_id": k.hex(), "signature_bytes": len(s)} for n, k, s in lines] == e["signature_lines"]
    assert [x["signature_bytes"] for x in e["signature_lines"]] == [64, 2428, 72, 2428]
    assert mldsa_message(cp.origin, e["log"]["mldsa44_timestamp"], cp).hex() == e["log"]["mldsa44_signed_message"]
    w = e["witness"]
    assert ed25519_message(text, w["timestamp"]).hex() == w["ed25519_signed_message"]
    assert mldsa_message(w["name"], w["timestamp"], cp).hex() == w["mldsa44_signed_message"]
    assert base64.b64decode(e["note_base64"]) == NOTE


def test_the_vectors_verify_as_expected_json_says():
    checked = POLICY.check(NOTE)
    assert set(checked.cosigned_by) == {"log-pq", "w1-ed25519", "w1-mldsa44"}
    assert TRUST.check_note(NOTE).size == EXPECTED["size"]
    # an Ed25519-only signed-note verifier reads the note and ignores the three other lines
    assert open_note(NOTE, [NoteVerifier.from_vkey(EXPECTED["log"]["vkey"])])[0] == signature_lines(NOTE)[0]
    rep = verify_bundle((V / "mine.bundle").read_bytes(), trusted_checkpoint_keys=TRUST.vkeys,
                        trusted_genesis=TRUST.genesis)
    assert rep.ok and rep.complete and rep.entries == 7 and rep.size == EXPECTED["size"], rep.problems
    assert TRUST.check_note(decode_bundle((V / "mine.bundle").read_bytes())["checkpoint"])
    v = verify_proof((V / "entry.tlog-proof").read_bytes(), logs(), POLICY)
    assert v.index == 5 and v.entry.entry.seq == 1 and v.checkpoint.root.hex() == EXPECTED["root"]


def test_the_note_without_the_log_ml_dsa_line_is_refused():
    text, lines = signature_lines(NOTE)
    blocks = NOTE[len(text) + 1:].decode().splitlines(keepends=True)
    stripped = text + b"\n" + "".join(blocks[:1] + blocks[2:]).encode()
    with pytest.raises(TrustError, match="no ML-DSA-44 signature of the pinned log key"):
        TRUST.check_note(stripped)
    with pytest.raises(CosignatureError, match="log-pq"):
        POLICY.check(stripped)
    with pytest.raises(ProofFormatError, match="ML-DSA-44"):
        proof = (V / "entry.tlog-proof").read_bytes()
        verify_proof(proof.replace(NOTE, stripped), logs())
    # a repeated line: refused by reledger's checkpoint rule (5.2)
    from reledger.ledger import rules

    with pytest.raises(rules.Invalid, match="two signature lines"):
        rules.checkpoint(NOTE + blocks[1].encode(), logs())


# --- flips: every byte class, the long signature and key bytes sampled ---------------------------
# A flip costs a verification with ML-DSA-44 (a few ms): flipping all of the ~25,000 bytes took
# about 35 s of CI. Each test below flips every byte of every short field and structure (the
# checkpoint text, signature line names and framing, msgpack headers and keys, indexes, times,
# party ids, short body fields) and, of each long opaque field (a signature, a key, a hash, a
# long text), its first and last bytes and a seeded sample of the bytes between: every class of
# byte is flipped, the same bytes at every run. Every flip must be refused.

LONG_BIN, LONG_TEXT = 16, 64  # a binary (a hash, a signature, a key) or text longer than this is sampled


def sampled(start: int, stop: int, rng, head: int = 6, tail: int = 4, middle: int = 6) -> list[int]:
    """Positions of a long field ``[start, stop)``: its first ``head`` and last ``tail`` bytes
    (where a key id, a timestamp, a length or padding sits) and ``middle`` seeded ones between."""
    if stop - start <= head + tail + middle:
        return list(range(start, stop))
    return [*range(start, start + head), *sorted(rng.sample(range(start + head, stop - tail), middle)),
            *range(stop - tail, stop)]


def note_positions(note: bytes, seed: int = 1) -> list[int]:
    """Every byte of the note's checkpoint text and blank line, every byte of each signature
    line but its base64 signature (the em dash, the name, the space, the newline), and of each
    signature its first 24 base64 characters (the key hash and the cosignature's timestamp), its
    last 8 (the end, the padding) and 32 seeded ones between."""
    rng = random.Random(seed)
    text_end = note.index(b"\n\n") + 2
    out = list(range(text_end))
    at = text_end
    for line in note[text_end:].splitlines(keepends=True):
        sig = at + line.rindex(b" ") + 1
        end = at + len(line.rstrip(b"\n"))
        out += range(at, sig)
        out += sampled(sig, end, rng, head=24, tail=8, middle=32)
        out += range(end, at + len(line))
        at += len(line)
    assert at == len(note)
    return out


def msgpack_positions(data: bytes, seed: int = 1, keep_every: dict[bytes, int] | None = None) -> list[int]:
    """Positions in canonical msgpack ``data``: every header byte (types, lengths, map and array
    sizes), every byte of integers and of strings and binaries up to LONG bytes; a binary that
    is msgpack itself (an entry's envelope and its content) likewise, recursively; a longer
    string or binary (LONG_TEXT, LONG_BIN) :func:`sampled`; in an array's items after its first
    (more of the same classes: entries, proof hashes), every header byte (types and lengths) and
    one seeded byte of each string and binary (and every n-th byte too of the values
    in ``keep_every``)."""
    rng = random.Random(seed)
    out: list[int] = []

    def length(i: int, n: int) -> int:
        return int.from_bytes(data[i:i + n], "big")

    def payload(i: int, size: int, binary: bool, light: bool) -> None:
        if binary and size > 1:
            before = len(out)
            try:
                if one(i, i + size, light) == i + size:
                    return
            except (IndexError, ValueError):
                pass
            del out[before:]
        if light:  # a value in the place of one of the first item's: one seeded byte of it
            out.extend(sampled(i, i + size, rng, head=0, tail=0, middle=1))
        elif size <= (LONG_BIN if binary else LONG_TEXT):
            out.extend(range(i, i + size))
            return
        else:
            out.extend(sampled(i, i + size, rng))
        every = (keep_every or {}).get(data[i:i + size])
        if every:
            out.extend(range(i, i + size, every))

    def one(i: int, stop: int, light: bool = False) -> int:
        if i >= stop:
            raise IndexError(i)
        b = data[i]
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            out.append(i)
            return i + 1
        if 0x80 <= b <= 0x9F:  # fixmap, fixarray
            return items(i, 1, (b & 0x0F), b <= 0x8F, stop, light)
        if 0xA0 <= b <= 0xBF:  # fixstr
            out.append(i)
            payload(i + 1, b & 0x1F, False, light)
            return i + 1 + (b & 0x1F)
        if b in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):  # bin, str
            w = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
            size = length(i + 1, w)
            out.extend(range(i, i + 1 + w))
            if i + 1 + w + size > stop:
                raise IndexError(i)
            payload(i + 1 + w, size, b <= 0xC6, light)
            return i + 1 + w + size
        if b in (0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3):  # integers
            w = 1 << ((b - 0xCC) % 4)
            out.extend(range(i, i + 1 + w))
            return i + 1 + w
        if b in (0xDC, 0xDD, 0xDE, 0xDF):  # array16/32, map16/32
            w = 2 if b in (0xDC, 0xDE) else 4
            return items(i, 1 + w, length(i + 1, w), b >= 0xDE, stop, light)
        raise ValueError(f"not canonical msgpack at {i}: {b:#x}")

    def items(i: int, head: int, n: int, is_map: bool, stop: int, light: bool) -> int:
        """A map's or an array's header and items: an array's items after its first are of the
        classes the first showed (entries, proof hashes): each is walked ``light``."""
        out.extend(range(i, i + head))
        i += head
        for k in range(n * 2 if is_map else n):
            i = one(i, stop, light or (not is_map and k > 0))
        return i

    assert one(0, len(data)) == len(data)
    return sorted(set(out))


def test_the_flip_positions_cover_every_byte_class():
    """What the flip tests below flip: all of the short fields and structure, and of every long
    field its edges and a sample; the same positions at every run."""
    pos = note_positions(NOTE)
    assert pos == note_positions(NOTE) and len(set(pos)) == len(pos)
    text_end = NOTE.index(b"\n\n") + 2
    assert set(range(text_end)) <= set(pos)
    lines = NOTE[text_end:].splitlines(keepends=True)
    assert len(lines) >= 4 and all(line.startswith("— ".encode()) for line in lines)
    at = text_end
    for line in lines:  # each line's name and framing entirely, its signature sampled
        sig = at + line.rindex(b" ") + 1
        assert set(range(at, sig)) | {at + len(line) - 1} <= set(pos)
        assert len(set(range(sig, at + len(line) - 1)) & set(pos)) >= min(64, len(line) - (sig - at) - 1)
        at += len(line)
    data = (V / "mine.bundle").read_bytes()
    bpos = bundle_positions(data)
    assert bpos == bundle_positions(data)
    d = decode_bundle(data)
    # the first entry's time entirely, its signature's and proof hash's edges; of every later
    # entry, a byte of each
    for k, e in enumerate(d["entries"]):
        env = encoding.decode(e["envelope"])
        for value, whole in ((e["recorded_at"].encode(), True), (env["sig"], False), (e["proof"][0], False)):
            at = data.find(value)
            assert at > 0
            span = set(range(at, at + len(value)))
            if k == 0:
                assert (span <= set(bpos)) if whole else ({at, at + len(value) - 1} <= set(bpos)), value
            else:
                assert span & set(bpos), (k, value)
    assert len(bpos) < len(data) // 2  # sampled, not every byte


def bundle_positions(data: bytes) -> list[int]:
    """The bundle's positions (:func:`msgpack_positions`; of its copy of the note, every 97th
    byte too: the note's own test covers it byte class by byte class)."""
    return msgpack_positions(data, keep_every={decode_bundle(data)["checkpoint"]: 97})


def test_every_byte_class_of_the_cosigned_note_is_covered():
    for i in note_positions(NOTE):
        bad = bytearray(NOTE)
        bad[i] ^= 0x01
        assert not pinned_accepts_note(bytes(bad)), i


def positions(data: bytes):
    """Every byte of ``data`` but those of its copy of the note (which the test above covers
    byte by byte), of which every 97th."""
    at = data.find(NOTE)
    assert at >= 0
    return [i for i in range(len(data)) if not at <= i < at + len(NOTE) or (i - at) % 97 == 0]


def test_every_byte_of_the_tlog_proof_is_covered():
    proof = (V / "entry.tlog-proof").read_bytes()
    ls = logs()
    for i in positions(proof):
        bad = bytearray(proof)
        bad[i] ^= 0x01
        with pytest.raises((ProofFormatError, NoteError, UnicodeDecodeError)):
            v = verify_proof(bytes(bad), ls, POLICY)
            # (the envelope is in the extra line: its signature is the bundle's to check)
            if v.entry.hash != verify_proof(proof, ls, POLICY).entry.hash:
                raise ProofFormatError("another entry")


def test_every_byte_class_of_the_bundle_is_covered():
    data = (V / "mine.bundle").read_bytes()
    for i in bundle_positions(data):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            rep = verify_bundle(bytes(bad), trusted_checkpoint_keys=TRUST.vkeys, trusted_genesis=TRUST.genesis)
        except BundleError:
            continue
        assert not rep.ok or not pinned_accepts_note(decode_bundle(bytes(bad))["checkpoint"]), i


def test_each_bundle_entry_is_a_tlog_proof_that_verifies():
    from reledger.ledger.bundle import tlog_proofs

    data = (V / "mine.bundle").read_bytes()
    proofs = tlog_proofs(data)
    assert [i for i, _ in proofs] == [e["index"] for e in decode_bundle(data)["entries"]] == list(range(7))
    for index, proof in proofs:
        v = verify_proof(proof, logs(), POLICY)
        assert v.index == index and v.checkpoint.size == EXPECTED["size"]
    assert dict(proofs)[5] == (V / "entry.tlog-proof").read_bytes()  # the same bytes as `prove --tlog-proof`


def test_a_policy_not_met_names_the_missing_witnesses():
    from dataclasses import replace

    from reledger.ledger.cosignature import COSIG_ED25519, CosignatureSigner

    w9 = CosignatureSigner("w9.example", COSIG_ED25519, bytes([9]) * 32).verifier().vkey()
    policy = TRUST.policy.replace("group required all log-pq w1\n",
                                  f"witness w9 {w9}\ngroup required all log-pq w1 w9\n")
    with pytest.raises(TrustError, match="cosigned by log-pq, w1-ed25519, w1-mldsa44; no valid cosignature from w9"):
        replace(TRUST, policy=policy).check_note(NOTE)
