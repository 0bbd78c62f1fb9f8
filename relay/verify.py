"""``flagtrail verify``: chain, manifest and signatures, checked without trusting the exporter.

The chain is checked in parallel: every record carries its own ``prev_hash``,
so chunks of the file are hashed independently and only the links across chunk
boundaries are stitched afterwards. The same pass checks each record against
the signed manifest's window and chain id, counts controls and collects what
the gap analysis needs; the manifest's facts are then recomputed (with the
function the export used) and compared field by field.

Exit codes: 0 intact and signed by a trusted key; 1 a check failed (tampered,
truncated, bad or missing signature, a manifest that lies); 4 intact but signed
by a key the user did not name as trusted.

What this cannot catch (an anchor outside the host is needed): an insider who
holds the signing key can rewrite the log and sign a consistent package for
it; ``--previous`` catches that only against an export the auditor kept from
before. Such an insider can also restate the fields verify cannot recompute
(generated_at, generator, chain_head_at_export, the gap lag threshold, which
verify reports when it is not the default).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from producers.errors import EXIT_OK, EXIT_TAMPERED, EXIT_UNTRUSTED_KEY, ConfigError, EvidenceError
from relay.canonical import (
    GENESIS,
    LineError,
    chain_hash,
    fast_record,
    line_parts,
    payload_action,
    seed_parts,
    split_lines,
    strict_record,
)
from relay.gaps import DEFAULT_LAG_THRESHOLD_S
from relay.manifest import (
    NOT_DERIVED,
    REPORTED_META_ACTIONS,
    PackagePaths,
    WindowFacts,
    anchor_of,
    describe,
    manifest_window,
    meta_event,
    parse_manifest,
    read_file,
    rotation_problem,
    summary_sha256,
    window_stem,
)
from relay.signing import PublicKey, fingerprint, load_public_key, signature_valid
from relay.statements import CheckedGapFinder, is_automatic_rotation, operator_rotation_signed
from relay.summary import format_summary
from relay.trust import Trust

PARALLEL_THRESHOLD_BYTES = 8 * 1024 * 1024
# records the gap analysis reads whole: they open or document gaps by themselves
WHOLE_ACTIONS = (*REPORTED_META_ACTIONS, "quarantined")
# what the gap analysis reads from an ordinary record (meta-events travel whole)
GAP_FIELDS = ("action", "sequence", "timestamp_utc", "recorded_at", "relayed_at", "event_id")
_GENESIS_BYTES = GENESIS.encode()


@dataclass(frozen=True)
class Finding:
    record: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.record}: {self.reason}"


@dataclass(frozen=True)
class Expect:
    """What every record must satisfy (from the signed manifest); None: not checked."""

    since: str | None = None
    until: str | None = None
    chain_id: str | None = None
    probe_sequence: int | None = None
    semantic: bool = True
    lag_s: float = DEFAULT_LAG_THRESHOLD_S


@dataclass
class ChunkResult:
    lines: int = 0
    first_prev: str | None = None
    first_is_legacy_rotation: bool = False
    last_hash: str | None = None
    finding: Finding | None = None  # record numbers local to the chunk
    first_record: dict[str, Any] | None = None
    last_sequence: int | None = None
    last_timestamp: str | None = None
    chain_id: str | None = None
    controls: Counter[str] = field(default_factory=Counter)
    meta: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (local number, record)
    rotations: list[int] = field(default_factory=list)  # local numbers
    # what the gap analysis needs, in order: (restart, row). A run of ordinary records
    # that cannot open or extend a gap (on time, not a meta-event) is sent as its last
    # record only, with restart=True: the analysis resumes from it (the file's sequence
    # continuity is checked here, record by record)
    gap_rows: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)
    probe_hash: str | None = None


@dataclass
class RotationNote:
    record: int
    sequence: int
    previous: str
    kind: str  # operator (signed) | operator (UNSIGNED) | automatic

    def __str__(self) -> str:
        return (
            f"Sentinel rotation at record {self.record} (sequence {self.sequence}): "
            f"{self.kind}; {self.previous}"
        )


@dataclass
class VerifyReport:
    path: Path
    records: int = 0
    finding: Finding | None = None
    rotations: list[int] = field(default_factory=list)
    rotation_notes: list[RotationNote] = field(default_factory=list)
    anchor: str = GENESIS
    anchor_source: str = "GENESIS (chain start)"
    head: str | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # facts an auditor must see (not tamper)
    signature: str = "not checked"
    signer: str | None = None
    trusted: bool = False
    chain_only: bool = False
    previous: str = "not checked (pass --previous OLD.manifest.json to check the link)"

    @property
    def intact(self) -> bool:
        return self.finding is None

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def exit_code(self) -> int:
        if self.finding is not None:
            return EXIT_TAMPERED
        return EXIT_OK if self.chain_only or self.trusted else EXIT_UNTRUSTED_KEY

    def fail(self, record: int, reason: str) -> None:
        if self.finding is None:
            self.finding = Finding(record, reason)


def _is_rotation(payload: bytes) -> bool:
    try:
        return payload_action(payload) == "sentinel_rotation"
    except ValueError:
        return False


def _gap_row(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in GAP_FIELDS}


def _lag_within(recorded: Any, relayed: str, lag_s: float) -> bool:
    """relayed - recorded in [0, lag_s]; False when either is not a timestamp."""
    try:
        lag = (datetime.fromisoformat(relayed) - datetime.fromisoformat(recorded)).total_seconds()
    except (TypeError, ValueError):
        return False
    return 0 <= lag <= lag_s


def _late_run(recorded: str, relayed: str, lag_s: float) -> tuple[str | None, str]:
    """(relayed_at, the latest recorded_at still late for it) when this record reached
    the log more than lag_s late: the records after it in its batch that are also late
    only extend the outage it opened or extended. (None, "") otherwise."""
    try:
        relayed_at = datetime.fromisoformat(relayed)
        late = (relayed_at - datetime.fromisoformat(recorded)).total_seconds() > lag_s
    except (TypeError, ValueError):
        return None, ""
    if not late:
        return None, ""
    cutoff = relayed_at - timedelta(seconds=lag_s)
    return relayed, cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_chunk(path: str, start: int, end: int, expect: Expect | None = None) -> ChunkResult:
    """Hash, link and check every record in bytes [start, end) of the file.

    The loop is written flat on purpose: it runs once per record, and at
    hundreds of thousands of records Python's per-call cost is the budget.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = split_lines(data)  # the seed's text-mode lines: a lone CR ends one too
    result = ChunkResult(lines=len(lines))
    expect = expect or Expect()
    sha256, genesis = hashlib.sha256, _GENESIS_BYTES
    semantic, since, until = expect.semantic, expect.since, expect.until
    chain_id, probe = expect.chain_id, expect.probe_sequence
    meta, gap_rows = result.meta, result.gap_rows
    lag_s = expect.lag_s
    # the window as text bounds (timestamps compare as text): "" and "~" when not checked
    since_text, until_text = since or "", until or "~"
    combos: dict[Any, int] = {}
    last_plain: dict[str, Any] | None = None
    # the late-run shortcut compares timestamps as text: exact for whole microseconds
    late_exact = round(lag_s * 1_000_000) / 1_000_000 == lag_s
    late_relayed: str | None = None
    late_cutoff = ""
    # the run's second late record rewrites the outage's detail ("late (up to …)"): the
    # finder must see it; only the records after it change nothing and may be skipped
    late_extended = False
    expected = b""
    last_seq: int = 0
    last_ts = ""
    number = 0
    for line in lines:
        number += 1  # noqa: SIM113 - enumerate costs more in this loop
        parts = fast_record(line)
        if parts is None:
            try:
                prev_text, payload, digest_text = seed_parts(line)
            except LineError as exc:
                result.finding = Finding(number, str(exc))
                return result
            # surrogatepass: an escaped lone surrogate in a hash field only fails the
            # link or hash check below, as it does in the seed's snippet
            prev = prev_text.encode("utf-8", "surrogatepass")
            digest = digest_text.encode("utf-8", "surrogatepass")
        else:
            prev, payload, digest, decoded = parts
        if sha256(prev + b":" + payload).hexdigest().encode() != digest:
            result.finding = Finding(
                number, "hash does not match the record's content (the record was edited)"
            )
            return result
        legacy = prev == genesis and _is_rotation(payload)
        if number == 1:
            result.first_prev, result.first_is_legacy_rotation = prev.decode(), legacy
        elif prev != expected and not legacy:
            result.finding = Finding(
                number,
                "prev_hash does not match the previous "
                "record's hash (a record was deleted, inserted, "
                "duplicated or reordered before this one)",
            )
            return result
        elif legacy and not semantic:
            result.rotations.append(number)
        if semantic:
            try:
                # fast_record proved the payload canonical and hands back what it read;
                # meta-events (few) and the seed path go through the strict decoder
                record = decoded if parts is not None else strict_record(payload)
                get = record.get  # bound once: this block reads eight fields a record
                action = get("action")
                if action in REPORTED_META_ACTIONS and parts is not None:
                    record = strict_record(payload)
                    get = record.get
            except (LineError, ValueError, AttributeError) as exc:
                result.finding = Finding(number, f"unreadable record: {exc}")
                return result
            seq, ts = get("sequence"), get("timestamp_utc")
            if type(seq) is not int or type(ts) is not str or len(ts) != 27 or ts[-1] != "Z":
                result.finding = Finding(number, "no integer sequence or RFC 3339 timestamp_utc")
                return result
            if number == 1:
                result.first_record = record
                result.chain_id = record.get("chain_id")
                chain_id = chain_id if chain_id is not None else result.chain_id
            if get("chain_id") != chain_id:
                result.finding = Finding(
                    number,
                    f"chain_id {get('chain_id')!r} is not the package's {chain_id!r} "
                    "(a record from another chain)",
                )
                return result
            if ts < since_text or ts >= until_text:
                result.finding = Finding(
                    number, f"timestamp_utc {ts} lies outside the window [{since}, {until})"
                )
                return result
            if ts < last_ts:
                result.finding = Finding(number, f"timestamp_utc {ts} goes back in time")
                return result
            if number > 1:
                if action == "sentinel_rotation":
                    problem = rotation_problem(
                        record, prev.decode(), (last_seq, expected.decode()), False
                    )
                    if problem:
                        result.finding = Finding(number, problem)
                        return result
                elif seq != last_seq + 1:
                    result.finding = Finding(
                        number,
                        f"sequence {seq} does not follow {last_seq} (a record is missing "
                        "or was inserted)",
                    )
                    return result
            tags = get("soc2_controls")
            try:
                key = tuple(tags) if type(tags) is list else tags
                seen = combos.get(key)
            except TypeError:
                seen, key = None, 0  # unhashable: refused just below
            if seen is None:
                if key is not None and (
                    type(key) is not tuple or not all(type(t) is str for t in key)
                ):
                    result.finding = Finding(number, "soc2_controls must list strings")
                    return result
                seen = 0
            combos[key] = seen + 1
            if action in REPORTED_META_ACTIONS:
                meta.append((number, record))
                if action == "sentinel_rotation":
                    result.rotations.append(number)
                plain, late_relayed = False, None
            elif action in WHOLE_ACTIONS:
                plain, late_relayed = False, None
            else:
                recorded, relayed = get("recorded_at"), get("relayed_at")
                plain = (
                    recorded == ts
                    and type(relayed) is str
                    and (
                        relayed == recorded
                        or (
                            len(relayed) == 27
                            and relayed > recorded
                            and relayed[:16] == recorded[:16]
                            and lag_s >= 60
                        )
                        or (late_relayed == relayed and recorded < late_cutoff and late_extended)
                        or _lag_within(recorded, relayed, lag_s)
                    )
                )
                # A record late in the same relay batch as the late one before it only
                # extends that outage (same end): plain, once the run has an opener and the
                # second record that set its detail
                if not plain and late_exact and recorded == ts and type(relayed) is str:
                    if late_relayed == relayed and recorded < late_cutoff:
                        late_extended = True
                    else:
                        late_relayed, late_cutoff = _late_run(recorded, relayed, lag_s)
                        late_extended = False
                elif not plain:
                    late_relayed = None
            if plain:
                last_plain = record
            else:
                if last_plain is not None:
                    gap_rows.append((True, _gap_row(last_plain)))
                    last_plain = None
                gap_rows.append((False, record if action in WHOLE_ACTIONS else _gap_row(record)))
            if seq == probe:
                result.probe_hash = digest.decode()
            last_seq, last_ts = seq, ts
        expected = digest
    if last_plain is not None:
        gap_rows.append((True, _gap_row(last_plain)))
    for key, count in combos.items():
        result.controls.update({tag: count for tag in key or ()})
    result.last_hash = expected.decode() if lines else None
    result.last_sequence, result.last_timestamp = (last_seq, last_ts) if lines else (None, None)
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


