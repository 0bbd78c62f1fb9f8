"""``flagtrail verify``'s Merkle part: the package's checkpoint and proofs (verifier side).

Imports only the shared formats (relay.proofs), never the writer. Trust comes from
the note verifier keys the user names (--note-key, FLAGTRAIL_NOTE_KEYS), never from
the package: a checkpoint counts when a trusted key signed it for this chain's
origin (``<key name>/<chain id>``). What is checked, in order:

1. the manifest (already verified by the caller) binds the proof file's SHA-256 and
   the checkpoint, so a proof file swapped from another export fails;
2. the checkpoint is signed by a trusted key, for this chain's origin;
3. the window is leaves [B, E) of the checkpoint's tree, B and E being the manifest's
   (recomputed) head sequence less its record count, and the head sequence: every
   line of the .jsonl is hashed into the range proof, and the first and last are
   checked by their inclusion proofs as well;
4. the previous export's checkpoint, when the package carries one, is signed by a
   trusted key and the checkpoint's tree extends it (consistency proof); with
   --previous, it must be the checkpoint that export's signed manifest names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from relay.proofs.checkpoint import (
    TIME_EXTENSION,
    Checkpoint,
    origin_for,
    parse_checkpoint,
    signed_time,
)
from relay.proofs.merkle import leaf_hash, verify_consistency, verify_inclusion, verify_range
from relay.proofs.note import Ed25519Verifier, open_note, parse_vkey, split_note
from relay.proofs.package import parse_proof_file

_HEX64 = re.compile(r"[0-9a-f]{64}")


def load_note_keys(given: Sequence[str]) -> list[Ed25519Verifier]:
    """Each --note-key is a verifier key's text or a file holding one per line."""
    keys = []
    for item in given:
        path = Path(item)
        if "+" not in item or path.is_file():
            try:
                lines = path.read_text().split("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--note-key {item}: cannot read it ({exc})") from None
            keys.extend(parse_vkey(line) for line in lines if line.strip())
        else:
            keys.append(parse_vkey(item))
    return keys


class ProofProblem(EvidenceError):
    """A Merkle check failed: the package is not what the signed tree holds."""


def _open(note: bytes, keys: list[Ed25519Verifier], chain: str, what: str) -> Checkpoint:
    """The checkpoint of a note: signed by a trusted key, for that key's origin of
    ``chain``, when keys are given; else only parsed."""
    try:
        if keys:
            opened = open_note(note, keys)
            text = opened.text
            origins = {origin_for(s.name, chain) for s in opened.verified}
        else:
            text, origins = split_note(note)[0], set()
        checkpoint = parse_checkpoint(text)
    except EvidenceError as exc:
        raise ProofProblem(f"the {what}: {exc}") from None
    # without a note key the origin still must name this chain: a witness cosigns per
    # origin, so another log's witnessed tree would otherwise vouch for this one
    if not keys and checkpoint.origin.rpartition("/")[2] != chain:
        raise ProofProblem(f"the {what} is for {checkpoint.origin!r}, not this chain ({chain!r})")
    if keys and checkpoint.origin not in origins:
        raise ProofProblem(
            f"the {what} is for {checkpoint.origin!r}, not this chain "
            f"({', '.join(sorted(origins))})"
        )
    return checkpoint


def _lines(jsonl: Path) -> Iterator[bytes]:
    with jsonl.open("rb") as f:
        for line in f:
            yield line.rstrip(b"\n")


