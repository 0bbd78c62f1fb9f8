"""Finding gaps an auditor will ask about, and matching them to documented ones.

A gap is evidence that may be late or missing: a relay outage (events that
reached the log long after they were recorded), a silence (no events for
longer than expected), a sequence jump, an automatic or unsigned sentinel
rotation, a producer clock running ahead of the relay's (clock_skew), an
outbox row the relay could not seal (quarantined), or, when asked
(``check_state``), a flag change whose ``before`` is not what the previous
change left (state_break: a change made outside flagtrail). An operator
documents a gap with a signed ``gap_documented`` meta-event; a gap counts as
documented when such a statement's time range covers it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from producers.events import parse_timestamp
from relay.canonical import LineError, strict_record
from relay.continuity import ContinuityChecker
from relay.logs.base import AuditLog

DEFAULT_LAG_THRESHOLD_S = 300.0
DEFAULT_CLOCK_SKEW_TOLERANCE_S = 5.0


@dataclass
class Gap:
    kind: str  # relay_outage | silence | sequence_jump | rotation | clock_skew | quarantined
    # | state_break
    start: str
    end: str
    detail: str
    sequence: int
    documented_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _moment(record: dict[str, Any], name: str) -> datetime:
    """A record's timestamp field, parsed once (the checks below compare moments)."""
    value = record.get(name)
    if not isinstance(value, str):
        raise LineError(f"field {name!r} is missing or not a string")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise LineError(f"field {name!r} is not a timestamp") from None


