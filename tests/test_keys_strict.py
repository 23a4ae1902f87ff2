"""Keys a signature can stand on (ledger/keys.py ``usable_public_key``, FORMAT.md 4.1).

Under a public key of small order, RFC 8032's verification equation holds for signatures
nobody needs a private key to make: under the identity point, (R, S) = (identity, 0) "signs"
every message, and OpenSSL's verification (behind ``cryptography``) accepts it. Such a key
must never stand for a party: the registry refuses it (so the store, the command API and
``verify`` do), and so does a checkpoint verifier key. The check is written by hand (a few
lines of arithmetic); libsodium's own point check is its reference here."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, new_ledger
from reledger.ledger.checkpoint import NoteError, NoteVerifier
from reledger.ledger.genesis import key_authorized_body
from reledger.ledger.keys import SigningKey, key_id, usable_public_key
from reledger.ledger.registry import RegistryError, _key_authorized_body

nacl = pytest.importorskip("nacl.bindings", reason="PyNaCl (a test extra) is libsodium's reference point check")

P = 2**255 - 19
IDENTITY = bytes([1]) + bytes(31)
# the eight points of small order, in every encoding a lenient decoder might take: canonical,
# with the sign bit set, and y + p where that still fits (libsodium's blocklist and more)
SMALL_ORDER_Y = [1, P - 1, 0,
                 int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"),
                 int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")]


def encodings(y: int) -> list[bytes]:
    out = []
    for value in (y, y + P):
        if value < 2**255:
            out += [value.to_bytes(32, "little"), (value | 1 << 255).to_bytes(32, "little")]
    return out


SMALL_ORDER = [e for y in SMALL_ORDER_Y for e in encodings(y)]


def openssl_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


@pytest.mark.parametrize("msg", [b"", b"pay 1000 t to MINE01", b"reledger/v1/entry\nanything"])
def test_the_identity_key_signs_everything_under_openssl(msg):
    """Why the registry must refuse it: a forgery needs no private key."""
    assert openssl_accepts(IDENTITY, IDENTITY + bytes(32), msg)
    assert not usable_public_key(IDENTITY)


def test_no_encoding_of_a_small_order_point_is_usable():
    assert len(SMALL_ORDER) >= 14
    for enc in SMALL_ORDER:
        assert not usable_public_key(enc), enc.hex()
        assert not nacl.crypto_core_ed25519_is_valid_point(enc), enc.hex()  # (the reference agrees)


def test_keys_from_key_generation_are_usable():
    for _ in range(50):
        assert usable_public_key(SigningKey.generate("P").public_key)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_whatever_libsodium_calls_a_valid_point_is_usable(raw):
    """libsodium's check is stricter (it also wants the prime-order subgroup, which costs a
    scalar multiplication): every point it accepts is usable here, and nothing that is not a
    canonical point of the curve is usable here."""
    if nacl.crypto_core_ed25519_is_valid_point(raw):
        assert usable_public_key(raw)
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= P:
        assert not usable_public_key(raw)


@settings(max_examples=100, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), sign=st.booleans())
def test_on_curve_and_off_curve_points_are_told_apart(seed, sign):
    """Near a generated key's y, about half the values are the y of a curve point: usable
    exactly when libsodium's decoder takes the encoding (and refuses "-0")."""
    pub = SigningKey.from_seed("P", seed).public_key
    assert usable_public_key(pub)
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    for delta in range(1, 9):
        cand = (((y + delta) % P) | (sign << 255)).to_bytes(32, "little")
        assert usable_public_key(cand) == _decodes(cand), cand.hex()


def _decodes(enc: bytes) -> bool:
    """libsodium's point addition refuses an encoding that is not a curve point."""
    try:
        nacl.crypto_core_ed25519_add(enc, SigningKey.generate("P").public_key)
        return True
    except Exception:  # noqa: BLE001 - libsodium says no
        return False


def test_the_registry_refuses_a_small_order_key():
    good = SigningKey.generate("MINE01")
    for enc in (IDENTITY, SMALL_ORDER[-1], b"\xff" * 32):
        body = key_authorized_body(good, T0)
        body.update(public_key=enc, key_id=key_id(enc))
        with pytest.raises(RegistryError) as err:
            _key_authorized_body(body)
        assert err.value.field == "body.public_key" and "small order" in str(err.value)
    assert _key_authorized_body(key_authorized_body(good, T0))["public_key"] == good.public_key


def test_a_small_order_key_never_enters_a_ledger(db_url):
    """End to end: the regulator's signed KeyAuthorized for the identity point is refused by
    the store with its reason, nothing is written."""
    from reledger.storage.store import AppendError

    led = new_ledger(db_url)
    try:
        size = led.store.size()
        body = key_authorized_body(SigningKey.generate(led.regulator.key.party), T0)
        body.update(public_key=IDENTITY, key_id=key_id(IDENTITY))
        with pytest.raises(AppendError) as err:
            led.store.append([led.regulator.sign("KeyAuthorized", body, T0)])
        assert err.value.field == "body.public_key" and "small order" in err.value.message
        assert led.store.size() == size
    finally:
        led.close()


def test_a_checkpoint_verifier_key_of_small_order_is_refused():
    with pytest.raises(NoteError):
        NoteVerifier("log.example", Ed25519PublicKey.from_public_bytes(IDENTITY))
    ok = Ed25519PrivateKey.generate().public_key()
    assert NoteVerifier("log.example", ok).verify(b"text", bytes(64)) is False
