"""Tests of ledger.checkpoint: C2SP signed-note and tlog-checkpoint.

Public vectors used:
- golang.org/x/mod/sumdb/note (note.go doc and note_test.go): the PeterNeumann signer and
  verifier keys and signed note, and the EnochRoot co-signature (EnochRoot's key is the
  Ed25519 key of the all-zero seed, as in the package's Example with a zero reader).
- c2sp.org/signed-note: the example.com/foo verifier key and note (later spec revisions,
  quoted by several independent implementations; it verifies, so it is genuine), and the
  quasimodo.example/salvatore note (key not published: only its shape is tested).
- c2sp.org/tlog-checkpoint: the example.com/behind-the-sofa checkpoint.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from reledger.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
PETER_NOTE = TEXT + b"\n" + PETER_SIG.encode()

FOO_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
FOO_NOTE = (
    b"This is an example message.\n\n"
    + "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n".encode()
)
QUASIMODO_TEXT = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n".encode()
QUASIMODO_NOTE = QUASIMODO_TEXT + (
    "\n\u2014 quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()
SOFA_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_NOTE = SOFA_BODY + (
    "\n\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()

PETER = NoteVerifier.from_vkey(PETER_VKEY)
ENOCH = NoteVerifier.from_vkey(ENOCH_VKEY)
ROOT = hashlib.sha256(b"a root").digest()
ORIGIN = "ledger.example/log"


def _signer(name: str, seed: int) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


LOG = _signer(ORIGIN, 7)


# --- Spec vectors. ---


def test_go_vectors_keys():
    signer = NoteSigner.from_skey(PETER_SKEY)
    assert signer.skey() == PETER_SKEY
    assert signer.verifier().vkey() == PETER_VKEY == PETER.vkey()
    assert signer.verifier() == PETER and PETER.name == "PeterNeumann"
    assert PETER.key_id == bytes.fromhex("c74f20a3") == signer.key_id
    enoch = _signer("EnochRoot", 0)
    assert enoch.verifier().vkey() == ENOCH_VKEY
    assert NoteSigner.from_skey(enoch.skey()).verifier() == ENOCH


def test_go_vector_sign_is_byte_exact():
    """Ed25519 is deterministic: signing the Go example reproduces it byte for byte."""
    assert sign_note(TEXT, [NoteSigner.from_skey(PETER_SKEY)]) == PETER_NOTE
    both = sign_note(TEXT, [NoteSigner.from_skey(PETER_SKEY), _signer("EnochRoot", 0)])
    assert both == TEXT + b"\n" + (PETER_SIG + ENOCH_SIG).encode()


def test_go_vector_open():
    note = TEXT + b"\n" + (PETER_SIG + ENOCH_SIG).encode()
    assert open_note(note, [PETER]) == (TEXT, [PETER])  # EnochRoot unknown: ignored
    assert open_note(note, [PETER, ENOCH]) == (TEXT, [PETER, ENOCH])
    assert open_note(note, [ENOCH]) == (TEXT, [ENOCH])
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(note, [])
    # Unused duplicated verifier is fine; a repeated identical signature too.
    assert open_note(PETER_NOTE, [ENOCH, PETER, ENOCH]) == (TEXT, [PETER])
    assert open_note(TEXT + b"\n" + (PETER_SIG * 2).encode(), [PETER]) == (TEXT, [PETER])
    # Too many signatures.
    with pytest.raises(NoteError, match="more than 100"):
        open_note(TEXT + b"\n" + (PETER_SIG * 101).encode(), [PETER])
    assert open_note(TEXT + b"\n" + (ENOCH_SIG * 15 + PETER_SIG).encode(), [PETER]) == (TEXT, [PETER])
    # Invalid signature from a known key (note_test.go inserts ABCD into the base64).
    mangled = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + b"\n" + mangled.encode(), [PETER])
    # ... while the same mangling of an unknown key's signature is ignored.
    mangled = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    assert open_note(TEXT + b"\n" + (PETER_SIG + mangled).encode(), [PETER]) == (TEXT, [PETER])


def test_go_vector_malformed_notes():
    """note_test.go's badMsgs, all 'malformed note'."""
    bad = [
        TEXT,
        TEXT + b"\n",
        TEXT + b"\n" + PETER_SIG[:-1].encode(),
        b"\x01" + TEXT + b"\n" + PETER_SIG.encode(),
        b"\xff" + TEXT + b"\n" + PETER_SIG.encode(),
        TEXT + b"\n" + PETER_SIG.replace("PeterNeumann", "Bad Name").encode(),
        TEXT + b"\n" + PETER_SIG.encode() + b"Unexpected line.\n",
    ]
    for note in bad:
        with pytest.raises(NoteError):
            open_note(note, [PETER])


