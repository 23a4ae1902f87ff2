"""The chain heads a checkpoint commits to (docs/FORMAT.md, 5.3).

The log's Merkle tree proves that an entry is in the log, not that a party's chain *ends* where
a bundle says. So each checkpoint also commits to the head of every chain at its tree size N:
a second RFC 9162 tree whose leaves are

    canonical msgpack [chain id, seq, entry hash]        (one per chain with an entry below N)

in increasing order of chain id (compared as UTF-8 bytes), written as one extension line of
the checkpoint body:

    reledger-heads-v1 <number of chains> <base64 of the root>

A bundle proves its party's head with an inclusion proof in that tree; ``reledger verify``
rebuilds the heads from the log at each checkpoint and compares. Nothing here writes: an
auditor's verifier needs it alone (with ``merkle`` and ``encoding``).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Mapping, Sequence

from . import encoding, merkle

PREFIX = "reledger-heads-v1"
_LINE_RE = re.compile(r"reledger-heads-v1 (0|[1-9][0-9]{0,18}) ([A-Za-z0-9+/]{43}=)")

Heads = Mapping[str, tuple[int, bytes]]  # chain -> (seq, entry hash) of its last entry


class HeadsError(ValueError):
    """A heads line or proof that does not parse or does not verify."""


def leaf(chain: str, seq: int, entry_hash: bytes) -> bytes:
    """The leaf data of one chain's head."""
    return encoding.canonical([chain, seq, entry_hash])


def _sorted(heads: Heads) -> list[str]:
    return sorted(heads, key=lambda c: c.encode("utf-8"))


def leaf_hashes(heads: Heads) -> list[bytes]:
    """The tree's leaf hashes, in chain order."""
    return [merkle.leaf_hash(leaf(c, *heads[c])) for c in _sorted(heads)]


def commitment(heads: Heads) -> tuple[int, bytes]:
    """(number of chains, root of the heads tree); (0, the empty root) for no chain."""
    f = merkle.Frontier()
    for h in leaf_hashes(heads):
        f.append(h)
    return f.size, f.root()


def line(heads: Heads) -> str:
    """The checkpoint extension line that commits to ``heads``."""
    count, root = commitment(heads)
    return f"{PREFIX} {count} {base64.b64encode(root).decode('ascii')}"


def of_extensions(extensions: Sequence[str]) -> tuple[int, bytes] | None:
    """(count, root) of the heads line among a checkpoint's extension lines; None when it has
    none (a checkpoint written before heads were committed). Raises HeadsError for a line that
    starts like one but is malformed, or for two of them."""
    found = [e for e in extensions if e == PREFIX or e.startswith(PREFIX + " ")]
    if not found:
        return None
    if len(found) > 1:
        raise HeadsError("the checkpoint has more than one chain heads line")
    m = _LINE_RE.fullmatch(found[0])
    if m is None:
        raise HeadsError(f"malformed chain heads line {found[0][:80]!r} (expected '{PREFIX} <count> <base64 root>')")
    try:
        root = base64.b64decode(m.group(2), validate=True)
    except binascii.Error as e:  # (the pattern admits only valid base64 of 32 bytes)
        raise HeadsError(f"chain heads root: {e}") from None
    if base64.b64encode(root).decode("ascii") != m.group(2):
        raise HeadsError("chain heads root: not canonical base64")
    return int(m.group(1)), root


def proof(heads: Heads, chain: str) -> tuple[int, int, list[bytes]]:
    """(position of ``chain``'s leaf, number of chains, inclusion proof) in the heads tree."""
    order = _sorted(heads)
    try:
        position = order.index(chain)
    except ValueError:
        raise HeadsError(f"chain {chain} has no head (no entry) in this tree") from None
    hashes = [merkle.leaf_hash(leaf(c, *heads[c])) for c in order]
    nodes: dict[tuple[int, int], bytes] = {}
    f = merkle.Frontier()
    for h in hashes:
        for level, index, node in f.append(h):
            nodes[(level, index)] = node
    return position, len(order), merkle.inclusion_proof(position, len(order), lambda lv, i: nodes[(lv, i)])


def verify(chain: str, seq: int, entry_hash: bytes, position: int, count: int, path: Sequence[bytes],
           expected: tuple[int, bytes]) -> None:
    """Check that (chain, seq, entry hash) is the leaf at ``position`` of the heads tree of
    ``count`` chains committed to by ``expected`` = (count, root); raises HeadsError."""
    want_count, root = expected
    if type(count) is not int or count != want_count:
        raise HeadsError(f"the proof is for a heads tree of {count!r} chains, the checkpoint's has {want_count}")
    if type(position) is not int or not 0 <= position < count:
        raise HeadsError(f"position {position!r} is outside the heads tree of {count} chains")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(leaf(chain, seq, entry_hash)), position, count, list(path), root)
    except merkle.ProofError as e:
        raise HeadsError(f"{chain}:{seq} is not the head of chain {chain} the checkpoint commits to ({e})") from None
