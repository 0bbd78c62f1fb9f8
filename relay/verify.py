"""``flagtrail verify``: chain, manifest and signature, checked without trusting the exporter.

The chain is checked in parallel: every record carries its own ``prev_hash``,
so chunks of the file are hashed independently and only the links across chunk
boundaries are stitched afterwards.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.errors import ConfigError
from relay.canonical import (
    GENESIS,
    LineError,
    fast_parts,
    payload_action,
    seed_parts,
    split_lines,
)
from relay.export import PackagePaths
from relay.signing import fingerprint, load_public_key, signature_valid

PARALLEL_THRESHOLD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    record: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.record}: {self.reason}"


@dataclass
class ChunkResult:
    lines: int = 0
    first_prev: str | None = None
    first_is_rotation: bool = False
    last_hash: str | None = None
    finding: Finding | None = None  # record numbers local to the chunk
    rotations: list[int] = field(default_factory=list)


@dataclass
class VerifyReport:
    path: Path
    records: int = 0
    finding: Finding | None = None
    rotations: list[int] = field(default_factory=list)
    anchor: str = GENESIS
    anchor_source: str = "GENESIS (chain start)"
    head: str | None = None
    notes: list[str] = field(default_factory=list)
    signature: str = "not checked (no public key given or named by a manifest)"

    @property
    def ok(self) -> bool:
        return self.finding is None


def _is_rotation(payload: bytes) -> bool:
    try:
        return payload_action(payload) == "sentinel_rotation"
    except ValueError:
        return False


def check_chunk(path: str, start: int, end: int) -> ChunkResult:
    """Hash and link every record in bytes [start, end) of the file.

    The loop is written flat on purpose: it runs once per record, and at
    hundreds of thousands of records Python's per-call cost is the budget.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = split_lines(data)  # the seed's text-mode lines: a lone CR ends one too
    result = ChunkResult(lines=len(lines))
    sha256, genesis = hashlib.sha256, GENESIS.encode()
    expected = b""
    number = 0
    for line in lines:
        number += 1  # noqa: SIM113 - enumerate costs more in this loop
        parts = fast_parts(line)
        if parts is None:
            try:
                prev_text, payload, digest_text = seed_parts(line)
            except LineError as exc:
                result.finding = Finding(number, str(exc))
                return result
            prev, digest = prev_text.encode(), digest_text.encode()
        else:
            prev, payload, digest = parts
        rotation = prev == genesis and _is_rotation(payload)
        if number == 1:
            result.first_prev, result.first_is_rotation = prev.decode(), rotation
        elif rotation:
            result.rotations.append(number)
        elif prev != expected:
            result.finding = Finding(
                number,
                "prev_hash does not match the previous "
                "record's hash (a record was deleted, inserted, "
                "duplicated or reordered before this one)",
            )
            return result
        if sha256(prev + b":" + payload).hexdigest().encode() != digest:
            result.finding = Finding(
                number, "hash does not match the record's content (the record was edited)"
            )
            return result
        expected = digest
    result.last_hash = expected.decode() if lines else None
    return result


