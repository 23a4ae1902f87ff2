"""The chain heads a checkpoint commits to (ledger/heads.py, docs/FORMAT.md 5.3): the tree
against a naive RFC 9162 MTH over the leaves in chain order, proofs for every chain, and
refusals of every altered part; the extension line, strictly."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reledger.ledger import encoding, heads
from test_merkle import ref_mth, ref_path

chain_ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=2, max_size=12)
head = st.tuples(st.integers(1, 2**40), st.binary(min_size=32, max_size=32))
heads_maps = st.dictionaries(chain_ids, head, max_size=40)


def naive(h: dict) -> tuple[int, bytes, list[bytes]]:
    """Leaves written out by hand from FORMAT.md: msgpack array of text, int, bin8 (32)."""
    def leaf(chain: str, seq: int, entry_hash: bytes) -> bytes:
        return encoding.canonical([chain, seq, entry_hash])

    leaves = [leaf(c, *h[c]) for c in sorted(h, key=lambda c: c.encode())]
    return len(leaves), ref_mth(leaves), leaves


@given(heads_maps)
def test_commitment_equals_the_naive_tree(h):
    count, root, leaves = naive(h)
    assert heads.commitment(h) == (count, root)
    assert heads.of_extensions(["other line", heads.line(h)]) == (count, root)
    for position, chain in enumerate(sorted(h)):
        p, n, path = heads.proof(h, chain)
        assert (p, n) == (position, count)
        assert path == ref_path(position, leaves)
        heads.verify(chain, *h[chain], p, n, path, (count, root))


@given(heads_maps.filter(lambda h: len(h) >= 2), st.data())
def test_every_altered_part_is_refused(h, data):
    chain = data.draw(st.sampled_from(sorted(h)))
    seq, entry_hash = h[chain]
    expected = heads.commitment(h)
    p, n, path = heads.proof(h, chain)
    other = data.draw(st.sampled_from([c for c in sorted(h) if c != chain]))
    bad = [
        (chain, seq - 1 if seq > 1 else seq + 1, entry_hash, p, n, path),  # an earlier head (a dropped tail)
        (chain, seq, hashlib.sha256(entry_hash).digest(), p, n, path),
        (other, seq, entry_hash, p, n, path),  # another chain's name on this head
        (chain, seq, entry_hash, (p + 1) % n, n, path),
        (chain, seq, entry_hash, p, n + 1, path),
        (chain, seq, entry_hash, p, n, path[:-1] if path else [bytes(32)]),
    ]
    if path:
        bad.append((chain, seq, entry_hash, p, n, [bytes(32)] + path[1:]))
    for args in bad:
        with pytest.raises(heads.HeadsError):
            heads.verify(*args, expected)
    with pytest.raises(heads.HeadsError):
        heads.verify(chain, seq, entry_hash, p, n, path, (n, hashlib.sha256(expected[1]).digest()))


def test_no_chain_and_absent_chain():
    assert heads.commitment({}) == (0, hashlib.sha256(b"").digest())
    assert heads.line({}) == "reledger-heads-v1 0 " + base64.b64encode(hashlib.sha256(b"").digest()).decode()
    with pytest.raises(heads.HeadsError, match="has no head"):
        heads.proof({"AA": (1, bytes(32))}, "BB")


def test_the_extension_line_is_strict():
    good = heads.line({"AA": (3, bytes(range(32)))})
    assert heads.of_extensions([]) is None
    assert heads.of_extensions(["reledger-heads-v2 1 x", "something else"]) is None  # not ours: ignored
    root64 = good.split()[2]
    for line in ["reledger-heads-v1", "reledger-heads-v1 1", f"reledger-heads-v1 01 {root64}",
                 f"reledger-heads-v1 -1 {root64}", f"reledger-heads-v1 1 {root64[:-2]}=",
                 f"reledger-heads-v1 1  {root64}", f"reledger-heads-v1 1 {root64} x",
                 f"reledger-heads-v1 1 {root64[:-2]}B=", f"reledger-heads-v1 {2**64} {root64}"]:
        with pytest.raises(heads.HeadsError):
            heads.of_extensions([line])
    with pytest.raises(heads.HeadsError, match="more than one"):
        heads.of_extensions([good, good])
