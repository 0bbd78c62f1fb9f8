"""The evidence package: JSONL in chain order, detached signature, signed manifest, summary,
and, when the previous export's head lies before this window, the linking records."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flagtrail import __version__
from producers.controls import CONTROL_ORDER
from producers.errors import ConfigError, EvidenceError
from relay.canonical import (
    GENESIS,
    LineError,
    chain_hash,
    fast_record,
    line_parts,
    strict_record,
)
from relay.gaps import DEFAULT_LAG_THRESHOLD_S
from relay.logs.base import AuditLog, LogEntry
from relay.manifest import (
    REPORTED_META_ACTIONS,
    PackagePaths,
    WindowFacts,
    anchor_of,
    describe,
    meta_event,
    parse_manifest,
    rotation_problem,
    summary_sha256,
    window_bounds,
    write_signed,
)
from relay.signing import fingerprint, load_private_key, public_pem, sign_digest
from relay.statements import CheckedGapFinder
from relay.summary import format_summary

__all__ = ["ExportError", "PackagePaths", "WindowStream", "export_window", "window_bounds"]


class ExportError(EvidenceError):
    """The log itself fails the chain check while being exported (exit 1: tampered)."""


@dataclass
class _Scan:
    facts: WindowFacts
    finder: CheckedGapFinder
    prev: str | None = None


def _check_and_note(scan: _Scan, line: bytes) -> None:
    """Check one record's hash and link, and note what the manifest reports."""
    facts = scan.facts
    number = facts.count + 1
    try:
        fast = fast_record(line.rstrip(b"\n"))
        if fast is None:
            prev_hash, payload, digest = line_parts(line)
            record = strict_record(payload)
        else:  # proven canonical, with the record it read (as verify does)
            prev_hash, payload, digest, record = (
                fast[0].decode(),
                fast[1],
                fast[2].decode(),
                fast[3],
            )
            if record.get("action") in REPORTED_META_ACTIONS:
                record = strict_record(payload)
    except LineError as exc:
        raise ExportError(f"log record {number} of the window is unreadable: {exc}") from exc
    tags = record.get("soc2_controls")
    tags = [] if tags is None else tags
    seq, stamp = record.get("sequence"), record.get("timestamp_utc")
    if (
        type(seq) is not int
        or type(stamp) is not str
        or len(stamp) != 27
        or stamp[-1] != "Z"
        or type(tags) is not list
        or not all(type(t) is str for t in tags)
        or not isinstance(record.get("chain_id"), str | None)
    ):
        raise ExportError(f"log record {number} of the window has mistyped fields")
    if chain_hash(prev_hash, payload.decode()) != digest:
        raise ExportError(
            f"log record {number} of the window fails its hash: "
            "the log was altered; do not hand this export to an auditor"
        )
    action = record.get("action")
    legacy_rotation = action == "sentinel_rotation" and prev_hash == GENESIS
    if scan.prev is not None and prev_hash != scan.prev and not legacy_rotation:
        raise ExportError(f"log record {number} of the window does not link to the one before it")
    head = facts.head
    if facts.count == 0:
        facts.chain_id = record.get("chain_id")
    elif record.get("chain_id") != facts.chain_id:
        raise ExportError(f"log record {number} of the window belongs to another chain")
    if head is not None:
        if stamp < head["timestamp_utc"]:
            raise ExportError(f"log record {number} of the window goes back in time")
        before = (head["sequence"], head["hash"])
        if action == "sentinel_rotation":
            problem = rotation_problem(record, prev_hash, before, log_start=False)
        else:
            problem = None if seq == before[0] + 1 else f"sequence {seq} follows {before[0]}"
        if problem:
            raise ExportError(f"log record {number} of the window: {problem}")
    facts.count = number
    scan.finder.add(record)
    if facts.anchor is None:
        facts.anchor = anchor_of(record, prev_hash)
        facts.first_timestamp = record["timestamp_utc"]
    facts.head = {
        "sequence": record["sequence"],
        "hash": digest,
        "timestamp_utc": record["timestamp_utc"],
    }
    facts.last_timestamp = record["timestamp_utc"]
    facts.controls.update(tags)
    if action in REPORTED_META_ACTIONS:
        facts.meta_events.append(meta_event(number, record))
    scan.prev = digest


def _point(entry: LogEntry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "sequence": entry.sequence,
        "hash": entry.record_hash,
        "timestamp_utc": entry.timestamp_utc,
    }


