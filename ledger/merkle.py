"""RFC 9162 Merkle tree: hashing, O(log n) appends, proofs and their verification.

Hashing (RFC 9162 section 2.1.1): leaf = SHA-256(0x00 || data),
node = SHA-256(0x01 || left || right), empty tree = SHA-256("").

A *perfect node* (level, index) is the root of the perfect subtree over leaves
[index * 2**level, (index + 1) * 2**level). Stores keep these nodes; a
``get_node(level, index) -> bytes`` callable returns one, and is only asked for
nodes lying wholly inside the tree. Any RFC 9162 subtree [begin, end) (begin a
multiple of the smallest power of two >= end - begin) is the sequence of perfect
nodes given by the binary digits of end - begin, largest first, folded right to
left with node_hash: that is how every proof element below is built.

Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 as implemented by
transparency-dev/merkle proof/verify.go: the expected proof length is computed
up front and any other length is refused.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

HASH_SIZE = 32
GetNode = Callable[[int, int], bytes]
NodeId = tuple[int, int]  # (level, index)


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of a log entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof, hash or tree size that does not verify."""


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Root of a subtree made of perfect subtree roots, largest first."""
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root of a tree given as the roots of its perfect subtrees, largest (leftmost) first
    (EMPTY_ROOT for none)."""
    return _fold(hashes) if hashes else EMPTY_ROOT


def _nodes(begin: int, end: int) -> list[NodeId]:
    """Perfect nodes covering the subtree [begin, end), largest (leftmost) first."""
    nodes = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2), RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def append_leaf(hashes: list[bytes], size: int, leaf: bytes) -> bytes:
    """Frontier.append on a bare list of perfect subtree roots (largest first) of a tree of
    ``size`` leaves, for hot loops: adds ``leaf`` and returns the completed nodes, leaf first,
    concatenated (what the log stores per entry)."""
    completed = h = leaf
    while size & 1:
        h = _sha256(b"\x01" + hashes.pop() + h).digest()
        completed += h
        size >>= 1
    hashes.append(h)
    return completed


class Frontier:
    """Compact range of a growing tree: the roots of its perfect subtrees, largest first.

    A tree of size n has one perfect subtree per 1-bit of n, so appends and the root
    cost O(log n) hashes and nothing re-reads the log.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if type(size) is not int or size < 0:
            raise ValueError(f"tree size must be a non-negative int, got {size!r}")
        if len(hashes) != size.bit_count():
            raise ValueError(f"size {size} needs {size.bit_count()} hashes, got {len(hashes)}")
        for h in hashes:
            _check_hash(h, "frontier hash", ValueError)
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the perfect nodes (level, index, hash) it completes.

        The first is the leaf itself (0, old size, leaf); then one node per trailing
        1-bit of the old size, each merging the previous with a stored left sibling.
        """
        _check_hash(leaf, "leaf hash", ValueError)
        level, index, h = 0, self.size, leaf
        completed = [(0, index, h)]
        while (self.size >> level) & 1:
            h = node_hash(self.hashes.pop(), h)
            level, index = level + 1, index >> 1
            completed.append((level, index, h))
        self.hashes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the whole tree (EMPTY_ROOT for size 0)."""
        return _fold(self.hashes) if self.hashes else EMPTY_ROOT

    @classmethod
    def from_nodes(cls, size: int, get_node: GetNode) -> Frontier:
        """Rebuild the frontier of a tree of `size` leaves from stored perfect nodes."""
        return cls(size, [get_node(*n) for n in _nodes(0, size)])

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frontier) and (self.size, self.hashes) == (other.size, other.hashes)


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """Perfect nodes whose fold gives MTH of leaves [begin, end), a valid RFC 9162 subtree."""
    if type(begin) is not int or type(end) is not int or not 0 <= begin < end:
        raise ValueError(f"need 0 <= begin < end, got [{begin}, {end})")
    if begin % (1 << (end - begin - 1).bit_length()):
        raise ValueError(f"[{begin}, {end}) is not an RFC 9162 subtree: begin is not aligned")
    return _nodes(begin, end)


def range_root(begin: int, end: int, get_node: GetNode) -> bytes:
    """MTH(D[begin:end]) from stored nodes; range_root(0, 0, _) is EMPTY_ROOT."""
    if begin == end == 0:
        return EMPTY_ROOT
    return _fold([get_node(*n) for n in range_nodes(begin, end)])


def inclusion_proof_nodes(index: int, size: int) -> list[list[NodeId]]:
    """For each element of PATH(index, D[0:size]) (RFC 9162 2.1.3.1), its perfect nodes."""
    if type(index) is not int or type(size) is not int or not 0 <= index < size:
        raise ValueError(f"need 0 <= index < size, got index {index}, size {size}")
    elements, lo, hi = [], 0, size  # invariant: lo <= index < hi
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:  # PATH(m, D[lo:lo+k]) : MTH(D[lo+k:hi])
            elements.append(_nodes(lo + k, hi))
            hi = lo + k
        else:  # PATH(m - k, D[lo+k:hi]) : MTH(D[lo:lo+k])
            elements.append(_nodes(lo, lo + k))
            lo += k
    return elements[::-1]  # the recursion emits the top first; proofs go bottom-up


def consistency_proof_nodes(size1: int, size2: int) -> list[list[NodeId]]:
    """For each element of PROOF(size1, D[0:size2]) (RFC 9162 2.1.4.1), its perfect nodes.

    Requires 0 < size1 <= size2; equal sizes give an empty proof.
    """
    if type(size1) is not int or type(size2) is not int or not 0 < size1 <= size2:
        raise ValueError(f"need 0 < size1 <= size2, got {size1}, {size2}")
    elements, lo, hi, m, whole = [], 0, size2, size1, True
    while m != hi - lo:  # SUBPROOF(m, D[lo:hi], whole)
        k = _split(hi - lo)
        if m <= k:
            elements.append(_nodes(lo + k, hi))
            hi = lo + k
        else:
            elements.append(_nodes(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        elements.append(_nodes(lo, hi))
    return elements[::-1]


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves."""
    return [_fold([get_node(*n) for n in nodes]) for nodes in inclusion_proof_nodes(index, size)]


