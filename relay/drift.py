"""Drift check (seed, Step 4): a sharp drop in weekly event counts means a broken pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

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
    since, until = window_bounds(start, end)
    return sum(1 for _ in audit_log.read(since, until))


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