def _chunk_bounds(path: Path, size: int, parts: int) -> list[tuple[int, int]]:
    bounds, start = [], 0
    with path.open("rb") as f:
        for i in range(1, parts):
            f.seek(max(start, size * i // parts))
            f.readline()  # move to the next line start
            cut = f.tell()
            if cut >= size:
                break
            if cut > start:
                bounds.append((start, cut))
                start = cut
    bounds.append((start, size))
    return bounds


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _load_manifest(paths: PackagePaths) -> dict[str, Any] | None:
    if not paths.manifest.exists():
        return None
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"manifest {paths.manifest} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ConfigError(f"manifest {paths.manifest} is not a JSON object")
    return manifest


def _check_chain(path: Path, size: int, workers: int) -> tuple[list[ChunkResult], bytes]:
    if size < PARALLEL_THRESHOLD_BYTES or workers <= 1:
        return [check_chunk(str(path), 0, size)], _file_sha256(path)
    bounds = _chunk_bounds(path, size, workers * 4)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(check_chunk, str(path), a, b) for a, b in bounds]
        file_digest = _file_sha256(path)  # the parent hashes the file meanwhile
        return [f.result() for f in futures], file_digest


def _stitch(report: VerifyReport, chunks: list[ChunkResult]) -> None:
    expected, offset = report.anchor, 0
    for chunk in chunks:
        if chunk.first_is_rotation:
            report.rotations.append(offset + 1)
        elif chunk.lines and chunk.first_prev is not None and chunk.first_prev != expected:
            where = (
                ("the anchor " + report.anchor_source)
                if offset == 0
                else "the previous record's hash"
            )
            report.finding = Finding(
                offset + 1,
                f"prev_hash does not match {where} "
                "(deleted, inserted or reordered record, or a "
                "window that needs --anchor)",
            )
            return
        if chunk.finding:
            report.finding = Finding(offset + chunk.finding.record, chunk.finding.reason)
            return
        report.rotations += [offset + r for r in chunk.rotations]
        offset += chunk.lines
        expected = chunk.last_hash or expected
    report.records, report.head = offset, expected if offset else None


def _check_manifest(report: VerifyReport, manifest: dict[str, Any], sha256_hex: str) -> None:
    count = manifest.get("record_count")
    if count != report.records:
        first_missing = min(report.records, count or 0) + 1
        report.finding = Finding(
            first_missing,
            f"the manifest lists {count} records, the file "
            f"has {report.records} (truncated, or records added or removed)",
        )
    elif manifest.get("sha256") != sha256_hex:
        report.finding = Finding(
            report.records,
            "the file's SHA-256 differs from the manifest's (the file was changed after export)",
        )
    elif (manifest.get("head") or {}).get("hash") != report.head:
        report.finding = Finding(
            report.records, "the last record's hash differs from the manifest's head"
        )
    else:
        report.notes.append(f"Manifest matches: {count} records, SHA-256 {sha256_hex[:16]}…")


def _check_signature(
    report: VerifyReport,
    paths: PackagePaths,
    pubkey: Path,
    manifest: dict[str, Any] | None,
    file_digest: bytes,
) -> None:
    key = load_public_key(pubkey)
    try:
        signature = paths.signature.read_bytes()
    except OSError:
        raise ConfigError(
            f"signature file {paths.signature} not found beside the export; "
            "an export and its .sig are delivered together"
        ) from None
    expected_fp = (manifest or {}).get("public_key_fingerprint")
    if expected_fp and expected_fp != fingerprint(key):
        report.notes.append(f"Warning: {pubkey} is not the key the manifest names ({expected_fp})")
    if signature_valid(file_digest, signature, key):
        report.signature = f"valid ({pubkey}, {fingerprint(key)[:23]}…)"
    else:
        report.signature = "INVALID"
        if report.finding is None:
            report.finding = Finding(
                max(report.records, 1),
                "the signature does not match the file (changed after signing, or the wrong key)",
            )


def verify_export(
    path: Path, pubkey: Path | None = None, anchor: str | None = None, workers: int | None = None
) -> VerifyReport:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc.strerror}") from None
    paths = PackagePaths.beside(path)
    manifest = _load_manifest(paths)
    report = VerifyReport(path)
    if anchor:
        report.anchor, report.anchor_source = anchor, "given with --anchor"
    elif manifest and (manifest.get("anchor") or {}).get("hash"):
        report.anchor, report.anchor_source = manifest["anchor"]["hash"], "from the manifest"
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks, file_digest = _check_chain(path, size, workers)
    _stitch(report, chunks)
    if report.finding is None and manifest is not None:
        _check_manifest(report, manifest, file_digest.hex())
    if pubkey is None and manifest and manifest.get("public_key"):
        named = path.parent / str(manifest["public_key"])
        pubkey = named if named.exists() else None
    if pubkey is not None:
        _check_signature(report, paths, pubkey, manifest, file_digest)
    return report


def render(report: VerifyReport) -> str:
    lines = []
    if report.ok:
        lines.append(f"Chain intact: {report.records} records, no tampering detected.")
    else:
        lines.append(f"FAIL: {report.finding}")
    lines.append(f"Anchor: {report.anchor[:16]}… {report.anchor_source}")
    for record in report.rotations:
        lines.append(
            f"Sentinel rotation at record {record}: the chain restarts from GENESIS "
            "(documented by a sentinel_rotation meta-event)"
        )
    lines.extend(report.notes)
    lines.append(f"Signature: {report.signature}")
    return "\n".join(lines)