def _last_before(audit_log: AuditLog, since: str, tail: LogEntry | None) -> LogEntry | None:
    """The chain's last record before ``since`` (an empty window's anchor and head)."""
    if tail is None or tail.timestamp_utc < since:
        return tail
    last = None
    for last in audit_log.read(None, since):  # noqa: B007 - a backfill of a quiet window
        pass
    return last


def _entries_between(audit_log: AuditLog, after: dict[str, Any], since: str) -> Iterator[bytes]:
    """Lines of the records after the previous export's head and before this window."""
    for entry in audit_log.read(after.get("timestamp_utc"), since):
        if entry.sequence > after["sequence"]:
            yield entry.line.encode() + b"\n"


def window_lines(audit_log: AuditLog, since: str, until: str) -> Iterator[bytes]:
    """The export JSONL's lines for [since, until): what export writes and serve streams."""
    return (entry.line.encode() + b"\n" for entry in audit_log.read(since, until))


def _refuse_other_chains(audit_log: AuditLog, tail: LogEntry | None) -> None:
    others = audit_log.chain_ids() if tail is None and hasattr(audit_log, "chain_ids") else []
    if others:  # a log of other chains only: a mistyped --chain, not a quiet week
        raise ConfigError(
            f"the log holds no record of chain {getattr(audit_log, 'chain_id', '?')!r}, "
            f"only of {', '.join(map(repr, others))}: check --chain (nothing was exported)"
        )


class _NoGapFinder:
    def add(self, record: dict[str, Any]) -> None:
        pass


_NO_GAPS = _NoGapFinder()


class WindowStream:
    """The JSONL of a window in chunks, each record checked (hash, link, order) as
    ``export_window`` checks it before writing: the bytes are the export file's bytes.
    A record that fails raises ExportError mid-stream, so a reader must treat a stream
    that ends without completing as no evidence. ``facts`` holds the count and head
    once the chunks are consumed."""

    def __init__(
        self, audit_log: AuditLog, start: date, end: date, chunk_bytes: int = 256 * 1024
    ) -> None:
        self.since, self.until = window_bounds(start, end)
        self.audit_log = audit_log
        self.chunk_bytes = chunk_bytes
        self.tail = audit_log.tail()
        _refuse_other_chains(audit_log, self.tail)
        # the gaps go into a manifest; a stream has none, so it skips their analysis
        self._scan = _Scan(WindowFacts(), _NO_GAPS)  # type: ignore[arg-type]
        self.complete = False

    @property
    def facts(self) -> WindowFacts:
        return self._scan.facts

    def chunks(self) -> Iterator[bytes]:
        pending: list[bytes] = []
        size = 0
        for line in window_lines(self.audit_log, self.since, self.until):
            _check_and_note(self._scan, line)
            pending.append(line)
            size += len(line)
            if size >= self.chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)
        self.complete = True

    def head(self) -> dict[str, Any]:
        """The window's last record (where the chain stood at its end)."""
        if self.facts.head is not None:
            return {k: self.facts.head[k] for k in ("sequence", "hash")}
        before = _last_before(self.audit_log, self.since, self.tail)
        return (
            {"sequence": before.sequence, "hash": before.record_hash}
            if before
            else {
                "sequence": 0,
                "hash": GENESIS,
            }
        )


