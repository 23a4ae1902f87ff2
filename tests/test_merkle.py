"""Tests of ledger.merkle against public vectors and a naive RFC 9162 reference.

The reference below (MTH, PATH, PROOF/SUBPROOF and the two verification
algorithms) is written straight from RFC 9162 sections 2.1.1 to 2.1.4.2, with
hashlib only, so that it shares no code with the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reledger.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_proof,
    consistency_proof_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    range_nodes,
    range_root,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "rfc9162"
MAX = 300  # largest tree the properties build

# --- The reference: RFC 9162, section by section. ---


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """RFC 9162 2.1.1: the Merkle Tree Hash of the entries d."""
    n = len(d)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + d[0])
    k = _k(n)
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1: the inclusion proof PATH(m, D[n])."""
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1: SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.4.1: the consistency proof PROOF(m, D[n])."""
    return ref_subproof(m, d, True)


def ref_verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _sha(b"\x01" + p + r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = _sha(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def ref_verify_consistency(first: int, second: int, path: list[bytes], h1: bytes, h2: bytes) -> bool:
    """RFC 9162 2.1.4.2, step by step, for 0 < first < second."""
    if not path:
        return False
    if first & (first - 1) == 0:
        path = [h1] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _sha(b"\x01" + c + fr), _sha(b"\x01" + c + sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = _sha(b"\x01" + sr + c)
        fn, sn = fn >> 1, sn >> 1
    return fr == h1 and sr == h2 and sn == 0


# --- A log of MAX entries, built once with the code under test. ---

ENTRIES = [b"entry %d" % i for i in range(MAX)]
ROOTS = [ref_mth(ENTRIES[:n]) for n in range(MAX + 1)]  # reference roots of every size


def _build(n: int) -> tuple[Frontier, dict[tuple[int, int], bytes]]:
    """A frontier over ENTRIES[:n] and the store of every node its appends completed."""
    frontier, store = Frontier(), {}
    for data in ENTRIES[:n]:
        for level, index, h in frontier.append(leaf_hash(data)):
            assert (level, index) not in store
            store[(level, index)] = h
    return frontier, store


FULL_FRONTIER, STORE = _build(MAX)


def get_node(level: int, index: int) -> bytes:
    """The node getter of a store: only complete nodes exist, so others raise KeyError."""
    return STORE[(level, index)]


def _getter_for(size: int):
    """A getter that refuses any node not wholly inside a tree of `size` leaves."""

    def get(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"node ({level}, {index}) is outside size {size}"
        return STORE[(level, index)]

    return get


# --- Public vectors: transparency-dev/merkle testdata. ---


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _probes(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors found under {VECTORS}"
    return files


def test_vector_tree_is_complete():
    """Every probe directory is there, including additional/ and single-entry/."""
    assert len(_probes("inclusion")) + len(_probes("consistency")) == 196
    assert len(list((VECTORS / "inclusion" / "single-entry").glob("*.json"))) == 4
    assert len(list((VECTORS / "inclusion" / "additional").rglob("*.json"))) == 12
    assert len(list((VECTORS / "consistency" / "additional").glob("*.json"))) == 14
    assert (VECTORS / "LICENSE").is_file() and (VECTORS / "README.md").is_file()


@pytest.mark.parametrize("path", _probes("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vector(path: Path):
    probe = json.loads(path.read_text())
    args = (
        _b64(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        [_b64(h) for h in probe["proof"] or []],  # Go writes an empty proof as null
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _probes("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vector(path: Path):
    probe = json.loads(path.read_text())
    args = (
        probe["size1"],
        probe["size2"],
        [_b64(h) for h in probe["proof"] or []],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- constants.go.txt: leaf inputs, every subtree hash, roots of sizes 0 to 8. ---

CONSTANTS = (VECTORS / "constants.go.txt").read_text()


def _go_func(name: str) -> str:
    match = re.search(r"^func %s\(\).*?^}$" % name, CONSTANTS, re.S | re.M)
    assert match, name
    return match.group(0)


def _hd(text: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in re.findall(r'hd\("([0-9a-f]*)"\)', text)]


LEAF_INPUTS = _hd(_go_func("LeafInputs"))
NODE_HASHES = [_hd(level) for level in _go_func("NodeHashes").split("}, {")]
ROOT_HASHES = [bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")]
ROOT_HASHES += _hd(_go_func("RootHashes"))
COMPACT_TREES = [
    [NODE_HASHES[int(lv)][int(ix)] for lv, ix in re.findall(r"nh\[(\d)\]\[(\d)\]", line)]
    for line in _go_func("CompactTrees").splitlines()
    if line.strip().startswith(("nil", "{nh"))
]


def test_constants_parsed():
    assert len(LEAF_INPUTS) == 8 and LEAF_INPUTS[0] == b"" and LEAF_INPUTS[3] == b"\x20\x21"
    assert [len(level) for level in NODE_HASHES] == [8, 4, 2, 1]
    assert len(ROOT_HASHES) == 9 and len(COMPACT_TREES) == 9
    assert _hd(_go_func("EmptyRootHash")) == [EMPTY_ROOT] == [ROOT_HASHES[0]]


def test_constants_hashes():
    frontier, store = Frontier(), {}
    assert frontier.root() == ROOT_HASHES[0] == ref_mth([])
    for size, data in enumerate(LEAF_INPUTS, start=1):
        for level, index, h in frontier.append(leaf_hash(data)):
            assert NODE_HASHES[level][index] == h
            store[(level, index)] = h
        assert frontier.root() == ROOT_HASHES[size] == ref_mth(LEAF_INPUTS[:size])
        assert frontier.hashes == COMPACT_TREES[size]
        assert range_root(0, size, lambda lv, ix: store[(lv, ix)]) == ROOT_HASHES[size]
    for level, hashes in enumerate(NODE_HASHES):
        for index, h in enumerate(hashes):
            assert ref_mth(LEAF_INPUTS[index << level : (index + 1) << level]) == h


# --- Reference-checked properties. ---

sizes = st.integers(min_value=0, max_value=MAX)


def test_frontier_every_size():
    """Root of every size 0..MAX, and every completed node, equal the reference."""
    frontier = Frontier()
    for n, data in enumerate(ENTRIES):
        assert frontier.root() == ROOTS[n]
        completed = frontier.append(leaf_hash(data))
        assert completed[0] == (0, n, leaf_hash(data))
        assert len(completed) == (n ^ (n + 1)).bit_length()  # 1 + the trailing 1-bits of n
        for level, index, h in completed:
            assert h == ref_mth(ENTRIES[index << level : (index + 1) << level])
    assert frontier.root() == ROOTS[MAX] == FULL_FRONTIER.root()


@given(sizes)
def test_frontier_rebuild(n: int):
    frontier, _ = _build(n)
    assert frontier.size == n and frontier.root() == ROOTS[n]
    rebuilt = Frontier.from_nodes(n, _getter_for(n))
    assert rebuilt == frontier and rebuilt.root() == ROOTS[n]
    assert range_root(0, n, _getter_for(n)) == ROOTS[n]
    # copies are independent
    copy = frontier.copy()
    if n < MAX:
        copy.append(leaf_hash(ENTRIES[n]))
        assert copy.root() == ROOTS[n + 1] and frontier.root() == ROOTS[n]


@given(st.data())
def test_range_root(data):
    end = data.draw(st.integers(1, MAX))
    length = data.draw(st.integers(1, end))
    begin = end - length
    width = 1 << (length - 1).bit_length()  # smallest power of two >= length
    if begin % width:
        with pytest.raises(ValueError):
            range_root(begin, end, get_node)
    else:
        assert range_root(begin, end, _getter_for(end)) == ref_mth(ENTRIES[begin:end])
        assert all((ix + 1) << lv <= end for lv, ix in range_nodes(begin, end))


@given(st.data())
def test_inclusion_proof_matches_reference(data):
    size = data.draw(st.integers(1, MAX))
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, _getter_for(size))
    assert proof == ref_path(index, ENTRIES[:size])
    assert len(inclusion_proof_nodes(index, size)) == len(proof)
    leaf = leaf_hash(ENTRIES[index])
    verify_inclusion(leaf, index, size, proof, ROOTS[size])
    assert root_from_inclusion_proof(leaf, index, size, proof) == ROOTS[size]
    assert ref_verify_inclusion(leaf, index, size, proof, ROOTS[size])


@given(st.data())
def test_consistency_proof_matches_reference(data):
    size2 = data.draw(st.integers(1, MAX))
    size1 = data.draw(st.integers(1, size2))
    proof = consistency_proof(size1, size2, _getter_for(size2))
    assert proof == ref_proof(size1, ENTRIES[:size2])
    assert len(consistency_proof_nodes(size1, size2)) == len(proof)
    verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])
    assert root_from_consistency_proof(size1, size2, proof, ROOTS[size1]) == ROOTS[size2]
    if size1 < size2:
        assert ref_verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])


def test_all_proofs_of_small_trees():
    """Exhaustively, for every tree up to 48 leaves: proofs equal and pass the reference."""
    for size in range(1, 49):
        get = _getter_for(size)
        for index in range(size):
            proof = inclusion_proof(index, size, get)
            assert proof == ref_path(index, ENTRIES[:size])
            verify_inclusion(leaf_hash(ENTRIES[index]), index, size, proof, ROOTS[size])
        for size1 in range(1, size + 1):
            proof = consistency_proof(size1, size, get)
            assert proof == ref_proof(size1, ENTRIES[:size])
            verify_consistency(size1, size, proof, ROOTS[size1], ROOTS[size])
            if size1 < size:
                assert ref_verify_consistency(size1, size, proof, ROOTS[size1], ROOTS[size])


def _accepts(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except ProofError:
        return False


def _mutate(data, proof: list[bytes]) -> list[bytes]:
    """A proof changed in one way: a flipped bit, an element dropped, added or swapped."""
    ops = ["add"] + (["flip", "drop", "dup"] if proof else []) + (["swap"] if len(proof) > 1 else [])
    op = data.draw(st.sampled_from(ops))
    proof = list(proof)
    if op == "flip":
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        h = bytearray(proof[i])
        h[bit // 8] ^= 1 << (bit % 8)
        proof[i] = bytes(h)
    elif op == "drop":
        del proof[data.draw(st.integers(0, len(proof) - 1))]
    elif op == "add":
        extra = data.draw(st.binary(min_size=32, max_size=32))
        proof.insert(data.draw(st.integers(0, len(proof))), extra)
    elif op == "dup":
        i = data.draw(st.integers(0, len(proof) - 1))
        proof.insert(i, proof[i])
    else:
        i = data.draw(st.integers(0, len(proof) - 2))
        proof[i], proof[i + 1] = proof[i + 1], proof[i]
    return proof


@given(st.data())
def test_altered_inclusion_proof_refused(data):
    size = data.draw(st.integers(1, MAX))
    index = data.draw(st.integers(0, size - 1))
    leaf = leaf_hash(ENTRIES[index])
    proof = ref_path(index, ENTRIES[:size])
    bad = _mutate(data, proof)
    assume(bad != proof)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, bad, ROOTS[size])
    # Another leaf, index or size, each with its true root: accepted only if this proof
    # is exactly the one that claim needs (proofs are unique, barring hash collisions).
    index2 = data.draw(st.integers(0, MAX + 5))
    size2 = data.draw(st.integers(0, MAX))
    if index2 < size2:
        leaf2 = leaf_hash(ENTRIES[index2])
        want = proof == ref_path(index2, ENTRIES[:size2])
        assert want == ((index2, size2) == (index, size))
        assert _accepts(verify_inclusion, leaf2, index2, size2, proof, ROOTS[size2]) == want
        assert _accepts(verify_inclusion, leaf2, index, size, proof, ROOTS[size]) == (index2 == index)
    else:
        assert not _accepts(verify_inclusion, leaf, index2, size2, proof, ROOTS[size2])
    # A stale root for a claimed size: same answer as RFC 9162's own algorithm.
    assert _accepts(verify_inclusion, leaf, index, size2, proof, ROOTS[size]) == ref_verify_inclusion(
        leaf, index, size2, proof, ROOTS[size]
    )
    # Wrong root, wrong leaf.
    assert not _accepts(verify_inclusion, leaf, index, size, proof, _sha(ROOTS[size]))
    assert not _accepts(verify_inclusion, _sha(leaf), index, size, proof, ROOTS[size])


@given(st.data())
def test_altered_consistency_proof_refused(data):
    size2 = data.draw(st.integers(1, MAX))
    size1 = data.draw(st.integers(1, size2))
    proof = ref_proof(size1, ENTRIES[:size2])
    root1, root2 = ROOTS[size1], ROOTS[size2]
    bad = _mutate(data, proof)
    assume(bad != proof)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, bad, root1, root2)
    # Other sizes with their true roots: accepted only for the claim this proof proves.
    m = data.draw(st.integers(0, MAX))
    n = data.draw(st.integers(0, MAX))
    want = 0 < m <= n and ref_proof(m, ENTRIES[:n]) == proof
    assert _accepts(verify_consistency, m, n, proof, ROOTS[m], ROOTS[n]) == want
    if want:
        assert (m, n) == (size1, size2) or (m == n and not proof)
    # Wrong or swapped roots.
    assert not _accepts(verify_consistency, size1, size2, proof, _sha(root1), root2)
    assert not _accepts(verify_consistency, size1, size2, proof, root1, _sha(root2))
    if size1 != size2:
        assert not _accepts(verify_consistency, size1, size2, proof, root2, root1)
        # A stale root for a claimed size: same answer as RFC 9162's own algorithm.
        assert _accepts(verify_consistency, size1, n, proof, root1, root2) == (
            size1 < n and ref_verify_consistency(size1, n, proof, root1, root2)
        )


# --- Argument checking: errors, never crashes. ---


def test_inclusion_bad_arguments():
    leaf, proof = leaf_hash(ENTRIES[5]), ref_path(5, ENTRIES[:10])
    verify_inclusion(leaf, 5, 10, proof, ROOTS[10])
    bad_calls = [
        (leaf, 10, 10, proof, ROOTS[10]),  # index == size
        (leaf, 11, 10, proof, ROOTS[10]),  # index > size
        (leaf, -1, 10, proof, ROOTS[10]),
        (leaf, 5, -10, proof, ROOTS[10]),
        (leaf, True, 10, proof, ROOTS[10]),  # bools are not sizes
        (leaf, 5.0, 10, proof, ROOTS[10]),
        (leaf, 0, 0, [], EMPTY_ROOT),  # nothing is in the empty tree
        (leaf[:31], 5, 10, proof, ROOTS[10]),
        (leaf + b"\0", 5, 10, proof, ROOTS[10]),
        (leaf.hex(), 5, 10, proof, ROOTS[10]),
        (leaf, 5, 10, proof[:-1] + [proof[-1][:31]], ROOTS[10]),
        (leaf, 5, 10, proof[:-1] + [proof[-1] + b"\0"], ROOTS[10]),
        (leaf, 5, 10, proof[:-1] + [None], ROOTS[10]),
        (leaf, 5, 10, b"".join(proof), ROOTS[10]),  # not a list
        (leaf, 5, 10, None, ROOTS[10]),
        (leaf, 5, 10, proof, ROOTS[10][:31]),
        (leaf, 5, 10, proof, None),
    ]
    for args in bad_calls:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


def test_consistency_bad_arguments():
    proof = ref_proof(3, ENTRIES[:7])
    verify_consistency(3, 7, proof, ROOTS[3], ROOTS[7])
    verify_consistency(7, 7, [], ROOTS[7], ROOTS[7])
    verify_consistency(7, 7, (), ROOTS[7], ROOTS[7])
    bad_calls = [
        (7, 3, proof, ROOTS[7], ROOTS[3]),  # size1 > size2
        (0, 7, [], EMPTY_ROOT, ROOTS[7]),  # from the empty tree: meaningless
        (0, 7, proof, EMPTY_ROOT, ROOTS[7]),
        (0, 0, [], EMPTY_ROOT, EMPTY_ROOT),
        (7, 7, [ROOTS[7]], ROOTS[7], ROOTS[7]),  # equal sizes need an empty proof
        (7, 7, [], ROOTS[7], ROOTS[6]),  # ... and equal roots
        (7, 7, [], None, None),
        (3, 7, [], ROOTS[3], ROOTS[7]),  # empty proof
        (-1, 7, proof, ROOTS[3], ROOTS[7]),
        (3, True, proof, ROOTS[3], ROOTS[7]),
        (3, 7, proof[:-1] + [proof[-1][:31]], ROOTS[3], ROOTS[7]),
        (3, 7, proof[:-1] + [proof[-1] + b"\0"], ROOTS[3], ROOTS[7]),
        (3, 7, proof[:-1] + ["x" * 32], ROOTS[3], ROOTS[7]),
        (3, 7, None, ROOTS[3], ROOTS[7]),
        (3, 7, proof, ROOTS[3][:31], ROOTS[7]),
        (3, 7, proof, ROOTS[3], ROOTS[7][:31]),
        (3, 7, proof, ROOTS[3], None),
    ]
    for args in bad_calls:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_length_checked_before_hashing():
    """A proof one element too long or short is refused for its length (verify.go)."""
    for size in range(1, 40):
        for index in range(size):
            proof = ref_path(index, ENTRIES[:size])
            for bad in (proof + [ROOTS[1]], proof[:-1]) if proof else (proof + [ROOTS[1]],):
                with pytest.raises(ProofError, match="wrong inclusion proof length"):
                    verify_inclusion(leaf_hash(ENTRIES[index]), index, size, bad, ROOTS[size])
        for size1 in range(1, size):
            proof = ref_proof(size1, ENTRIES[:size])
            for bad in (proof + [ROOTS[1]], proof[:-1]) if len(proof) > 1 else (proof + [ROOTS[1]],):
                with pytest.raises(ProofError, match="wrong consistency proof length"):
                    verify_consistency(size1, size, bad, ROOTS[size1], ROOTS[size])


def test_producers_refuse_bad_arguments():
    for call in [
        lambda: inclusion_proof_nodes(5, 5),
        lambda: inclusion_proof_nodes(-1, 5),
        lambda: inclusion_proof_nodes(0, 0),
        lambda: consistency_proof_nodes(0, 5),
        lambda: consistency_proof_nodes(6, 5),
        lambda: range_nodes(3, 3),
        lambda: range_nodes(1, 3),  # [1, 3) is not an RFC 9162 subtree
        lambda: range_nodes(2, 5),
        lambda: Frontier(3, []),
        lambda: Frontier(1, [b"short"]),
        lambda: Frontier(-1),
        lambda: Frontier().append(b"short"),
    ]:
        with pytest.raises(ValueError):
            call()
    assert range_root(0, 0, get_node) == EMPTY_ROOT
    assert consistency_proof_nodes(5, 5) == []
    assert inclusion_proof_nodes(0, 1) == []


def test_proof_nodes_shapes():
    """The node lists a store fetches in one query, for a few hand-checked cases."""
    # Tree of 7: leaf 6's path is [MTH(4:6), MTH(0:4)].
    assert inclusion_proof_nodes(6, 7) == [[(1, 2)], [(2, 0)]]
    # Leaf 0 of 7: [leaf 1, MTH(2:4), MTH(4:7) = fold of (1, 2) and (0, 6)].
    assert inclusion_proof_nodes(0, 7) == [[(0, 1)], [(1, 1)], [(1, 2), (0, 6)]]
    # RFC 9162 2.1.5 example: PROOF(3, D[7]) = [c, d, g, l].
    assert consistency_proof_nodes(3, 7) == [[(0, 2)], [(0, 3)], [(1, 0)], [(1, 2), (0, 6)]]
    # PROOF(4, D[7]) = [l]; PROOF(6, D[7]) = [i, j, k].
    assert consistency_proof_nodes(4, 7) == [[(1, 2), (0, 6)]]
    assert consistency_proof_nodes(6, 7) == [[(1, 2)], [(0, 6)], [(2, 0)]]
    assert leaf_hash(b"x") == _sha(b"\x00x") and node_hash(b"a", b"b") == _sha(b"\x01ab")


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70))
def test_append_leaf_is_frontier_append(leaves):
    """merkle.append_leaf (the hot paths' bare-list form) completes the same nodes as
    Frontier.append, leaf by leaf, and leaves the same frontier."""
    from reledger.ledger.merkle import Frontier, append_leaf

    frontier, hashes = Frontier(), []
    for n, leaf in enumerate(leaves):
        expected = b"".join(h for _, _, h in frontier.append(leaf))
        assert append_leaf(hashes, n, leaf) == expected
        assert hashes == frontier.hashes
