"""The per-control summary, in the seed's format (Step 3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from producers.errors import ConfigError, EvidenceError
from relay.canonical import LineError, strict_record


def format_summary(
    counts: Counter[str], controls: Iterable[str] | None = None, rotations: Sequence[int] = ()
) -> str:
    """``SOC2 control coverage summary:`` then `` CC6.1: N events`` per control, sorted
    (the seed's format), then one line per sentinel rotation when there are any."""
    wanted = set(controls) if controls is not None else set(counts)
    lines = ["SOC2 control coverage summary:"]
    lines += [f" {ctrl}: {counts.get(ctrl, 0)} events" for ctrl in sorted(wanted)]
    lines += [
        f"Sentinel rotation at record {r}: a new epoch starts (see the manifest's rotations)"
        for r in rotations
    ]
    return "\n".join(lines) + "\n"


def count_controls(path: Path) -> tuple[Counter[str], list[int]]:
    """Control counts and the record numbers of sentinel rotations."""
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
                if record.get("action") == "sentinel_rotation":
                    rotations.append(number)
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc}") from exc
    return counts, rotations