def _check_chain(
    path: Path, size: int, workers: int, expect: Expect
) -> tuple[list[ChunkResult], bytes]:
    if size < PARALLEL_THRESHOLD_BYTES or workers <= 1:
        return [check_chunk(str(path), 0, size, expect)], _file_sha256(path)
    bounds = _chunk_bounds(path, size, workers * 4)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(check_chunk, str(path), a, b, expect) for a, b in bounds]
        file_digest = _file_sha256(path)  # the parent hashes the file meanwhile
        return [f.result() for f in futures], file_digest


@dataclass
class _Stitched:
    facts: WindowFacts
    gap_rows: list[tuple[bool, dict[str, Any]]]
    meta: list[tuple[int, dict[str, Any]]]
    probe_hash: str | None


def _stitch(
    report: VerifyReport, chunks: list[ChunkResult], anchor_seq: int | None
) -> _Stitched | None:
    """Join the chunks: links, sequences, time and chain id across their boundaries."""
    expected, offset = report.anchor, 0
    facts = WindowFacts()
    gap_rows: list[tuple[bool, dict[str, Any]]] = []
    meta: list[tuple[int, dict[str, Any]]] = []
    probe_hash = None
    last_seq, last_ts = anchor_seq, ""
    for chunk in chunks:
        if not chunk.lines:
            continue
        first = chunk.first_record
        if chunk.finding and chunk.first_prev is None:  # its first line is unreadable
            report.fail(offset + chunk.finding.record, chunk.finding.reason)
            return None
        if chunk.first_prev != expected and not chunk.first_is_legacy_rotation:
            where = (
                ("the anchor " + report.anchor_source)
                if offset == 0
                else "the previous record's hash"
            )
            report.fail(
                offset + 1,
                f"prev_hash does not match {where} "
                "(deleted, inserted or reordered record, or a "
                "window that needs --anchor)",
            )
            return None
        if first is not None:  # semantic checks across the boundary
            rotation = first.get("action") == "sentinel_rotation"
            if facts.chain_id is None and offset == 0:
                facts.chain_id = chunk.chain_id
            elif chunk.chain_id != facts.chain_id:
                report.fail(offset + 1, "a record from another chain")
                return None
            if first["timestamp_utc"] < last_ts:
                report.fail(offset + 1, f"timestamp_utc {first['timestamp_utc']} goes back")
                return None
            if rotation and last_seq is not None:
                problem = rotation_problem(
                    first,
                    chunk.first_prev or "",
                    (last_seq, expected),
                    log_start=offset == 0 and expected == GENESIS,
                )
                if problem:
                    report.fail(offset + 1, problem)
                    return None
            elif not rotation and last_seq is not None and first["sequence"] != last_seq + 1:
                report.fail(offset + 1, f"sequence {first['sequence']} does not follow {last_seq}")
                return None
        if chunk.finding:
            report.fail(offset + chunk.finding.record, chunk.finding.reason)
            return None
        if first is not None:
            if offset == 0:
                facts.anchor = anchor_of(first, chunk.first_prev or "")
                facts.first_timestamp = first["timestamp_utc"]
            facts.controls.update(chunk.controls)
            gap_rows += chunk.gap_rows
            meta += [(offset + n, r) for n, r in chunk.meta]
            probe_hash = probe_hash or chunk.probe_hash
            last_seq, last_ts = chunk.last_sequence, chunk.last_timestamp or last_ts
        report.rotations += [offset + n for n in chunk.rotations]
        if chunk.first_is_legacy_rotation and first is None:
            report.rotations.append(offset + 1)
        offset += chunk.lines
        expected = chunk.last_hash or expected
    report.records, report.head = offset, expected if offset else None
    facts.count = offset
    if offset and last_seq is not None:
        facts.head = {"sequence": last_seq, "hash": expected, "timestamp_utc": last_ts}
        facts.last_timestamp = last_ts
    return _Stitched(facts, gap_rows, meta, probe_hash)


