"""The report's charts: inline SVG built from the records, nothing fetched.

Only presentation attributes (fill, stroke): the report's Content-Security-Policy
allows no style attribute. Every value that came from a record is escaped.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from producers.events import parse_timestamp
from relay.changes import ChangeListing, show

CHART_COLUMNS = 120  # lag chart resolution: at most this many bars whatever the window


def e(value: Any) -> str:
    """Any record value, made visible and escaped for HTML text and attributes."""
    return html.escape(show(value), quote=True)


@dataclass
class LagSeries:
    """Relay lag per record (relayed_at, else timestamp_utc, minus recorded_at), kept as
    the worst lag per minute: at most one point per minute of the window."""

    worst: dict[str, float] = field(default_factory=dict)  # "YYYY-MM-DDTHH:MM" -> seconds
    unreadable: int = 0

    def __call__(self, record: dict[str, Any]) -> None:
        stamp, recorded = record.get("timestamp_utc"), record.get("recorded_at")
        relayed = record.get("relayed_at") or stamp
        try:
            lag = (parse_timestamp(relayed) - parse_timestamp(recorded)).total_seconds()
            minute = stamp[:16]
        except (TypeError, ValueError):
            self.unreadable += 1
            return
        if lag > self.worst.get(minute, float("-inf")):
            self.worst[minute] = lag


def _week_start(stamp: str) -> str:
    day = parse_timestamp(stamp).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def changes_per_week_svg(listing: ChangeListing) -> str:
    weeks: dict[str, Counter[str]] = {}
    for kind, rows in (("change", listing.changes), ("blocked", listing.blocked)):
        for row in rows:
            try:
                week = _week_start(row["timestamp_utc"])
            except (TypeError, ValueError):
                continue
            weeks.setdefault(week, Counter())[kind] += 1
    if not weeks:
        return "<p>No changes in this window.</p>"
    # every week from the first to the last, so quiet weeks show as empty
    first, last = min(weeks), max(weeks)
    labels, day = [], datetime.fromisoformat(first)
    while day.date().isoformat() <= last:
        labels.append(day.date().isoformat())
        day += timedelta(days=7)
    width, height, pad = 720, 200, 30
    top = max(sum(weeks.get(w, Counter()).values()) for w in labels) or 1
    slot = (width - 2 * pad) / len(labels)
    bar = min(max(slot * 0.7, 1.0), 60.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'viewBox="0 0 {width} {height + 40}" role="img" aria-label="Changes per week">',
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#555"/>',
        f'<text x="{pad}" y="14" font-size="11" fill="#333">max {top} per week</text>',
    ]
    for i, week in enumerate(labels):
        counts = weeks.get(week, Counter())
        x = pad + i * slot + (slot - bar) / 2
        y = float(height)
        for kind, colour in (("change", "#2b6cb0"), ("blocked", "#c53030")):
            h = counts[kind] / top * (height - 30)
            if h:
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>week of {week}: {counts[kind]} {kind}</title></rect>'
                )
        if len(labels) <= 16 or i % max(len(labels) // 8, 1) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height + 14}" font-size="10" fill="#333">{week}</text>'
            )
    parts.append(
        f'<rect x="{pad}" y="{height + 24}" width="10" height="10" fill="#2b6cb0"/>'
        f'<text x="{pad + 14}" y="{height + 33}" font-size="11">changes made</text>'
        f'<rect x="{pad + 110}" y="{height + 24}" width="10" height="10" fill="#c53030"/>'
        f'<text x="{pad + 124}" y="{height + 33}" font-size="11">blocked attempts</text></svg>'
    )
    return "".join(parts)


def lag_svg(lags: LagSeries, gaps: list[dict[str, Any]], since: str, until: str) -> str:
    """The worst relay lag per slice of the window, with gaps shaded over it."""
    try:
        start, end = parse_timestamp(since), parse_timestamp(until)
    except (TypeError, ValueError):
        return "<p>The window is unknown: no lag chart.</p>"
    span = max((end - start).total_seconds(), 1.0)
    width, height, pad = 720, 180, 30
    plot = width - 2 * pad
    worst = [0.0] * CHART_COLUMNS
    for minute, lag in lags.worst.items():
        try:
            at = (parse_timestamp(minute + ":00Z") - start).total_seconds()
        except ValueError:
            continue
        column = min(max(int(at / span * CHART_COLUMNS), 0), CHART_COLUMNS - 1)
        worst[column] = max(worst[column], lag)
    top = max(max(worst), 0.001)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'viewBox="0 0 {width} {height + 40}" role="img" aria-label="Relay lag and outages">',
    ]
    for gap in gaps:  # shaded first, bars over them
        try:
            g0 = (parse_timestamp(gap["start"]) - start).total_seconds() / span
            g1 = (parse_timestamp(gap["end"]) - start).total_seconds() / span
        except (KeyError, TypeError, ValueError):
            continue
        x0 = pad + min(max(g0, 0.0), 1.0) * plot
        x1 = pad + min(max(g1, 0.0), 1.0) * plot
        colour = "#fbd38d" if gap.get("documented_by") else "#feb2b2"
        parts.append(
            f'<rect x="{x0:.1f}" y="20" width="{max(x1 - x0, 2.0):.1f}" height="{height - 20}" '
            f'fill="{colour}"><title>{e(gap.get("kind"))} {e(gap.get("start"))} → '
            f"{e(gap.get('end'))}</title></rect>"
        )
    slot = plot / CHART_COLUMNS
    for i, lag in enumerate(worst):
        if lag > 0:
            h = lag / top * (height - 30)
            parts.append(
                f'<rect x="{pad + i * slot:.1f}" y="{height - h:.1f}" '
                f'width="{max(slot - 1, 1):.1f}" height="{h:.1f}" fill="#2b6cb0"/>'
            )
    parts.append(
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#555"/>'
        f'<text x="{pad}" y="14" font-size="11" fill="#333">'
        f"worst relay lag {max(worst):.3f} s</text>"
        f'<text x="{pad}" y="{height + 14}" font-size="10" fill="#333">{e(since)}</text>'
        f'<text x="{width - pad}" y="{height + 14}" font-size="10" fill="#333" '
        f'text-anchor="end">{e(until)}</text>'
        f'<rect x="{pad}" y="{height + 24}" width="10" height="10" fill="#feb2b2"/>'
        f'<text x="{pad + 14}" y="{height + 33}" font-size="11">undocumented gap</text>'
        f'<rect x="{pad + 130}" y="{height + 24}" width="10" height="10" fill="#fbd38d"/>'
        f'<text x="{pad + 144}" y="{height + 33}" font-size="11">documented gap</text></svg>'
    )
    return "".join(parts)
