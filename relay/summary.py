"""The per-control summary, in the seed's format (Step 3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from producers.errors import ConfigError


def format_summary(counts: Counter[str], controls: Iterable[str] | None = None) -> str:
    """``SOC2 control coverage summary:`` then `` CC6.1: N events`` per control, sorted."""
    wanted = set(controls) if controls is not None else set(counts)
    lines = ["SOC2 control coverage summary:"]
    lines += [f" {ctrl}: {counts.get(ctrl, 0)} events" for ctrl in sorted(wanted)]
    return "\n".join(lines) + "\n"


def count_controls(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    counts.update(orjson.loads(line).get("soc2_controls", []))
                except (orjson.JSONDecodeError, AttributeError) as exc:
                    raise ConfigError(
                        f"{path}: record {number} is not a JSON object: {exc}"
                    ) from None
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc}") from exc
    return counts