def _rotation(record: dict[str, Any]) -> bool:
    return record.get("action") == "sentinel_rotation"


# -- signatures ------------------------------------------------------------------------------
def _package_key(paths: PackagePaths, manifest: dict[str, Any] | None) -> PublicKey | None:
    name = (manifest or {}).get("public_key")
    plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
    shipped = paths.jsonl.with_name(name) if plain else None
    for candidate in (shipped, paths.public_key):
        if candidate is not None and candidate.is_file():
            try:
                return load_public_key(candidate)
            except ConfigError:
                return None
    return None


def _find_signer(
    report: VerifyReport,
    trust: Trust,
    package_key: PublicKey | None,
    digest: bytes,
    signature: bytes,
) -> PublicKey | None:
    candidates = list(trust.keys) + ([package_key] if package_key is not None else [])
    if not candidates:
        report.signature = (
            "NOT CHECKED: no key to check it with (pass the registered key: --pubkey PEM, "
            "--key-fingerprint SHA256:…, or FLAGTRAIL_TRUSTED_KEYS)"
        )
        return None
    for key in candidates:
        if signature_valid(digest, signature, key):
            return key
    report.signature = "INVALID"
    report.fail(
        max(report.records, 1),
        "the signature does not match the file (changed after signing, or signed by "
        "another key than the registered one)",
    )
    return None


