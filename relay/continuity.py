"""State continuity: each flag change must start where the one before it ended.

For every flag and environment, a change's ``before`` must equal the ``after``
of the previous change to the same flag in the same environment. When it does
not, the flag was changed outside flagtrail (nothing recorded that change), or
the control plane reported a ``before`` that was not the truth; either way an
auditor must see both records. The first change of a flag in the records read
has no predecessor here (it may lie before the window) and is not judged.

Values are compared as the chain hashes them (canonical JSON), so ``1`` and
``1.0`` or ``true`` and ``1`` are different states, as they are in the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producers.events import FLAG_ACTIONS, canonical_json
from producers.identity import normalize_name


@dataclass(frozen=True)
class StateBreak:
    """A change whose ``before`` is not what the previous change left."""

    flag_key: Any
    environment: Any
    previous_sequence: Any
    previous_hash: Any
    previous_after: Any
    sequence: Any
    hash: Any
    before: Any
    timestamp_utc: Any

    def describe(self) -> str:
        return (
            f"flag {canonical_json(self.flag_key)} in {canonical_json(self.environment)}: "
            f"sequence {self.sequence} (hash {self.hash}) starts from before="
            f"{canonical_json(self.before)}, but sequence {self.previous_sequence} (hash "
            f"{self.previous_hash}) left it at after={canonical_json(self.previous_after)}: "
            "a change made outside flagtrail, or a before that is not the truth"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "flag_key": self.flag_key,
            "environment": self.environment,
            "timestamp_utc": self.timestamp_utc,
            "previous": {
                "sequence": self.previous_sequence,
                "hash": self.previous_hash,
                "after": self.previous_after,
            },
            "change": {"sequence": self.sequence, "hash": self.hash, "before": self.before},
        }


def state_key(record: dict[str, Any]) -> tuple[str, str]:
    """Which flag state a change moves: the flag in its environment, the environment
    normalised as the policy normalises it (``Production`` is ``production``), so a
    respelled environment cannot start a fresh, unjudged history."""
    flag, environment = record.get("flag_key"), record.get("environment")
    return (
        flag if isinstance(flag, str) else canonical_json(flag),
        normalize_name(environment)
        if isinstance(environment, str)
        else canonical_json(environment),
    )


class ContinuityChecker:
    """Fed records in chain order; keeps one state per flag and environment (streaming)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[Any, Any, str, Any]] = {}

    def add(self, record: dict[str, Any]) -> StateBreak | None:
        """Judge one record; only flag changes (not rejections or meta-events) count."""
        if record.get("action") not in FLAG_ACTIONS:
            return None
        key = state_key(record)
        after = record.get("after")
        before = record.get("before")
        previous = self._last.get(key)
        self._last[key] = (record.get("sequence"), record.get("hash"), canonical_json(after), after)
        if previous is None:
            return None
        previous_sequence, previous_hash, previous_state, previous_after = previous
        if canonical_json(before) == previous_state:
            return None
        return StateBreak(
            record.get("flag_key"),
            record.get("environment"),
            previous_sequence,
            previous_hash,
            previous_after,
            record.get("sequence"),
            record.get("hash"),
            before,
            record.get("timestamp_utc"),
        )
