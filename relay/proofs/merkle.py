"""RFC 6962 / RFC 9162 Merkle trees: hashing, proofs and their verification.

The tree over n leaves is the one RFC 9162 section 2.1.1 defines: leaf hash
SHA-256(0x00 || data), node hash SHA-256(0x01 || left || right), and a tree of
n > 1 leaves splits at k, the largest power of two below n. Go's sumdb/tlog and
transparency-dev/merkle compute the same tree, so their checkers accept these
proofs.

Storage is by the writer's choice; the prover only needs ``NodeReader``: the hash
of the complete, aligned subtree at (level, index), which covers leaves
[index * 2**level, (index + 1) * 2**level). Those subtrees never change once
complete, so a writer stores each once as the tree grows (``CompactRange``), and
every proof for every tree size is computed from them in O(log n) reads.

This module is the format shared by writer and verifier: it imports nothing of
the relay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from producers.errors import EvidenceError

sha256 = hashlib.sha256
HASH_SIZE = 32
# reads the complete subtree hash at (level, index); raises KeyError when absent
NodeReader = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the writer's incremental state ----------------------------------------------------
class CompactRange:
    """The right border of a tree of ``size`` leaves: one complete subtree root per
    set bit of ``size``, largest first. Appending a leaf costs O(log n) and reports
    the complete subtrees it finished, which are the ones a writer stores."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of {size} leaves has {size.bit_count()} hashes")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes, from_level: int = 0) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the (level, index, hash) of every subtree it completed
        at ``from_level`` or above (a writer that stores only the upper levels asks
        for those alone)."""
        index, level, current = self.size, 0, leaf
        finished = [(0, index, current)] if from_level == 0 else []
        hashes = self.hashes
        while index & 1:  # the left sibling is complete: merge up
            current = sha256(b"\x01" + hashes.pop() + current).digest()
            index >>= 1
            level += 1
            if level >= from_level:
                finished.append((level, index, current))
        hashes.append(current)
        self.size += 1
        return finished

    def root(self) -> bytes:
        """The tree's root hash: the border's subtrees folded right to left."""
        if not self.hashes:
            return hashlib.sha256(b"").digest()
        current = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            current = node_hash(left, current)
        return current

    @classmethod
    def from_nodes(cls, size: int, read: NodeReader) -> CompactRange:
        """The border of a tree of ``size`` leaves, read from stored subtrees."""
        return cls(size, [read(level, start >> level) for level, start in _border(0, size)])


def _border(start: int, end: int) -> list[tuple[int, int]]:
    """The complete aligned subtrees (level, first leaf) that tile [start, end), left to
    right, each as large as alignment allows."""
    pieces = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else end.bit_length()
        while start + (1 << level) > end:
            level -= 1
        pieces.append((level, start))
        start += 1 << level
    return pieces


# -- proving -----------------------------------------------------------------------------
def subtree_hash(read: NodeReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for the ranges the RFC's recursion visits."""
    if end - start < 1:
        raise ValueError("an empty range has no subtree hash")
    pieces = _border(start, end)
    current = read(pieces[-1][0], pieces[-1][1] >> pieces[-1][0])
    for level, first in reversed(pieces[:-1]):
        current = node_hash(read(level, first >> level), current)
    return current


def tree_hash(read: NodeReader, size: int) -> bytes:
    return hashlib.sha256(b"").digest() if size == 0 else subtree_hash(read, 0, size)


def inclusion_proof(read: NodeReader, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 section 2.1.1, leaf-side hash first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(read, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(read: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 6962 section 2.1.2."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} leaves to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(read, start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:
        proof.append(subtree_hash(read, start, end))
    proof.reverse()
    return proof


def range_proof(read: NodeReader, begin: int, end: int, size: int) -> list[bytes]:
    """What proves that leaves [begin, end) are leaves begin..end-1 of the tree of
    ``size``: the compact range of [0, begin) (its subtree roots, largest first), then
    the consistency proof from ``end`` leaves to ``size``. A verifier appends the
    window's own leaves to that compact range, which gives the root at ``end``, and
    checks the consistency proof to the root at ``size``. Go's tlog does the same with
    StoredHashes, TreeHash and CheckTree."""
    if not 0 <= begin <= end <= size:
        raise ValueError(f"leaves [{begin}, {end}) are not within a tree of {size} leaves")
    left = CompactRange.from_nodes(begin, read).hashes
    return left + consistency_proof(read, end, size)


# -- verifying -------------------------------------------------------------------------
def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    if any(len(h) != HASH_SIZE for h in proof):
        raise EvidenceError(f"the {what} holds a hash that is not {HASH_SIZE} bytes")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root a leaf and its audit path imply."""
    if not 0 <= index < size:
        raise EvidenceError(f"leaf {index} is not in a tree of {size} leaves")
    _check_hashes(proof, "inclusion proof")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise EvidenceError("the inclusion proof is longer than the tree allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise EvidenceError("the inclusion proof is shorter than the tree needs")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise EvidenceError(f"leaf {index} is not in the tree of {size} leaves with that root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: the tree of ``new_size`` extends that of ``old_size``."""
    if not 0 <= old_size <= new_size:
        raise EvidenceError(
            f"a tree of {new_size} leaves cannot extend one of {old_size}: it shrank"
        )
    _check_hashes(proof, "consistency proof")
    if old_size == new_size:
        if proof or old_root != new_root:
            raise EvidenceError(f"two trees of {old_size} leaves have different roots")
        return
    if old_size == 0:
        if proof:
            raise EvidenceError("a consistency proof from the empty tree must be empty")
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is on the path
        path.insert(0, old_root)
    if not path:
        raise EvidenceError("the consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise EvidenceError("the consistency proof is longer than the trees allow")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise EvidenceError("the consistency proof is shorter than the trees need")
    if fr != old_root or sr != new_root:
        raise EvidenceError(
            f"the tree of {new_size} leaves does not extend the tree of {old_size} leaves: "
            "history was rewritten"
        )


def verify_range(
    begin: int,
    end: int,
    size: int,
    leaves: Iterable[bytes],
    proof: Sequence[bytes],
    root: bytes,
) -> None:
    """Check a ``range_proof``: ``leaves`` are the leaf hashes of [begin, end), in order."""
    if not 0 <= begin <= end <= size:
        raise EvidenceError(f"leaves [{begin}, {end}) are not within a tree of {size} leaves")
    _check_hashes(proof, "range proof")
    border_size = begin.bit_count()
    if len(proof) < border_size:
        raise EvidenceError(f"the range proof is too short for leaves [{begin}, {end})")
    border = CompactRange(begin, proof[:border_size])
    count = 0
    for leaf in leaves:
        border.append(leaf)
        count += 1
    if count != end - begin:
        raise EvidenceError(f"the range proof covers {end - begin} leaves, {count} were given")
    try:
        verify_consistency(end, size, border.root(), root, proof[border_size:])
    except EvidenceError as exc:
        raise EvidenceError(
            f"leaves [{begin}, {end}) are not those of the tree of {size} leaves "
            f"with that root ({exc})"
        ) from None