def _check_signatures(
    report: VerifyReport,
    paths: PackagePaths,
    trust: Trust,
    manifest: dict[str, Any],
    manifest_data: bytes,
    file_digest: bytes,
) -> PublicKey | None:
    signature = read_file(paths.signature, "signature file")
    manifest_signature = read_file(paths.manifest_signature, "manifest signature")
    signer = _find_signer(report, trust, _package_key(paths, manifest), file_digest, signature)
    if signer is None:
        return None
    mark = fingerprint(signer)
    report.signer, report.trusted = mark, trust.trusts(signer)
    if not signature_valid(hashlib.sha256(manifest_data).digest(), manifest_signature, signer):
        report.fail(
            max(report.records, 1),
            "the manifest's signature does not check with the key that signed the file "
            "(the manifest was changed after signing)",
        )
    if manifest.get("public_key_fingerprint") != mark:
        report.fail(max(report.records, 1), "the manifest names another signing key")
    if report.trusted:
        report.signature = f"valid, signed by a trusted key {mark}"
    else:
        report.signature = (
            f"signed by an untrusted key {mark} — compare with the registered key "
            "(pass it with --pubkey, --key-fingerprint or FLAGTRAIL_TRUSTED_KEYS)"
        )
    return signer


# -- manifest facts ---------------------------------------------------------------------------
def _statement_records(manifest: dict[str, Any], report: VerifyReport) -> list[dict[str, Any]]:
    """Gap statements written after the window travel in the manifest: each must be a
    whole, self-consistent record of this chain, from the window's end on."""
    records = []
    for n, line in enumerate(manifest["statements_after_window"], 1):
        try:
            prev, payload, digest = line_parts(line.encode())
            record = strict_record(payload)
        except (LineError, UnicodeEncodeError) as exc:
            report.fail(max(report.records, 1), f"statement {n} after the window: {exc}")
            continue
        if (
            chain_hash(prev, payload.decode()) != digest
            or record.get("action") != "gap_documented"
            or record.get("chain_id") != manifest.get("chain_id")
            or str(record.get("timestamp_utc")) < manifest["window"].get("until_utc", "")
        ):
            report.fail(
                max(report.records, 1),
                f"statement {n} after the window is not a gap_documented record of this "
                "chain from after the window, or fails its hash",
            )
            continue
        records.append(record)
    return records