def test_c2sp_signed_note_example():
    foo = NoteVerifier.from_vkey(FOO_VKEY)
    assert foo.name == "example.com/foo" and foo.key_id.hex() == "530d903a"
    assert foo.vkey() == FOO_VKEY
    assert open_note(FOO_NOTE, [foo]) == (b"This is an example message.\n", [foo])
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(FOO_NOTE.replace(b"example message", b"example massage"), [foo])


def test_c2sp_quasimodo_example():
    """The text holds an empty line: the signatures start after the LAST blank line."""
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(QUASIMODO_NOTE, [PETER])
    # A key of the same name but another key ID is an unknown key: ignored.
    impostor = _signer("quasimodo.example/salvatore", 1)
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(QUASIMODO_NOTE, [impostor.verifier()])
    ours = sign_note(QUASIMODO_TEXT, [impostor])
    assert open_note(ours, [impostor.verifier()]) == (QUASIMODO_TEXT, [impostor.verifier()])
    # Our signature next to the original one: the unknown one is ignored.
    both = ours + QUASIMODO_NOTE[len(QUASIMODO_TEXT) + 1 :]
    assert open_note(both, [impostor.verifier()])[0] == QUASIMODO_TEXT


def test_c2sp_checkpoint_example():
    cp = Checkpoint.parse(SOFA_BODY)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == () and cp.body() == SOFA_BODY
    # Its key is not published: the note parses but no known key signed it.
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_checkpoint(SOFA_NOTE, _signer("example.com/behind-the-sofa", 3).verifier())


# --- Keys. ---


def _manglings(key: str):
    """note_test.go: every proper substring, and every single byte incremented."""
    b = key.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                yield b[i:j].decode()
    for i in range(len(b)):
        yield (b[:i] + bytes([b[i] + 1]) + b[i + 1 :]).decode()


def test_vkey_manglings_refused():
    for bad in _manglings(PETER_VKEY):
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(bad)
    more = [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # 36-byte key
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # algorithm 0x65
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),  # key IDs are written in lowercase
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_VKEY + "\n",
        " " + PETER_VKEY,
        b"PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        None,
    ]
    for bad in more:
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(bad)


def test_skey_manglings_refused():
    for bad in _manglings(PETER_SKEY):
        with pytest.raises(NoteError):
            NoteSigner.from_skey(bad)
    with pytest.raises(NoteError):  # the key ID of another key
        NoteSigner.from_skey(PETER_SKEY.replace("c74f20a3", "af0cfe78"))
    with pytest.raises(NoteError):  # a verifier key is not a signer key
        NoteSigner.from_skey(PETER_VKEY)


def test_key_names():
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    for bad in ["", "a b", "a+b", "a\u00a0b", "a\u2003b", "a\tb", "a\nb", "a\u3000b", "a\u2028b", None, b"ab"]:
        with pytest.raises(NoteError):
            NoteSigner(bad, key)
        with pytest.raises(NoteError):
            NoteVerifier(bad, key.public_key())
    assert NoteSigner("élan.example/ключ", key).verifier().vkey().startswith("élan.example/ключ+")
    with pytest.raises(NoteError):
        NoteVerifier("x", key)  # a private key is not a public key
    with pytest.raises(NoteError):
        NoteSigner("x", key.public_key())


def test_key_id_formula():
    signer = _signer("example.com/log", 9)
    raw = signer.verifier().vkey().split("+")[2]
    pub = base64.b64decode(raw)[1:]
    want = hashlib.sha256(b"example.com/log\n\x01" + pub).digest()[:4]
    assert signer.key_id == want == key_id("example.com/log", pub)


# --- Signing and opening notes. ---