def _read_previous(path: Path) -> tuple[dict[str, Any], str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--previous: cannot read {path}: {exc.strerror}") from None
    try:
        return parse_manifest(data, f"--previous {path}"), hashlib.sha256(data).hexdigest()
    except EvidenceError as exc:
        raise ConfigError(str(exc)) from None


def _write_lines(target: Path, lines: Iterator[bytes], note: Callable[[bytes], None]) -> str:
    """Write lines to ``target`` (atomically, fsynced); returns the SHA-256 hex."""
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        for line in lines:
            note(line)
            out.write(line)
            digest.update(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, target)  # never leave a half-written file under the real name
    return digest.hexdigest()


def export_window(
    audit_log: AuditLog,
    start: date,
    end: date,
    out_dir: Path,
    signing_key_path: Path,
    controls: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    previous: Path | None = None,
    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
) -> tuple[PackagePaths, dict[str, Any]]:
    """Write the evidence package for [start, end]; returns its paths and manifest."""
    since, until = window_bounds(start, end)
    key = load_private_key(signing_key_path)  # fail before writing anything
    public_key = key.public_key()
    old = _read_previous(previous) if previous else None
    tail = audit_log.tail()
    _refuse_other_chains(audit_log, tail)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_chain = getattr(audit_log, "chain_id", None)
    paths = PackagePaths.for_window(out_dir, start, end, log_chain)
    scan = _Scan(WindowFacts(), CheckedGapFinder([public_key], lag_threshold_s))

    def note(line: bytes) -> None:
        _check_and_note(scan, line)
        if progress and scan.facts.count % 50_000 == 0:
            progress(scan.facts.count)

    file_sha256 = _write_lines(paths.jsonl, window_lines(audit_log, since, until), note)
    facts = scan.facts
    if facts.count == 0:  # an empty window still names where the chain stood
        before = _last_before(audit_log, since, tail)
        facts.head = _point(before) or {"sequence": 0, "hash": GENESIS, "timestamp_utc": None}
        facts.anchor = {"sequence": facts.head["sequence"], "hash": facts.head["hash"]}
        if before is not None:
            try:
                chain_id = strict_record(before.line).get("chain_id")
            except LineError as exc:
                raise ExportError(
                    f"the log's record before the window is unreadable: {exc}"
                ) from None
            facts.chain_id = chain_id if isinstance(chain_id, str) else None
        facts.chain_id = facts.chain_id or log_chain
    paths.signature.write_bytes(sign_digest(bytes.fromhex(file_sha256), key))
    paths.public_key.write_bytes(public_pem(public_key))

    after_lines = scan.finder.note_statements_after(audit_log, until)
    facts.gaps = [g.as_dict() for g in scan.finder.result()]

    reported = controls or [c for c in CONTROL_ORDER if facts.controls.get(c)]
    rotations = [m["record"] for m in facts.meta_events if m["action"] == "sentinel_rotation"]
    summary = format_summary(facts.controls, reported, rotations)
    paths.summary.write_text(summary)
    key_fingerprint = fingerprint(public_key)
    manifest = describe(
        facts,
        paths.jsonl.name,
        start,
        end,
        reported,
        lag_threshold_s,
        summary_sha256(summary),
        key_fingerprint,
    )
    manifest.update(
        {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "generator": f"flagtrail {__version__}",
            "sha256": file_sha256,
            "chain_head_at_export": _point(tail),
            "statements_after_window": after_lines,
            "public_key": paths.public_key.name,
            "public_key_fingerprint": key_fingerprint,
            "previous_export": None,
            "link": None,
        }
    )
    if old is not None:
        _link_previous(audit_log, manifest, old, paths, since, facts)
    if manifest["link"] is None:
        paths.link.unlink(missing_ok=True)  # a stale one from an earlier run binds nothing
    write_signed(paths.manifest, paths.manifest_signature, manifest, key)
    return paths, manifest


def _link_previous(
    audit_log: AuditLog,
    manifest: dict[str, Any],
    old_and_digest: tuple[dict[str, Any], str],
    paths: PackagePaths,
    since: str,
    facts: WindowFacts,
) -> None:
    """Name the previous export's head; carry the records between it and this anchor."""
    old, old_digest = old_and_digest
    old_head = old.get("head") or {"sequence": 0, "hash": GENESIS}
    if old.get("chain_id") not in (None, facts.chain_id) and facts.chain_id is not None:
        raise ConfigError(
            f"--previous is an export of chain {old.get('chain_id')!r}, not {facts.chain_id!r}"
        )
    manifest["previous_export"] = {
        "sequence": old_head["sequence"],
        "hash": old_head["hash"],
        "manifest_sha256": old_digest,
        "evidence_file": old.get("evidence_file"),
    }
    anchor = facts.anchor or {"sequence": 0, "hash": GENESIS}
    if old_head["sequence"] >= anchor["sequence"]:
        return  # the old head is this anchor or inside this window: verify finds it there
    link = _Scan(WindowFacts(), CheckedGapFinder([], DEFAULT_LAG_THRESHOLD_S), old_head["hash"])
    sha = _write_lines(
        paths.link,
        _entries_between(audit_log, old_head, since),
        lambda line: _check_and_note(link, line),
    )
    first, last = link.facts.anchor, link.facts.head
    if last is None or last["hash"] != anchor["hash"] or (first or {})["hash"] != old_head["hash"]:
        raise ExportError(
            "the log between the previous export's head and this window does not link "
            "(the log was rewritten or lost since the previous export)"
        )
    manifest["link"] = {
        "file": paths.link.name,
        "record_count": link.facts.count,
        "sha256": sha,
        "from_sequence": old_head["sequence"],
        "to_sequence": anchor["sequence"],
    }
