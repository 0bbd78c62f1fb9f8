"""The evidence package: JSONL in chain order, detached signature, manifest, summary."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from flagtrail import __version__
from producers.controls import CONTROL_ORDER
from producers.errors import ConfigError, FlagtrailError
from relay.canonical import GENESIS, LineError, chain_hash, line_parts
from relay.gaps import GapFinder
from relay.logs.base import AuditLog
from relay.signing import (
    PUBLIC_KEY_FILE,
    fingerprint,
    load_private_key,
    public_pem,
    sign_digest,
)
from relay.summary import format_summary

META_ACTIONS_REPORTED = ("sentinel_rotation", "gap_documented")


class ExportError(FlagtrailError):
    """The log itself fails the chain check while being exported."""


@dataclass(frozen=True)
class PackagePaths:
    jsonl: Path
    signature: Path
    manifest: Path
    summary: Path
    public_key: Path

    @classmethod
    def for_window(cls, out_dir: Path, start: date, end: date) -> PackagePaths:
        stem = f"flag-audit-soc2_{start.isoformat()}_{end.isoformat()}"
        return cls(
            out_dir / f"{stem}.jsonl",
            out_dir / f"{stem}.jsonl.sig",
            out_dir / f"{stem}.manifest.json",
            out_dir / f"{stem}.summary.txt",
            out_dir / PUBLIC_KEY_FILE,
        )

    @classmethod
    def beside(cls, jsonl: Path) -> PackagePaths:
        stem = jsonl.name.removesuffix(".jsonl")
        return cls(
            jsonl,
            jsonl.with_name(jsonl.name + ".sig"),
            jsonl.with_name(f"{stem}.manifest.json"),
            jsonl.with_name(f"{stem}.summary.txt"),
            jsonl.with_name(PUBLIC_KEY_FILE),
        )


@dataclass
class _WindowScan:
    """What the export learns while streaming the window."""

    count: int = 0
    anchor: str | None = None
    anchor_sequence: int | None = None
    head: str | None = None
    head_sequence: int | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    controls: Counter[str] = field(default_factory=Counter)
    meta_events: list[dict[str, Any]] = field(default_factory=list)
    gaps: GapFinder = field(default_factory=GapFinder)


def window_bounds(start: date, end: date) -> tuple[str, str]:
    """Whole UTC days, both included: [start 00:00, end+1 00:00)."""
    if end < start:
        raise ConfigError(f"--end {end} is before --start {start}")
    return (
        f"{start.isoformat()}T00:00:00.000000Z",
        f"{(end + timedelta(days=1)).isoformat()}T00:00:00.000000Z",
    )


def _check_and_note(scan: _WindowScan, line: bytes, prev: str | None) -> str:
    """Check one record's hash and link; returns its hash."""
    try:
        prev_hash, payload_bytes, digest = line_parts(line)
    except LineError as exc:
        raise ExportError(
            f"log record {scan.count + 1} of the window is unreadable: {exc}"
        ) from exc
    payload = payload_bytes.decode()
    if chain_hash(prev_hash, payload) != digest:
        raise ExportError(
            f"log record {scan.count + 1} of the window fails its hash: "
            "the log was altered; do not hand this export to an auditor"
        )
    record = orjson.loads(payload)
    rotation = record.get("action") == "sentinel_rotation" and prev_hash == GENESIS
    if prev is not None and prev_hash != prev and not rotation:
        raise ExportError(
            f"log record {scan.count + 1} of the window does not link to the one before it"
        )
    scan.count += 1
    scan.gaps.add(record)
    if scan.anchor is None:
        scan.anchor, scan.anchor_sequence = prev_hash, record["sequence"] - 1
        scan.first_timestamp = record["timestamp_utc"]
    scan.head, scan.head_sequence = digest, record["sequence"]
    scan.last_timestamp = record["timestamp_utc"]
    scan.controls.update(record.get("soc2_controls", []))
    if record.get("action") in META_ACTIONS_REPORTED:
        scan.meta_events.append(
            {
                "record": scan.count,
                "sequence": record["sequence"],
                "action": record["action"],
                "timestamp_utc": record["timestamp_utc"],
                "details": record.get("meta"),
            }
        )
    return digest