def test_sign_note_refusals():
    for bad in [b"", b"no newline", b"bad\xffutf8\n", b"tab\there\n", b"cr\r\n", "str\n", None]:
        with pytest.raises(NoteError):
            sign_note(bad, [LOG])
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note(b"text\n", [])


def test_open_note_refusals():
    good = sign_note(b"hello\n", [LOG])
    v = LOG.verifier()
    assert open_note(good, [v]) == (b"hello\n", [v])
    sig_line = good.split(b"\n\n")[1]
    b64 = sig_line.split(b" ")[-1].rstrip(b"\n")
    bad_notes = [
        good[:-1],  # no final newline
        good + b"\n",  # a blank line after the signatures
        good.replace(b"\n\n", b"\n"),  # no blank line
        good.replace("\u2014".encode(), b"-"),  # hyphen, not em dash
        good.replace("\u2014 ".encode(), "\u2014".encode()),  # no space after the dash
        good.replace(b" " + b64, b"  " + b64),  # two spaces
        good.replace(b64, b64 + b" "),  # trailing space
        good.replace(b64, b""),  # no signature
        good.replace(b64, b64.rstrip(b"=")),  # unpadded base64
        good.replace(b64, b64[:-2] + b"-_"),  # URL-safe alphabet
        good.replace(b64, base64.b64encode(base64.b64decode(b64)[:4])),  # key ID only
        good.replace(b"\n", b"\r\n"),
        b"hello\n\n" + sig_line.replace(LOG.name.encode(), b"a+b"),  # '+' in the key name
        b"hello\x00\n\n" + sig_line,
        b"hello\x1b[0m\n\n" + sig_line,
        b"hello\n\n" + sig_line + b"\xff",
        good.decode(),  # str, not bytes
        None,
    ]
    for note in bad_notes:
        with pytest.raises(NoteError):
            open_note(note, [v])


def test_a_reledger_checkpoint_has_one_signature_line_per_key():
    """open_note accepts a repeated line as Go's note.Open does (test_go_vector_open); the
    checkpoint rule of ledger/rules.py refuses it (FORMAT.md 5.2), and ignores a single line
    of an unknown key (a witness's cosignature)."""
    from reledger.ledger import rules

    cp = Checkpoint(ORIGIN, 3, ROOT)
    other = _signer("witness.example/w", 9)
    good = sign_checkpoint(cp, LOG)
    line = good.split(b"\n\n")[1]
    assert rules.checkpoint(good, [LOG.verifier()]) == cp
    with pytest.raises(rules.Invalid, match="two signature lines of key"):
        rules.checkpoint(good + line, [LOG.verifier()])
    cosigned = sign_note(cp.body(), [LOG, other])
    assert rules.checkpoint(cosigned, [LOG.verifier()]) == cp
    with pytest.raises(rules.Invalid, match="two signature lines of key witness.example/w"):
        rules.checkpoint(cosigned + cosigned.split(b"\n\n")[1].split(b"\n")[1] + b"\n", [LOG.verifier()])


def _respell(b64: str) -> str:
    """The same bytes in non-canonical base64: set an unused low bit of the last character."""
    data = b64.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(data[-1]) ^ 1]
    respelled = data[:-1] + last + "=" * (len(b64) - len(data))
    assert respelled != b64 and base64.b64decode(respelled) == base64.b64decode(b64)
    return respelled


def test_short_signature_refused_even_from_unknown_key():
    """A signature line must hold a key ID and at least one byte of signature."""
    good = sign_note(b"hello\n", [LOG])
    for raw in (b"", b"\x01\x02\x03", b"\x01\x02\x03\x04"):
        line = "\u2014 someone.example/w " + base64.b64encode(raw).decode() + "\n"
        with pytest.raises(NoteError, match="too short|malformed"):
            open_note(good + line.encode(), [LOG.verifier()])
    line = "\u2014 someone.example/w " + base64.b64encode(b"\x01\x02\x03\x04\x05").decode() + "\n"
    assert open_note(good + line.encode(), [LOG.verifier()])[0] == b"hello\n"


def test_non_canonical_base64_refused():
    good = sign_note(b"hello\n", [LOG])
    b64 = good.split(b" ")[-1].rstrip(b"\n").decode()
    assert b64.endswith("=") and not b64.endswith("==")  # 68 bytes: 2 unused bits at the end
    with pytest.raises(NoteError, match="canonical"):
        open_note(good.replace(b64.encode(), _respell(b64).encode()), [LOG.verifier()])