def _recompute(
    report: VerifyReport,
    stitched: _Stitched,
    manifest: dict[str, Any],
    statement_keys: list[PublicKey],
    paths: PackagePaths,
) -> None:
    facts = stitched.facts
    if facts.count == 0:  # an empty window: where the chain stood is the manifest's word
        facts.anchor = manifest.get("anchor")
        facts.head = manifest.get("head")
        facts.chain_id = manifest.get("chain_id")
        if (facts.anchor or {}).get("hash") != (facts.head or {}).get("hash") or (
            facts.anchor or {}
        ).get("sequence") != (facts.head or {}).get("sequence"):
            report.fail(1, "an empty window's anchor and head must be the same record")
    lag = manifest["gap_thresholds"]["lag_s"]
    if lag != DEFAULT_LAG_THRESHOLD_S:
        report.findings.append(
            f"Gaps were judged with a relay-lag threshold of {lag} s (the default is "
            f"{DEFAULT_LAG_THRESHOLD_S:.0f} s)"
        )
    finder = CheckedGapFinder(statement_keys, lag)
    for restart, row in stitched.gap_rows:
        if restart:
            finder.restart_from(row)
        else:
            finder.add(row)
    for number, record in stitched.meta:
        facts.meta_events.append(meta_event(number, record))
    for record in _statement_records(manifest, report):
        finder.note_statement(record)
    try:
        facts.gaps = [g.as_dict() for g in finder.result()]
    except (KeyError, TypeError, ValueError) as exc:
        report.fail(1, f"a record lacks what the gap analysis needs ({exc})")
        return
    start, end = manifest_window(manifest)
    reported = manifest["controls_reported"]
    rotations = [n for n, r in stitched.meta if _rotation(r)]
    summary = format_summary(facts.controls, reported, rotations)
    derived = describe(
        facts,
        paths.jsonl.name,
        start,
        end,
        reported,
        lag,
        summary_sha256(summary),
        str(manifest.get("public_key_fingerprint")),
    )
    for name, value in derived.items():
        if manifest.get(name) != value:
            report.fail(
                max(report.records, 1),
                f"the manifest's {name} does not match the package (manifest: "
                f"{_short(manifest.get(name))}; recomputed: {_short(value)})",
            )
            return
    problem = _chain_head_problem(manifest.get("chain_head_at_export"), facts.head)
    if problem:
        report.fail(max(report.records, 1), f"the manifest's chain_head_at_export {problem}")
        return
    extra = set(manifest) - set(derived) - NOT_DERIVED
    if extra:
        report.fail(1, f"the manifest has fields flagtrail does not write: {sorted(extra)}")
    try:
        on_disk = paths.summary.read_text()
    except (OSError, UnicodeDecodeError):
        report.fail(max(report.records, 1), f"summary file {paths.summary.name} is missing")
        return
    if on_disk != summary:
        report.fail(max(report.records, 1), "the summary file differs from the records' counts")
    _note_rotations(report, stitched, statement_keys, lag)
    for gap in derived["undocumented_gaps"]:
        report.findings.append(
            f"Undocumented gap ({gap['kind']}) {gap['start']} → {gap['end']}, sequence "
            f"{gap['sequence']}: {gap['detail']}"
        )
    for rejected in finder.rejected_statements:
        report.findings.append(
            f"Statement at sequence {rejected['sequence']} has no valid signature by a trusted "
            "key: it documents nothing"
        )
    report.notes.append(
        f"Manifest: signed; window {start} → {end}, chain {facts.chain_id}, "
        f"{facts.count} records, SHA-256, anchor, head, rotations, gaps, statements, "
        "control counts and summary all match"
    )


