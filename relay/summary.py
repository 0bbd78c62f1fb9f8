"""The per-control summary, in the seed's format (Step 3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from producers.errors import ConfigError, EvidenceError
from producers.events import FLAG_ACTIONS
from relay.canonical import LineError, strict_record


def format_summary(
    counts: Counter[str],
    controls: Iterable[str] | None = None,
    rotations: Sequence[int] = (),
    changes: Counter[str] | None = None,
    exceptions: Counter[str] | None = None,
) -> str:
    """``SOC2 control coverage summary:`` then `` CC6.1: N events`` per control, sorted
    (the seed's format), then one line per sentinel rotation when there are any, then
    how many flag changes the OpenID Connect provider authenticated when any were
    (``changes`` from count_changes), then the exceptions apart: changes recorded from
    a flag platform that the write-time policy would have refused (counted by the
    control they break, never as evidence of that control)."""
    wanted = set(controls) if controls is not None else set(counts)
    lines = ["SOC2 control coverage summary:"]
    lines += [f" {ctrl}: {counts.get(ctrl, 0)} events" for ctrl in sorted(wanted)]
    lines += [
        f"Sentinel rotation at record {r}: a new epoch starts (see the manifest's rotations)"
        for r in rotations
    ]
    if changes and changes[OIDC]:
        lines.append(
            f"Flag changes authenticated by OpenID Connect: {changes[OIDC]} of {changes[CHANGES]}"
        )
    if exceptions:
        lines.append("Policy exceptions (detected in changes from flag platforms, not prevented):")
        lines += [f" {ctrl}: {n} exceptions" for ctrl, n in sorted(exceptions.items())]
    return "\n".join(lines) + "\n"


CHANGES, OIDC = "changes", "oidc"


def _method(auth: object, who: str) -> object:
    entry = auth.get(who) if isinstance(auth, dict) else None
    return entry.get("method") if isinstance(entry, dict) else None


def count_changes(record: dict, into: Counter[str]) -> None:
    """Count a flag change, and whether the provider authenticated it: its actor and
    its approver (when it has one) established by OpenID Connect tokens (``auth``)."""
    if record.get("action") not in FLAG_ACTIONS:
        return
    into[CHANGES] += 1
    auth = record.get("auth")
    if _method(auth, "actor") == "oidc" and (
        record.get("approver") is None or _method(auth, "approver") == "oidc"
    ):
        into[OIDC] += 1


def count_controls(
    path: Path, changes: Counter[str] | None = None, exceptions: Counter[str] | None = None
) -> tuple[Counter[str], list[int]]:
    """Control counts and the record numbers of sentinel rotations; ``changes``, when
    given, also counts flag changes and those the provider authenticated; the controls
    of ``policy_findings`` are counted into ``exceptions`` when given."""
    counts: Counter[str] = Counter()
    rotations: list[int] = []
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = strict_record(line)
                except LineError as exc:
                    raise EvidenceError(f"{path}: record {number} is unreadable: {exc}") from None
                counts.update(record.get("soc2_controls") or ())
                if changes is not None:
                    count_changes(record, changes)
                if exceptions is not None:
                    exceptions.update(finding_controls(record))
                if record.get("action") == "sentinel_rotation":
                    rotations.append(number)
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc}") from exc
    return counts, rotations


def finding_controls(record: dict) -> list[str]:
    """The controls a record's ``policy_findings`` name (records from flag platforms)."""
    findings = record.get("policy_findings")
    if not isinstance(findings, list):
        return []
    return [str(f.get("control")) for f in findings if isinstance(f, dict)]