def check_merkle(
    jsonl: Path,
    proof_path: Path,
    manifest: dict[str, Any],
    keys: list[Ed25519Verifier],
    previous_manifest: dict[str, Any] | None = None,
) -> str:
    """What was checked, as one sentence; ProofProblem when a check fails."""
    entry = manifest.get("merkle")
    if entry is None:
        if keys:
            raise ProofProblem(
                "the package carries no Merkle proofs, yet a note key was given: the "
                "checkpoint and proofs were stripped, or the relay signs no checkpoints"
            )
        return "none in this package"
    if (
        not isinstance(entry, dict)
        or entry.get("proof_file") != proof_path.name
        or not _HEX64.fullmatch(str(entry.get("sha256")))
        or not isinstance(entry.get("checkpoint"), str)
    ):
        raise ProofProblem(f"the manifest's merkle entry does not name {proof_path.name}")
    try:
        data = proof_path.read_bytes()
    except OSError:
        raise ProofProblem(f"the proof file {proof_path.name} is missing") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ProofProblem(
            f"{proof_path.name} is not the proof file the signed manifest binds "
            "(its SHA-256 differs: swapped or edited)"
        )
    proofs = parse_proof_file(data)
    if proofs.checkpoint.decode() != entry["checkpoint"]:
        raise ProofProblem("the proof file's checkpoint is not the manifest's")
    chain = manifest.get("chain_id") or "flag-audit"
    checkpoint = _open(proofs.checkpoint, keys, chain, "checkpoint")
    head = manifest.get("head") or {"sequence": 0}
    end = head["sequence"]
    begin = end - manifest["record_count"]
    if (proofs.begin, proofs.end) != (begin, end):
        raise ProofProblem(
            f"the proofs cover leaves [{proofs.begin}, {proofs.end}), the window is "
            f"records {begin + 1}..{end}"
        )
    if checkpoint.size < end:
        raise ProofProblem(
            f"the checkpoint's tree has {checkpoint.size} records, fewer than the window's "
            f"last sequence {end}"
        )
    ends: dict[int, bytes] = {}

    def leaves() -> Iterator[bytes]:
        for n, line in enumerate(_lines(jsonl)):
            h = leaf_hash(line)
            if n == 0 or begin + n == end - 1:
                ends[begin + n] = h
            yield h

    try:
        verify_range(
            begin, end, checkpoint.size, leaves(), proofs.range_proof, checkpoint.root_hash
        )
        if {i.index for i in proofs.inclusion} != set(ends):
            raise EvidenceError("the inclusion proofs are not for the window's first and last")
        for inclusion in proofs.inclusion:
            verify_inclusion(
                inclusion.index,
                checkpoint.size,
                ends[inclusion.index],
                inclusion.proof,
                checkpoint.root_hash,
            )
    except EvidenceError as exc:
        raise ProofProblem(f"the window's records are not in the signed tree: {exc}") from None
    signed = "signed by a trusted note key" if keys else "signature NOT checked (no --note-key)"
    said = [
        f"checkpoint {checkpoint.origin} size {checkpoint.size} ({signed}"
        + (f", at {signed_time(checkpoint)}" if signed_time(checkpoint) else "")
        + ")",
        f"all {end - begin} records are its leaves {begin}..{end - 1} (range proof"
        + (", inclusion proofs of the first and last)" if proofs.inclusion else ")"),
    ]
    stamp = signed_time(checkpoint)
    if checkpoint.size == end and stamp and stamp >= manifest["window"]["until_utc"]:
        said.append(f"no record was appended after the window's last until {stamp} (heartbeat)")
    others = [e for e in checkpoint.extensions if not e.startswith(TIME_EXTENSION)]
    if others:
        said.append(f"extension lines {others} (signed, not interpreted)")
    old_entry = (previous_manifest or {}).get("merkle")
    carried = proofs.previous.checkpoint.decode() if proofs.previous else None
    if isinstance(old_entry, dict) and carried != old_entry.get("checkpoint"):
        raise ProofProblem(
            "the package's previous checkpoint is not the one the --previous manifest names"
        )
    if proofs.previous is not None:
        old = _open(proofs.previous.checkpoint, keys, chain, "previous export's checkpoint")
        if old.origin != checkpoint.origin:
            raise ProofProblem("the previous export's checkpoint is for another log")
        try:
            verify_consistency(
                old.size,
                checkpoint.size,
                old.root_hash,
                checkpoint.root_hash,
                proofs.previous.consistency_proof,
            )
        except EvidenceError as exc:
            raise ProofProblem(f"the previous export's checkpoint: {exc}") from None
        said.append(f"it extends the previous export's checkpoint (size {old.size})")
    return "; ".join(said)
