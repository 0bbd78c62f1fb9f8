"""Finding gaps an auditor will ask about, and matching them to documented ones.

A gap is evidence that may be late or missing: a relay outage (events that
reached the log long after they were recorded), a silence (no events for
longer than expected), a sequence jump, or a sentinel rotation. An operator
documents a gap with a signed ``gap_documented`` meta-event; a gap counts as
documented when such a statement's time range covers it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from producers.events import parse_timestamp
from relay.logs.base import AuditLog

DEFAULT_LAG_THRESHOLD_S = 300.0


@dataclass
class Gap:
    kind: str  # relay_outage | silence | sequence_jump | rotation
    start: str
    end: str
    detail: str
    sequence: int
    documented_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GapFinder:
    """Fed records in chain order; keeps only what the gaps need (streaming)."""

    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S
    silence_threshold_s: float | None = None
    gaps: list[Gap] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    _previous: dict[str, Any] | None = None
    _outage: Gap | None = None

    def add(self, record: dict[str, Any]) -> None:
        action, sequence, stamp = record.get("action"), record["sequence"], record["timestamp_utc"]
        previous = self._previous
        if action == "gap_documented":
            self.note_statement(record)
        if action == "sentinel_rotation":
            meta = record.get("meta") or {}
            self.gaps.append(
                Gap(
                    "rotation",
                    stamp,
                    stamp,
                    f"chain restarted from GENESIS: {meta.get('reason', '')}",
                    sequence,
                    # a rotation documents itself: it says why and names the old head
                    documented_by=record.get("event_id"),
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
            silence = _seconds(previous["timestamp_utc"], stamp)
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
        self._note_delay(record, sequence)
        self._previous = {"sequence": sequence, "timestamp_utc": stamp}

    def _note_delay(self, record: dict[str, Any], sequence: int) -> None:
        relayed_at = record.get("relayed_at")
        if not relayed_at:
            return
        if _seconds(record["recorded_at"], relayed_at) <= self.lag_threshold_s:
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

    def note_statement(self, record: dict[str, Any]) -> None:
        meta = record.get("meta") or {}
        if meta.get("from") and meta.get("to"):
            self.statements.append({"event_id": record.get("event_id"), **meta})

    def note_statements_after(self, audit_log: AuditLog, until: str) -> None:
        """Gaps are usually documented after they happen: read the statements the log
        holds from ``until`` on."""
        for entry in audit_log.read(until, None):
            if '"action":"gap_documented"' in entry.line:
                self.note_statement(orjson.loads(entry.line))

    def result(self) -> list[Gap]:
        for gap in self.gaps:
            if gap.documented_by:
                continue
            for statement in self.statements:
                if statement["from"] <= gap.start and gap.end <= statement["to"]:
                    gap.documented_by = statement["event_id"]
                    break
        return self.gaps


def _seconds(earlier: str, later: str) -> float:
    return (parse_timestamp(later) - parse_timestamp(earlier)).total_seconds()