def consistency_proof(size1: int, size2: int, get_node: GetNode) -> list[bytes]:
    """The RFC 9162 consistency proof from tree size1 to tree size2 (0 < size1 <= size2)."""
    return [_fold([get_node(*n) for n in nodes]) for nodes in consistency_proof_nodes(size1, size2)]


# --- Verification: pure functions of their arguments, no storage. ---


def _check_hash(h: object, what: str, error: type[Exception] = ProofError) -> None:
    if not isinstance(h, bytes) or len(h) != HASH_SIZE:
        got = f"{len(h)} bytes" if isinstance(h, bytes) else type(h).__name__
        raise error(f"{what} must be {HASH_SIZE} bytes, got {got}")


def _check_proof(proof: object) -> None:
    if not isinstance(proof, (list, tuple)):
        raise ProofError(f"proof must be a list of hashes, got {type(proof).__name__}")
    for i, h in enumerate(proof):
        _check_hash(h, f"proof[{i}]")


def _check_size(value: object, what: str) -> None:
    if type(value) is not int or value < 0:
        raise ProofError(f"{what} must be a non-negative int, got {value!r}")


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split the path of leaf `index` in a tree of `size`: (inner, border) lengths.

    `inner` levels lie below the point where the paths to `index` and `size - 1`
    diverge (siblings on either side); the `border` levels above it only have left
    siblings, one per 1-bit of index >> inner. Their sum is the proof length.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof of `leaf` at `index` in a tree of `size`."""
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    if index >= size:
        raise ProofError(f"leaf index {index} is beyond tree size {size}")
    _check_hash(leaf, "leaf hash")
    _check_proof(proof)
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"wrong inclusion proof length {len(proof)}, want {inner + border}")
    result = leaf
    for i, h in enumerate(proof[:inner]):  # this node is a right child iff bit i is 1
        result = node_hash(h, result) if (index >> i) & 1 else node_hash(result, h)
    for h in proof[inner:]:
        result = node_hash(h, result)
    return result


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree (size, root)."""
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    _check_hash(root, "root")
    if computed != root:
        raise ProofError(f"inclusion proof gives root {computed.hex()}, want {root.hex()}")


def root_from_consistency_proof(size1: int, size2: int, proof: Sequence[bytes], root1: bytes) -> bytes:
    """Check `proof` against (size1, root1) and return the root it implies for size2.

    Requires 0 < size1 <= size2: a proof from the empty tree is meaningless (every
    tree extends it), so callers must treat size1 == 0 themselves. Equal sizes need
    an empty proof and return root1 unchanged.
    """
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    _check_proof(proof)
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        raise ProofError("consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError("size1 == size2, but the proof is not empty")
        if not isinstance(root1, bytes):
            raise ProofError(f"root1 must be bytes, got {type(root1).__name__}")
        return root1
    if not proof:
        raise ProofError("empty consistency proof")
    _check_hash(root1, "root1")
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    inner -= shift  # the subtree of size 2**shift ending at size1 is a single node
    if size1 == 1 << shift:  # size1 is that node itself: the verifier knows it as root1
        seed, rest = root1, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        want = inner + border + (size1 != 1 << shift)
        raise ProofError(f"wrong consistency proof length {len(proof)}, want {want}")
    mask = (size1 - 1) >> shift
    hash1, hash2 = seed, seed
    for i, h in enumerate(rest[:inner]):
        if (mask >> i) & 1:  # a left sibling: inside both trees
            hash1, hash2 = node_hash(h, hash1), node_hash(h, hash2)
        else:  # a right sibling: only in the bigger tree
            hash2 = node_hash(hash2, h)
    for h in rest[inner:]:
        hash1, hash2 = node_hash(h, hash1), node_hash(h, hash2)
    if hash1 != root1:
        raise ProofError(f"consistency proof gives root1 {hash1.hex()}, want {root1.hex()}")
    return hash2


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless `proof` shows tree (size1, root1) is a prefix of (size2, root2)."""
    computed = root_from_consistency_proof(size1, size2, proof, root1)
    if size1 == size2:  # nothing to hash: RFC 9162 only asks for equal roots
        if computed != root2:
            raise ProofError("size1 == size2, but the roots differ")
        return
    _check_hash(root2, "root2")
    if computed != root2:
        raise ProofError(f"consistency proof gives root2 {computed.hex()}, want {root2.hex()}")