def _chain_head_problem(point: Any, head: dict[str, Any] | None) -> str | None:
    """The chain's head at export time cannot lie before the window's own head."""
    if point is None:
        return None if head is None or head.get("sequence") == 0 else "is missing"
    if (
        not isinstance(point, dict)
        or type(point.get("sequence")) is not int
        or not isinstance(point.get("hash"), str)
        or not isinstance(point.get("timestamp_utc"), str)
    ):
        return "is malformed"
    if head is None:
        return None
    if point["sequence"] < head["sequence"] or (
        point["sequence"] == head["sequence"] and point["hash"] != head["hash"]
    ):
        return "lies before or beside this window's head"
    if (
        isinstance(head.get("timestamp_utc"), str)
        and point["timestamp_utc"] < head["timestamp_utc"]
    ):
        return "is older than this window's head"
    return None


def _note_rotations(
    report: VerifyReport, stitched: _Stitched, keys: list[PublicKey], lag_s: float
) -> None:
    for number, record in stitched.meta:
        if not _rotation(record):
            continue
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        names = (
            f"names sequence {meta.get('previous_sequence')} hash "
            f"{str(meta.get('previous_hash'))[:16]}…"
        )
        if number > 1:
            names += " = the record before it"
        elif meta.get("last_trusted_sequence") is not None:
            names += f", last trusted sequence {meta.get('last_trusted_sequence')}"
        if is_automatic_rotation(record):
            kind = "automatic (relay)"
        elif operator_rotation_signed(record, keys, lag_s):
            kind = f"operator {meta.get('rotated_by')}, signed by a trusted key"
        else:
            kind = (
                f"operator {meta.get('rotated_by')}, NOT signed by a trusted key "
                "(or signed long before the relay sealed it: a replay)"
            )
            report.findings.append(
                f"Rotation at record {number} is not signed by a trusted key: it documents nothing"
            )
        report.rotation_notes.append(RotationNote(number, record["sequence"], names, kind))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "…"


