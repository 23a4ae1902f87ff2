"""Ed25519 as the ledger checks it (ledger/keys.py ``ed25519_verify``, FORMAT.md 2.7): RFC 8032's
vectors verify, every honest signature verifies exactly where OpenSSL's verification says so,
and what OpenSSL lets through but a ledger must not is refused: a signature under a
small-order public key (the identity point "signs" every message with R = identity, S = 0), a
non-canonical S. Such keys are refused where they would enter: the registry, a checkpoint
verifier key."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, new_ledger
from ledger.checkpoint import NoteError, NoteVerifier
from ledger.entry import ENTRY_TAG
from ledger.genesis import key_authorized_body
from ledger.keys import SigningKey, ed25519_verify, key_id, usable_public_key, verify_signature
from ledger.registry import RegistryError

L = 2**252 + 27742317777372353535851937790883648493  # the order of the prime subgroup

# RFC 8032, 7.1, TEST 1-3: (public key, message, signature)
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]

IDENTITY = bytes([1]) + bytes(31)  # the neutral point: order 1
# other points of small order (2, 4, 8), in canonical encodings
SMALL_ORDER = [
    IDENTITY,
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes(32),
    bytes(31) + b"\x80",
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
]


def openssl_verify(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


@pytest.mark.parametrize("pub,msg,sig", RFC8032)
def test_rfc8032_vectors(pub, msg, sig):
    pub, msg, sig = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
    assert ed25519_verify(pub, sig, msg) and usable_public_key(pub)
    assert not ed25519_verify(pub, sig, msg + b"\x00")
    assert not ed25519_verify(pub, sig[:-1] + bytes([sig[-1] ^ 1]), msg)


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=200), flip=st.integers(0, 64 * 8 - 1))
def test_honest_and_corrupted_signatures_agree_with_openssl(seed, msg, flip):
    key = SigningKey.from_seed("P", seed)
    pub = key.public_key
    sig = key.private_key.sign(msg)
    assert usable_public_key(pub)
    assert ed25519_verify(pub, sig, msg) and openssl_verify(pub, sig, msg)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not ed25519_verify(pub, bytes(bad), msg)
    assert not openssl_verify(pub, bytes(bad), msg)
    assert verify_signature(pub, ENTRY_TAG, msg, key.sign(ENTRY_TAG, msg))


@pytest.mark.parametrize("msg", [b"", b"pay 1000 t to MINE01", ENTRY_TAG + b"anything"])
def test_the_identity_key_forgery_is_refused(msg):
    """(R, S) = (identity, 0) satisfies OpenSSL's check for every message under the identity
    public key; never the ledger's."""
    forged = IDENTITY + bytes(32)
    assert openssl_verify(IDENTITY, forged, msg)  # why the ledger does not use it to verify
    assert not ed25519_verify(IDENTITY, forged, msg)


def test_small_order_and_malformed_keys_are_not_usable():
    assert not any(usable_public_key(p) for p in SMALL_ORDER)
    assert not usable_public_key(b"\x01" * 31) and not usable_public_key(b"")
    assert usable_public_key(SigningKey.generate("P").public_key)


def test_a_non_canonical_s_is_refused():
    key = SigningKey.generate("P")
    msg = b"m"
    sig = key.private_key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")  # the same signature, S not reduced
    assert ed25519_verify(key.public_key, sig, msg)
    assert not ed25519_verify(key.public_key, malleated, msg)


def test_wrong_lengths_are_refused():
    key = SigningKey.generate("P")
    sig = key.private_key.sign(b"m")
    assert not ed25519_verify(key.public_key, sig[:63], b"m")
    assert not ed25519_verify(key.public_key[:31], sig, b"m")


def test_the_registry_refuses_a_small_order_key():
    """A KeyAuthorized naming the identity point is refused with its reason (a party holding
    it could otherwise disown every entry as a forgery)."""
    good = SigningKey.generate("MINE01")
    body = key_authorized_body(good, T0)
    body.update(public_key=IDENTITY, key_id=key_id(IDENTITY))
    from ledger.registry import _key_authorized_body

    with pytest.raises(RegistryError) as err:
        _key_authorized_body(body)
    assert err.value.field == "body.public_key" and "small order" in str(err.value)
    assert _key_authorized_body(key_authorized_body(good, T0))["public_key"] == good.public_key


def test_a_small_order_key_never_enters_a_ledger(sqlite_url):
    """End to end: the regulator's signed KeyAuthorized for the identity point is refused by
    the store, nothing is written."""
    from ledger.store import AppendError

    led = new_ledger(sqlite_url)
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
