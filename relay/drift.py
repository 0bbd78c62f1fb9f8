"""Drift check (seed, Step 4): a sharp drop in weekly event counts means a broken pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from producers.errors import EvidenceError
from relay.canonical import LineError, strict_record
from relay.export import window_bounds
from relay.logs.base import AuditLog


@dataclass(frozen=True)
class DriftReport:
    week: tuple[date, date]
    count: int
    trailing: list[int]
    threshold: float

    @property
    def baseline(self) -> float:
        return sum(self.trailing) / len(self.trailing) if self.trailing else 0.0

    @property
    def dropped(self) -> bool:
        return self.baseline > 0 and self.count < self.threshold * self.baseline


def count_window(audit_log: AuditLog, start: date, end: date) -> int:
    """Records in the window, each decoded strictly: a count that includes a line no
    reader can use would hide a broken log behind a normal-looking number."""
    since, until = window_bounds(start, end)
    count = 0
    for entry in audit_log.read(since, until):
        try:
            strict_record(entry.line)
        except LineError as exc:
            raise EvidenceError(
                f"log record at sequence {entry.sequence} is unreadable ({exc}): the log is "
                "damaged; run `flagtrail verify` on an export of this window"
            ) from None
        count += 1
    return count


def check_drift(audit_log: AuditLog, as_of: date, weeks: int, threshold: float) -> DriftReport:
    """The 7 days ending ``as_of`` against the mean of the ``weeks`` 7-day spans before."""
    end = as_of
    start = end - timedelta(days=6)
    count = count_window(audit_log, start, end)
    trailing = [
        count_window(audit_log, start - timedelta(days=7 * k), end - timedelta(days=7 * k))
        for k in range(1, weeks + 1)
    ]
    return DriftReport((start, end), count, trailing, threshold)