def test_wrong_key_and_tampering():
    note = sign_note(b"pay 10 to alice\n", [LOG])
    other = _signer(ORIGIN, 8)  # same name, other key: another key ID, so unknown
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(note, [other.verifier()])
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(note.replace(b"10", b"90"), [LOG.verifier()])
    # A signature relabelled with another known key's ID must fail, not be skipped.
    sig = base64.b64decode(note.split(b" ")[-1])
    relabelled = base64.b64encode(other.key_id + sig[4:])
    forged = note.split("\u2014".encode())[0] + f"\u2014 {ORIGIN} ".encode() + relabelled + b"\n"
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(forged, [other.verifier(), LOG.verifier()])
    # Each bit of the signature matters.
    for i in range(4, 68):
        flipped = bytearray(sig)
        flipped[i] ^= 0x10
        tampered = note.replace(base64.b64encode(sig), base64.b64encode(bytes(flipped)))
        with pytest.raises(NoteError, match="invalid signature"):
            open_note(tampered, [LOG.verifier()])


def test_ambiguous_verifiers_refused():
    a, b = LOG.verifier(), _signer(ORIGIN, 8).verifier()
    b.key_id = a.key_id  # simulate a key ID collision between two keys of one name
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(sign_note(b"x\n", [LOG]), [a, b])


def test_text_may_look_like_signatures():
    """Only the part after the last blank line is the signature block."""
    text = b"line\n\n" + PETER_SIG.encode()
    note = sign_note(text, [LOG])
    assert open_note(note, [LOG.verifier(), PETER]) == (text, [LOG.verifier()])


# --- Checkpoints. ---

origins = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), min_size=1, max_size=40)
checkpoints = st.builds(
    Checkpoint,
    origin=origins,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(origins, max_size=3).map(tuple),
)


@given(checkpoints)
def test_checkpoint_round_trip(cp: Checkpoint):
    body = cp.body()
    assert Checkpoint.parse(body) == cp
    assert body.endswith(b"\n") and body.count(b"\n") == 3 + len(cp.extensions)
    assert Checkpoint.parse(body).body() == body


@given(checkpoints)
def test_signed_checkpoint_round_trip(cp: Checkpoint):
    note = sign_checkpoint(cp, LOG)
    assert verify_checkpoint(note, LOG.verifier()) == cp
    assert verify_checkpoint(note, LOG.verifier(), origin=cp.origin) == cp


def test_checkpoint_body_format():
    cp = Checkpoint(ORIGIN, 0, bytes(32))
    assert cp.body() == b"ledger.example/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    cp = Checkpoint(ORIGIN, 12, ROOT, ("ext one", "ext two"))
    assert cp.body().split(b"\n")[3:] == [b"ext one", b"ext two", b""]
    assert Checkpoint(ORIGIN, 1, ROOT, ["a"]).extensions == ("a",)


def _body(origin="log", size="5", root=None, *ext) -> bytes:
    root = base64.b64encode(ROOT).decode() if root is None else root
    return ("\n".join([origin, size, root, *ext]) + "\n").encode()