def export_window(
    audit_log: AuditLog,
    start: date,
    end: date,
    out_dir: Path,
    signing_key_path: Path,
    controls: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[PackagePaths, dict[str, Any]]:
    """Write the evidence package for [start, end]; returns its paths and manifest."""
    since, until = window_bounds(start, end)
    key = load_private_key(signing_key_path)  # fail before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = PackagePaths.for_window(out_dir, start, end)
    scan = _WindowScan()
    file_hash = hashlib.sha256()
    partial = paths.jsonl.with_name(paths.jsonl.name + ".partial")
    prev: str | None = None
    with partial.open("wb") as out:
        for entry in audit_log.read(since, until):
            line = entry.line.encode() + b"\n"
            prev = _check_and_note(scan, line, prev)
            out.write(line)
            file_hash.update(line)
            if progress and scan.count % 50_000 == 0:
                progress(scan.count)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, paths.jsonl)  # never leave a half-written export under the real name

    digest = file_hash.digest()
    paths.signature.write_bytes(sign_digest(digest, key))
    public_key = key.public_key()
    paths.public_key.write_bytes(public_pem(public_key))
    reported = controls or [c for c in CONTROL_ORDER if scan.controls.get(c)]
    scan.gaps.note_statements_after(audit_log, until)
    rotations = [m for m in scan.meta_events if m["action"] == "sentinel_rotation"]
    summary = format_summary(scan.controls, reported, [r["record"] for r in rotations])
    paths.summary.write_text(summary)
    manifest = _manifest(
        paths, scan, start, end, since, until, digest.hex(), fingerprint(public_key), reported
    )
    paths.manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    return paths, manifest


def _manifest(
    paths: PackagePaths,
    scan: _WindowScan,
    start: date,
    end: date,
    since: str,
    until: str,
    sha256_hex: str,
    key_fingerprint: str,
    reported: list[str],
) -> dict[str, Any]:
    jsonl, sig = paths.jsonl.name, paths.signature.name
    return {
        "manifest_version": 1,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "generator": f"flagtrail {__version__}",
        "window": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "from_utc": since,
            "until_utc": until,
            "days_inclusive": True,
        },
        "evidence_file": jsonl,
        "signature_file": sig,
        "summary_file": paths.summary.name,
        "record_count": scan.count,
        "sha256": sha256_hex,
        "anchor": {
            "hash": scan.anchor,
            "sequence": scan.anchor_sequence,
            "starts_at_genesis": scan.anchor == GENESIS,
        },
        "head": {"hash": scan.head, "sequence": scan.head_sequence},
        "first_timestamp_utc": scan.first_timestamp,
        "last_timestamp_utc": scan.last_timestamp,
        "rotations": [m for m in scan.meta_events if m["action"] == "sentinel_rotation"],
        "gap_statements": [m for m in scan.meta_events if m["action"] == "gap_documented"],
        "documented_gaps": [g.as_dict() for g in scan.gaps.result() if g.documented_by],
        "undocumented_gaps": [g.as_dict() for g in scan.gaps.result() if not g.documented_by],
        "controls_reported": reported,
        "control_counts": {c: scan.controls.get(c, 0) for c in reported},
        "public_key": paths.public_key.name,
        "public_key_fingerprint": key_fingerprint,
        "verify_commands": [
            f"openssl dgst -sha256 -verify {paths.public_key.name} -signature {sig} {jsonl}",
            f"sha256sum {jsonl}",
            f"flagtrail verify {jsonl} --pubkey {paths.public_key.name}"
            + ("" if scan.anchor in (None, GENESIS) else f" --anchor {scan.anchor}"),
        ],
    }