# -- previous export and linking records -------------------------------------------------------
def _check_link_file(report: VerifyReport, paths: PackagePaths, manifest: dict[str, Any]) -> None:
    link, previous = manifest.get("link"), manifest.get("previous_export")
    if link is None:
        return
    if not isinstance(link, dict) or not isinstance(previous, dict):
        report.fail(1, "the manifest's link is malformed")
        return
    data = read_file(paths.link, "linking records")
    if paths.link.name != link.get("file") or hashlib.sha256(data).hexdigest() != link.get(
        "sha256"
    ):
        report.fail(1, f"{paths.link.name} is not the file the manifest binds (changed?)")
        return
    expected, seq = previous.get("hash"), previous.get("sequence")
    count = 0
    for count, line in enumerate(data.splitlines(), 1):
        try:
            prev, payload, digest = line_parts(line)
            record = strict_record(payload)
        except LineError as exc:
            report.fail(1, f"linking record {count}: {exc}")
            return
        if chain_hash(prev, payload.decode()) != digest or record.get("chain_id") != manifest.get(
            "chain_id"
        ):
            report.fail(1, f"linking record {count} fails its hash or is of another chain")
            return
        rotation = _rotation(record)
        if rotation:
            problem = rotation_problem(record, prev, (seq, expected), log_start=False)
            if problem:
                report.fail(1, f"linking record {count}: {problem}")
                return
        elif prev != expected or record.get("sequence") != (seq or 0) + 1:
            report.fail(1, f"linking record {count} does not follow the one before it")
            return
        expected, seq = digest, record.get("sequence")
    anchor = manifest.get("anchor") or {}
    if (
        count != link.get("record_count")
        or expected != anchor.get("hash")
        or seq != anchor.get("sequence")
    ):
        report.fail(1, "the linking records do not end at this window's anchor")


def _check_previous(
    report: VerifyReport,
    manifest: dict[str, Any],
    old_path: Path,
    old: dict[str, Any],
    old_data: bytes,
    probe_hash: str | None,
) -> None:
    head = old.get("head") or {"sequence": 0, "hash": GENESIS}
    named = manifest.get("previous_export")
    wanted = {
        "sequence": head["sequence"],
        "hash": head["hash"],
        "manifest_sha256": hashlib.sha256(old_data).hexdigest(),
        "evidence_file": old.get("evidence_file"),
    }
    if named != wanted:
        report.fail(1, f"the manifest's previous_export does not name {old_path.name}")
        return
    if old.get("chain_id") != manifest.get("chain_id"):
        report.fail(1, f"{old_path.name} is an export of another chain")
        return
    anchor, this_head = manifest.get("anchor") or {}, manifest.get("head") or {}
    seq, digest = head["sequence"], head["hash"]
    if seq == anchor.get("sequence"):
        ok = anchor.get("hash") == digest
    elif seq < anchor.get("sequence", 0):
        ok = manifest.get("link") is not None  # checked record by record above
    elif seq <= this_head.get("sequence", -1):
        ok = probe_hash == digest
    else:
        report.fail(
            1,
            f"the previous export's head (sequence {seq}) lies after this export's last "
            "record: verify the exports in order",
        )
        return
    if not ok:
        report.fail(
            1,
            f"the record at sequence {seq} no longer has the hash {digest[:16]}… that "
            f"{old_path.name} signed: the log was rewritten between the two exports",
        )
        return
    report.previous = f"continues {old_path.name} (sequence {seq}, hash {digest[:16]}…)"


def _load_previous(
    old_path: Path, trust: Trust, signer: PublicKey | None, report: VerifyReport
) -> tuple[dict[str, Any], bytes]:
    old_data = read_file(old_path, "--previous manifest")
    old = parse_manifest(old_data, f"--previous {old_path.name}")
    signature = read_file(
        old_path.with_name(old_path.name + ".sig"), "--previous manifest signature"
    )
    digest = hashlib.sha256(old_data).digest()
    keys = list(trust.keys) + ([signer] if signer is not None else [])
    good = next((k for k in keys if signature_valid(digest, signature, k)), None)
    if good is None:
        raise EvidenceError(
            f"--previous {old_path.name}: its signature does not check with a trusted key"
        )
    if not trust.trusts(good):
        report.trusted = False
    return old, old_data