def test_checkpoint_parse_refusals():
    b64 = base64.b64encode(ROOT).decode()
    assert Checkpoint.parse(_body()) == Checkpoint("log", 5, ROOT)
    assert Checkpoint.parse(_body("log", "0")).size == 0
    assert Checkpoint.parse(_body("log", str(2**64 - 1))).size == 2**64 - 1
    bad = [
        b"",
        b"\n",
        _body()[:-1],  # no final newline
        _body() + b"\n",  # empty extension line at the end
        _body("log", "5", None, "", "ext"),  # empty extension line
        _body("log", "5", None, "ext") + b"\n",
        _body("")[:],  # empty origin
        b"log\n5\n",  # two lines
        b"log\n5\n" + b64.encode(),  # root without newline
        _body("log", "05"),  # leading zero
        _body("log", "00"),
        _body("log", "+5"),
        _body("log", "-5"),
        _body("log", " 5"),
        _body("log", "5 "),
        _body("log", "5.0"),
        _body("log", "0x5"),
        _body("log", "1_000"),
        _body("log", "\u0665"),  # ARABIC-INDIC DIGIT FIVE
        _body("log", "\uff15"),  # FULLWIDTH DIGIT FIVE
        _body("log", ""),
        _body("log", "bananas"),
        _body("log", str(2**64)),
        _body("log", "3438945738945739845734895735"),
        _body("log", "9" * 5000),
        _body("log", "5", ""),  # empty root
        _body("log", "5", base64.b64encode(ROOT[:31]).decode()),
        _body("log", "5", base64.b64encode(ROOT + b"\0").decode()),
        _body("log", "5", base64.b64encode(b"bananas").decode()),
        _body("log", "5", b64.rstrip("=")),  # unpadded
        _body("log", "5", b64 + "="),
        _body("log", "5", " " + b64),
        _body("log", "5", "-" + b64[1:]),  # URL-safe alphabet
        _body("log", "5", "_" + b64[1:]),
        _body("log", "5", "ThisIsn'tBase64"),
        _body("log", "5", _respell(b64)),  # same bytes, non-canonical spelling
        _body("log", "5", b64.encode().hex()),  # hex, not base64
        _body("log", "5", b64).replace(b"\n", b"\r\n"),
        _body("lo\tg"),
        _body("lo\x00g"),
        _body("log", "5", None, "ext\x7f\x1f"),
        b"\xff" + _body(),
        _body().replace(b"log", b"log\xed\xb3\xbf"),  # an encoded surrogate is not UTF-8
        _body().decode(),  # str, not bytes
        None,
    ]
    for body in bad:
        with pytest.raises(CheckpointError):
            Checkpoint.parse(body)


def test_checkpoint_constructor_refusals():
    for kwargs in [
        dict(origin="", size=1, root=ROOT),
        dict(origin="a\nb", size=1, root=ROOT),
        dict(origin="a\rb", size=1, root=ROOT),
        dict(origin="a\udcffb", size=1, root=ROOT),  # lone surrogate: not UTF-8
        dict(origin=b"log", size=1, root=ROOT),
        dict(origin="log", size=-1, root=ROOT),
        dict(origin="log", size=2**64, root=ROOT),
        dict(origin="log", size=True, root=ROOT),
        dict(origin="log", size=1.0, root=ROOT),
        dict(origin="log", size="1", root=ROOT),
        dict(origin="log", size=1, root=ROOT[:31]),
        dict(origin="log", size=1, root=ROOT.hex()),
        dict(origin="log", size=1, root=bytearray(ROOT)),
        dict(origin="log", size=1, root=ROOT, extensions=("",)),
        dict(origin="log", size=1, root=ROOT, extensions=("a\nb",)),
        dict(origin="log", size=1, root=ROOT, extensions=(b"x",)),
    ]:
        with pytest.raises(CheckpointError):
            Checkpoint(**kwargs)


def test_verify_checkpoint():
    cp = Checkpoint(ORIGIN, 42, ROOT)
    note = sign_checkpoint(cp, LOG)
    assert note == cp.body() + b"\n" + note[len(cp.body()) + 1 :]
    assert verify_checkpoint(note, LOG.verifier(), ORIGIN) == cp
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(note, LOG.verifier(), "other.example/log")
    with pytest.raises(NoteError):
        verify_checkpoint(note, _signer(ORIGIN, 8).verifier())
    tampered = note.replace(b"\n42\n", b"\n43\n")
    with pytest.raises(NoteError, match="invalid signature"):
        verify_checkpoint(tampered, LOG.verifier())
    # A well-signed note whose text is not a checkpoint.
    with pytest.raises(CheckpointError):
        verify_checkpoint(sign_note(b"hello\n", [LOG]), LOG.verifier())
    with pytest.raises(CheckpointError):
        verify_checkpoint(sign_note(cp.body() + b"\n", [LOG]), LOG.verifier())
    # Cosigned by a witness: the log's verifier alone is enough, the witness is ignored.
    witness = _signer("witness.example/w1", 11)
    cosigned = sign_note(cp.body(), [LOG, witness])
    assert verify_checkpoint(cosigned, LOG.verifier(), ORIGIN) == cp
    assert open_note(cosigned, [witness.verifier(), LOG.verifier()])[1] == [LOG.verifier(), witness.verifier()]
