"""Export side of the Merkle proofs: the proof file a package carries (writer side).

For a window of records (sequences B+1 .. E) it takes the relay's latest signed
checkpoint (a tree of N >= E leaves), proves the window's leaves are leaves [B, E)
of that tree (a range proof, plus inclusion proofs of the first and last, which any
RFC 6962 client checks alone), and proves that tree extends the one of the
previous export's checkpoint (a consistency proof). Each proof is checked against
the records being exported before it is written: a log rewritten after the tree
recorded it fails the export here, not later at the auditor's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from relay.logs.base import AuditLog
from relay.proofs.checkpoint import Checkpoint, parse_checkpoint
from relay.proofs.merkle import (
    NodeReader,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_proof,
    verify_consistency,
    verify_range,
)
from relay.proofs.note import split_note
from relay.proofs.package import Inclusion, Previous, ProofFile
from relay.tree import TreeReader, TreeStore


class ProofMismatch(EvidenceError):
    """The log's records are not those the signed tree holds (exit 1: tampered)."""


def _checkpoint(note: bytes) -> Checkpoint:
    return parse_checkpoint(split_note(note)[0])


def window_leaves(jsonl: Path) -> Iterator[bytes]:
    """The leaf hash of every line of an export file."""
    with jsonl.open("rb") as f:
        for line in f:
            yield leaf_hash(line.rstrip(b"\n"))


def write_proofs(
    store: TreeStore,
    audit_log: AuditLog,
    jsonl: Path,
    target: Path,
    head_sequence: int,
    record_count: int,
    previous_manifest: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Write ``target`` and return the manifest's ``merkle`` entry; None when the chain
    has no signed checkpoint at all (the relay runs without a note key)."""
    note = store.latest_checkpoint()
    if note is None:
        target.unlink(missing_ok=True)
        return None
    checkpoint = _checkpoint(note)
    begin, end = head_sequence - record_count, head_sequence
    if checkpoint.size < end:
        raise ConfigError(
            f"the chain's latest checkpoint covers {checkpoint.size} records, not yet the "
            f"window's last (sequence {end}): export again after the relay's next checkpoint "
            "(FLAGTRAIL_CHECKPOINT_SECONDS, or `flagtrail relay --once`)"
        )
    read = TreeReader(store, audit_log).node
    leaves = window_leaves(jsonl)
    proof = range_proof(read, begin, end, checkpoint.size)
    try:
        verify_range(begin, end, checkpoint.size, leaves, proof, checkpoint.root_hash)
    except EvidenceError as exc:
        raise ProofMismatch(
            f"the log's records {begin + 1}..{end} are not those of the signed Merkle tree "
            f"({exc}): the log was rewritten after the relay recorded it; do not hand this "
            "export to an auditor"
        ) from None
    inclusion = [
        Inclusion(index, inclusion_proof(read, index, checkpoint.size))
        for index in sorted({begin, end - 1})
        if record_count
    ]
    previous = _previous(read, checkpoint, previous_manifest)
    document = ProofFile(note, begin, end, proof, inclusion, previous).to_json()
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        out.write(document)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, target)
    return {
        "proof_file": target.name,
        "sha256": hashlib.sha256(document).hexdigest(),
        "checkpoint": note.decode(),
    }


def _previous(
    read: NodeReader, checkpoint: Checkpoint, previous_manifest: dict[str, Any] | None
) -> Previous | None:
    old_entry = (previous_manifest or {}).get("merkle")
    if not isinstance(old_entry, dict) or not isinstance(old_entry.get("checkpoint"), str):
        return None
    old_note = old_entry["checkpoint"].encode()
    old = _checkpoint(old_note)
    if old.origin != checkpoint.origin:
        raise ConfigError(
            f"--previous was checkpointed as {old.origin!r}, this chain as {checkpoint.origin!r}"
        )
    if old.size > checkpoint.size:
        raise ProofMismatch(
            f"the previous export's checkpoint has {old.size} records, the latest only "
            f"{checkpoint.size}: the tree shrank"
        )
    proof = consistency_proof(read, old.size, checkpoint.size)
    try:
        verify_consistency(old.size, checkpoint.size, old.root_hash, checkpoint.root_hash, proof)
    except EvidenceError as exc:
        raise ProofMismatch(
            f"the chain's tree no longer extends the previous export's checkpoint ({exc})"
        ) from None
    return Previous(old_note, proof)