@dataclass
class GapFinder:
    """Fed records in chain order; keeps only what the gaps need (streaming).

    ``add`` takes a record as ``relay.canonical.strict_record`` decoded it and
    raises LineError (never anything else) when a field a gap needs is unusable.
    """

    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S
    silence_threshold_s: float | None = None
    clock_skew_tolerance_s: float = DEFAULT_CLOCK_SKEW_TOLERANCE_S
    # state continuity needs every change: off where a caller feeds a subset (verify)
    # and where the manifest's gaps are derived (export and verify must agree)
    check_state: bool = False
    gaps: list[Gap] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    _previous: dict[str, Any] | None = None
    _outage: Gap | None = None
    _skew: Gap | None = None
    _skewed: int = 0
    _continuity: ContinuityChecker = field(default_factory=ContinuityChecker)

    def add(self, record: dict[str, Any]) -> None:
        action, sequence = record.get("action"), record.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise LineError("field 'sequence' is missing or not an integer")
        if self.check_state:
            found = self._continuity.add(record)
            if found is not None:
                stamp = str(record.get("timestamp_utc"))
                self.gaps.append(Gap("state_break", stamp, stamp, found.describe(), sequence))
        stamp, stamp_at = record.get("timestamp_utc"), _moment(record, "timestamp_utc")
        recorded_at = _moment(record, "recorded_at")
        relayed_at = None if record.get("relayed_at") is None else _moment(record, "relayed_at")
        previous = self._previous
        if action == "gap_documented":
            self.note_statement(record)
        if action == "sentinel_rotation":
            self.gaps.append(_rotation_gap(record, sequence, stamp))
        if action == "quarantined":  # a change whose evidence is not in the chain
            meta = record.get("meta") or {}
            self.gaps.append(
                Gap(
                    "quarantined",
                    stamp,
                    stamp,
                    f"outbox row {meta.get('outbox_position')} could not be sealed: "
                    f"{meta.get('reason')}",
                    sequence,
                )
            )
        if previous is not None:
            if sequence != previous["sequence"] + 1:
                self.gaps.append(
                    Gap(
                        "sequence_jump",
                        previous["timestamp_utc"],
                        stamp,
                        f"sequence {previous['sequence']} → {sequence}",
                        sequence,
                    )
                )
            silence = (stamp_at - previous["at"]).total_seconds()
            if self.silence_threshold_s is not None and silence > self.silence_threshold_s:
                self.gaps.append(
                    Gap(
                        "silence",
                        previous["timestamp_utc"],
                        stamp,
                        f"no events for {silence / 3600:.1f} h",
                        sequence,
                    )
                )
        if relayed_at is not None:
            self._note_delay(record, sequence, (relayed_at - recorded_at).total_seconds())
        self._note_skew(
            record,
            sequence,
            stamp,
            0.0 if relayed_at is None else (recorded_at - relayed_at).total_seconds(),
        )
        self._previous = {"sequence": sequence, "timestamp_utc": stamp, "at": stamp_at}

    def _note_skew(self, record: dict[str, Any], sequence: int, stamp: str, ahead: float) -> None:
        """A producer clock ahead of the relay's (recorded_at after relayed_at): the
        relay bounded the stamp, but the producer's host needs its clock fixed.
        Consecutive skewed events make one finding."""
        if ahead <= self.clock_skew_tolerance_s:
            self._skew = None
            return
        if self._skew is None:
            self._skew, self._skewed = Gap("clock_skew", stamp, stamp, "", sequence), 0
            self.gaps.append(self._skew)
        self._skewed += 1
        self._skew.end = stamp
        self._skew.detail = (
            f"{self._skewed} event(s) recorded by a producer clock up to {ahead:.0f} s ahead "
            f"of the relay's (tolerance {self.clock_skew_tolerance_s:g} s); last recorded_at "
            f"{record['recorded_at']}"
        )

    def _note_delay(self, record: dict[str, Any], sequence: int, lag: float) -> None:
        relayed_at = record["relayed_at"]
        if lag <= self.lag_threshold_s:
            self._outage = None
            return
        outage = self._outage
        if outage is not None and record["recorded_at"] <= outage.end:
            outage.end = max(outage.end, relayed_at)
            outage.detail = f"events reached the log late (up to {relayed_at})"
            return
        self._outage = Gap(
            "relay_outage",
            record["recorded_at"],
            relayed_at,
            f"events reached the log more than {self.lag_threshold_s:.0f} s "
            "after they were recorded",
            sequence,
        )
        self.gaps.append(self._outage)

    def restart_from(self, record: dict[str, Any]) -> None:
        """Resume the analysis at ``record``, the last of a run of records left out
        because they could not open or change a gap (verify's shortcut): nothing
        before it is compared with it."""
        self._previous = None
        self.add(record)

    def note_statement(self, record: dict[str, Any]) -> None:
        meta = record.get("meta") or {}
        if isinstance(meta.get("from"), str) and isinstance(meta.get("to"), str):
            self.statements.append({"event_id": record.get("event_id"), **meta})

    def note_statements_after(self, audit_log: AuditLog, until: str) -> list[str]:
        """Gaps are usually documented after they happen: read the statements the log
        holds from ``until`` on; returns the lines read (an export carries them)."""
        lines = []
        for entry in audit_log.read(until, None):
            if '"action":"gap_documented"' in entry.line:
                try:
                    self.note_statement(strict_record(entry.line))
                except LineError:  # an unreadable statement documents nothing
                    continue
                lines.append(entry.line)
        return lines

    def result(self) -> list[Gap]:
        for gap in self.gaps:
            if gap.documented_by:
                continue
            for statement in self.statements:
                if statement["from"] <= gap.start and gap.end <= statement["to"]:
                    gap.documented_by = statement["event_id"]
                    break
        return self.gaps


def _rotation_gap(record: dict[str, Any], sequence: int, stamp: str) -> Gap:
    """A new epoch. An operator's signed rotation documents itself (it says why and who
    signed); an automatic one means the log lost or changed records, so it stays
    undocumented until a signed gap_documented statement covers its time."""
    meta = record.get("meta") or {}
    signed = meta.get("automatic") is False and bool(meta.get("statement_signature"))
    if meta.get("automatic") is True:
        detail = (
            f"the relay found the log tampered and started a new epoch after sequence "
            f"{meta.get('previous_sequence')} (last trusted sequence "
            f"{meta.get('last_trusted_sequence')}): {meta.get('reason', '')}"
        )
    else:
        detail = f"operator rotation by {meta.get('rotated_by', '?')}: {meta.get('reason', '')}"
    return Gap(
        "rotation", stamp, stamp, detail, sequence, record.get("event_id") if signed else None
    )
