"""The seed's question, answered from an export: every change, who, approved by whom,
before, after, and the proof (sequence and hash); blocked attempts apart.

Reads the JSONL with the one strict reader (``split_lines`` + ``strict_record``),
so a line an attacker wrote can only become one clear error. Flag changes,
``rejected`` attempts and meta-events are kept apart: a rejection is proof the
control held, never a change; a meta-event is neither. State continuity
(``relay.continuity``) is judged over every change in the file.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from producers.events import FLAG_ACTIONS, PRODUCTION, canonical_json
from producers.identity import normalize_name
from relay.canonical import LineError, split_lines, strict_record
from relay.continuity import ContinuityChecker, StateBreak

# the columns of a change, in the order an auditor reads them (the seed's fields)
CHANGE_COLUMNS = (
    "timestamp_utc",
    "flag_key",
    "environment",
    "action",
    "actor",
    "approver",
    "role",
    "before",
    "after",
    "reason",
    "change_ref",
    "sequence",
    "hash",
)
# a blocked attempt: what was tried, by whom, and what the control answered
BLOCKED_COLUMNS = (
    "timestamp_utc",
    "flag_key",
    "environment",
    "attempted_action",
    "actor",
    "approver",
    "role",
    "before",
    "after",
    "reason",
    "change_ref",
    "control",
    "status",
    "message",
    "sequence",
    "hash",
)


@dataclass
class ChangeListing:
    """What an export says about flag changes, read once."""

    records: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    breaks: list[StateBreak] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)  # meta-events by action
    meta_events: list[dict[str, Any]] = field(default_factory=list)  # rotations, statements
    # per control: how many changes, blocked attempts and meta-events carry it
    controls: dict[str, Counter[str]] = field(default_factory=dict)
    first_timestamp: str | None = None
    last_timestamp: str | None = None


def change_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {name: record.get(name) for name in CHANGE_COLUMNS}
    row["environment_class"] = record.get("environment_class")  # the policy's judgement
    return row


def blocked_row(record: dict[str, Any]) -> dict[str, Any]:
    meta = record.get("meta") or {}
    row = {name: record.get(name) for name in BLOCKED_COLUMNS}
    row["attempted_action"] = meta.get("attempted_action")
    row["control"] = meta.get("control")
    row["status"] = meta.get("status")
    row["message"] = meta.get("message")
    return row


def in_environment(record: dict[str, Any], wanted: str | None) -> bool:
    """``--env production`` matches the environment by name, normalised as the policy
    does (``Production``), or by its policy class (``prod`` is in class production)."""
    if wanted is None:
        return True
    target = normalize_name(wanted)
    environment = record.get("environment")
    if isinstance(environment, str) and normalize_name(environment) == target:
        return True
    env_class = record.get("environment_class")
    return isinstance(env_class, str) and normalize_name(env_class) == target


def is_production(record: dict[str, Any]) -> bool:
    return in_environment(record, PRODUCTION)


def read_records(path: Path) -> list[bytes]:
    try:
        return split_lines(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc.strerror}") from None


def list_changes(
    path: Path,
    environment: str | None = None,
    observe: Callable[[dict[str, Any]], None] | None = None,
    data: bytes | None = None,
) -> ChangeListing:
    """Every change, blocked attempt and continuity break in an export (``environment``
    narrows the listing; continuity is judged on every change, then narrowed too).
    ``observe`` sees every record, in order (the report's charts read them once too);
    ``data``: the file's bytes when the caller already read them (the ones it verified)."""
    listing = ChangeListing()
    checker = ContinuityChecker()
    lines = read_records(path) if data is None else split_lines(data)
    for number, line in enumerate(lines, 1):
        try:
            record = strict_record(line)
        except LineError as exc:
            raise EvidenceError(f"{path}: record {number} is unreadable: {exc}") from None
        listing.records += 1
        stamp = record.get("timestamp_utc")
        if isinstance(stamp, str):
            listing.first_timestamp = listing.first_timestamp or stamp
            listing.last_timestamp = stamp
        action = record.get("action")
        if observe is not None:
            observe(record)
        found = checker.add(record)
        if not in_environment(record, environment) and action in (*FLAG_ACTIONS, "rejected"):
            continue
        if found is not None:
            listing.breaks.append(found)
        kind = "change" if action in FLAG_ACTIONS else "blocked" if action == "rejected" else "meta"
        for control in record.get("soc2_controls") or ():
            listing.controls.setdefault(control, Counter())[kind] += 1
        if action in FLAG_ACTIONS:
            listing.changes.append(change_row(record))
        elif action == "rejected":
            listing.blocked.append(blocked_row(record))
        else:
            listing.other[str(action)] += 1
            listing.meta_events.append(record)
    return listing


# -- showing values an attacker wrote -----------------------------------------------------------
# what a terminal or a browser would hide or reorder: controls (C0, C1, DEL), format
# characters (bidi overrides, zero-width), line and paragraph separators, surrogates,
# private-use and unassigned code points
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def visible(text: str) -> str:
    """``text`` with every hidden or reordering character shown as its escape
    (``\\u202e``), and backslashes doubled so an escape typed as text stays apart."""
    if text.isascii() and text.isprintable() and "\\" not in text:  # the common case, C speed
        return text
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _HIDDEN_CATEGORIES:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def show(value: Any) -> str:
    """One value for people: a string as itself (made visible), anything else as its
    canonical JSON (which escapes non-ASCII), null as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return visible(value)
    return canonical_json(value)


# a spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: the exact value (JSON for structures),
    prefixed with ``'`` when it (or it after leading spaces) would start a formula."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else canonical_json(value)
    if text.lstrip(" ").startswith(_FORMULA_STARTS):
        return "'" + text
    return text


# -- rendering ------------------------------------------------------------------------------------
def _table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    cells = [[show(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [f"{title} ({len(rows)})"]
    if not rows:
        return [*lines, "  (none)"]
    lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return lines


def render_table(listing: ChangeListing) -> str:
    lines = _table("Changes", CHANGE_COLUMNS, listing.changes)
    lines.append("")
    lines += _table(
        "Blocked attempts (rejected: the control held)", BLOCKED_COLUMNS, listing.blocked
    )
    lines.append("")
    lines.append(f"State continuity breaks ({len(listing.breaks)})")
    lines += [f"  {show(b.describe())}" for b in listing.breaks] or ["  (none)"]
    if listing.other:
        others = ", ".join(f"{a}: {n}" for a, n in sorted(listing.other.items()))
        lines += ["", f"Meta-events, not listed: {visible(others)}"]
    lines += [
        "",
        f"{listing.records} records read; nothing here is verified: run `flagtrail verify` "
        "(or `flagtrail report`) with the registered key for the proof.",
    ]
    return "\n".join(lines) + "\n"


def render_csv(listing: ChangeListing) -> str:
    """One CSV: a ``kind`` column (change, blocked, state_break) then the union of the
    columns; every cell safe to open in a spreadsheet."""
    import csv
    import io

    columns = ("kind", *dict.fromkeys((*CHANGE_COLUMNS, *BLOCKED_COLUMNS)), "finding")
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(columns)
    rows = [("change", r) for r in listing.changes] + [("blocked", r) for r in listing.blocked]
    for found in listing.breaks:
        rows.append(
            (
                "state_break",
                {
                    "timestamp_utc": found.timestamp_utc,
                    "flag_key": found.flag_key,
                    "environment": found.environment,
                    "before": found.before,
                    "after": found.previous_after,
                    "sequence": found.sequence,
                    "hash": found.hash,
                    "finding": found.describe(),
                },
            )
        )
    for kind, row in rows:
        writer.writerow([kind, *(csv_cell(row.get(c)) for c in columns[1:])])
    return out.getvalue()


def render_json(listing: ChangeListing) -> str:
    import json

    return (
        json.dumps(
            {
                "records": listing.records,
                "changes": listing.changes,
                "blocked": listing.blocked,
                "state_breaks": [b.as_dict() for b in listing.breaks],
                "meta_events": dict(sorted(listing.other.items())),
            },
            indent=2,
            sort_keys=False,
        )
        + "\n"
    )
