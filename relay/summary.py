"""The per-control summary, in the seed's format (Step 3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from producers.errors import ConfigError


def format_summary(
    counts: Counter[str], controls: Iterable[str] | None = None, rotations: Sequence[int] = ()
) -> str:
    """``SOC2 control coverage summary:`` then `` CC6.1: N events`` per control, sorted
    (the seed's format), then one line per sentinel rotation when there are any."""
    wanted = set(controls) if controls is not None else set(counts)
    lines = ["SOC2 control coverage summary:"]
    lines += [f" {ctrl}: {counts.get(ctrl, 0)} events" for ctrl in sorted(wanted)]
    lines += [
        f"Sentinel rotation at record {r}: the chain restarts from GENESIS" for r in rotations
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
                    record = orjson.loads(line)
                    counts.update(record.get("soc2_controls", []))
                    if record.get("action") == "sentinel_rotation":
                        rotations.append(number)
                except (orjson.JSONDecodeError, AttributeError) as exc:
                    raise ConfigError(
                        f"{path}: record {number} is not a JSON object: {exc}"
                    ) from None
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc}") from exc
    return counts, rotations