# -- the command ---------------------------------------------------------------------------------
def verify_export(
    path: Path,
    pubkey: Path | None = None,
    anchor: str | None = None,
    workers: int | None = None,
    *,
    trust: Trust | None = None,
    previous: Path | None = None,
    chain_only: bool = False,
) -> VerifyReport:
    """Check an export. ``pubkey`` (or ``trust``) names the trusted key(s)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc.strerror}") from None
    if trust is None:
        trust = Trust.load([pubkey] if pubkey else [])
    elif pubkey is not None:
        trust.keys.append(load_public_key(pubkey))
    paths = PackagePaths.beside(path)
    report = VerifyReport(path, chain_only=chain_only)
    workers = workers or min(os.cpu_count() or 1, 8)
    if chain_only:
        return _verify_chain_only(report, paths, size, anchor, workers)

    manifest_data = read_file(paths.manifest, "manifest")
    manifest = parse_manifest(manifest_data, paths.manifest.name)
    own_key = trust.names_any_of(
        [paths.public_key, paths.jsonl.with_name(str(manifest.get("public_key") or "-"))]
    )
    if own_key is not None:
        raise ConfigError(
            f"the trusted key {own_key} is the key shipped inside the package, which proves "
            "nothing: pass the registered key (--pubkey, --key-fingerprint or "
            "FLAGTRAIL_TRUSTED_KEYS)"
        )
    start, end = manifest_window(manifest)
    chain = manifest.get("chain_id")
    expected_name = f"{window_stem(start, end, chain if isinstance(chain, str) else None)}.jsonl"
    if path.name != expected_name or manifest["evidence_file"] != path.name:
        report.fail(
            1,
            f"the file is named {path.name} but its signed manifest is for "
            f"{start} → {end} of chain {chain!r} ({expected_name}): a package renamed as "
            "another window or chain",
        )
    manifest_anchor = manifest.get("anchor") or {"sequence": 0, "hash": GENESIS}
    report.anchor, report.anchor_source = manifest_anchor["hash"], "from the signed manifest"
    if anchor:
        report.anchor, report.anchor_source = anchor, "given with --anchor"
    probe = None
    if previous is not None:  # the record at the old head's sequence, if in this file
        old_head = parse_manifest(read_file(previous, "--previous manifest")).get("head")
        probe = (old_head or {}).get("sequence")
    expect = Expect(
        manifest["window"].get("from_utc"),
        manifest["window"].get("until_utc"),
        manifest.get("chain_id"),
        probe,
        lag_s=manifest["gap_thresholds"]["lag_s"],
    )
    chunks, file_digest = _check_chain(path, size, workers, expect)
    stitched = _stitch(report, chunks, manifest_anchor["sequence"])
    if manifest["record_count"] != report.records and report.finding is None:
        report.fail(
            min(report.records, manifest["record_count"]) + 1,
            f"the manifest lists {manifest['record_count']} records, the file has "
            f"{report.records} (truncated, or records added or removed)",
        )
    if file_digest.hex() != manifest["sha256"]:
        report.fail(
            max(report.records, 1),
            "the file's SHA-256 differs from the manifest's (the file was changed after export)",
        )
    signer = _check_signatures(report, paths, trust, manifest, manifest_data, file_digest)
    if stitched is not None and report.finding is None:
        # statements count when signed by the key that signed the package (the export
        # judged them with it); an untrusted signer exits 4 whatever they say
        keys = [signer] if signer is not None else list(trust.keys)
        _recompute(report, stitched, manifest, keys, paths)
        _check_link_file(report, paths, manifest)
        if previous is not None and report.finding is None:
            old_manifest, old_data = _load_previous(previous, trust, signer, report)
            _check_previous(report, manifest, previous, old_manifest, old_data, stitched.probe_hash)
    return report


def _verify_chain_only(
    report: VerifyReport, paths: PackagePaths, size: int, anchor: str | None, workers: int
) -> VerifyReport:
    """The chain alone: hashes and links. The manifest (unsigned, unchecked) may name
    the anchor; nothing about the signer, the window or the manifest is checked."""
    if anchor:
        report.anchor, report.anchor_source = anchor, "given with --anchor"
    else:
        try:
            manifest = parse_manifest(paths.manifest.read_bytes(), paths.manifest.name)
            if manifest.get("anchor"):
                report.anchor = manifest["anchor"]["hash"]
                report.anchor_source = "from the manifest (its signature NOT checked)"
        except (OSError, EvidenceError):
            pass
    chunks, _ = _check_chain(paths.jsonl, size, workers, Expect(semantic=False))
    _stitch(report, chunks, None)
    report.signature = "NOT CHECKED (--chain-only)"
    report.notes.append(
        "Chain only: nothing about the signer, the manifest or the window was checked."
    )
    return report


def render(report: VerifyReport) -> str:
    lines = []
    if report.intact:
        lines.append(f"Chain intact: {report.records} records, no tampering detected.")
    else:
        lines.append(f"FAIL: {report.finding}")
    lines.append(f"Anchor: {report.anchor[:16]}… {report.anchor_source}")
    lines.extend(str(note) for note in report.rotation_notes)
    if not report.rotation_notes:
        lines.extend(f"Sentinel rotation at record {r}" for r in report.rotations)
    lines.extend(report.notes)
    lines.append(f"Signature: {report.signature}")
    if not report.chain_only:
        lines.append(f"Previous export: {report.previous}")
    lines.extend(f"Finding: {f}" for f in report.findings)
    return "\n".join(lines)
