"""The event model: what a flag change is, and the record an outbox row carries."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from producers.errors import InvalidChange

# The seed's canonical JSON (sorted keys, no spaces, ASCII): outbox payloads, chain
# hashes and signed statements all use this one encoder.
canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode

SCHEMA_VERSION = 1
FLAG_ACTIONS = frozenset({"create", "update", "rollout", "delete"})
META_ACTIONS = frozenset({"rejected", "sentinel_rotation", "gap_documented"})
PRODUCTION = "production"


def format_timestamp(moment: datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z``: the one timestamp form in every record."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """A record's RFC 3339 timestamp (fromisoformat: C speed, unlike strptime)."""
    return datetime.fromisoformat(text).astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _check_json_value(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidChange(
            f"{name} must be JSON data (objects, lists, strings, numbers, "
            f"booleans, null; no NaN/Infinity): {exc}"
        ) from exc


@dataclass(frozen=True)
class FlagChange:
    """One attempted flag write, as the control plane describes it."""

    actor: str
    role: str
    flag_key: str
    environment: str
    action: str
    before: Any = None
    after: Any = None
    reason: str = ""
    change_ref: str = ""
    approver: str | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def validate_shape(self) -> None:
        """Structural checks (400): a malformed change is refused, not recorded."""
        for name in ("flag_key", "environment", "action"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidChange(f"{name} is required and must be a non-empty string")
        if self.action not in FLAG_ACTIONS:
            raise InvalidChange(
                f"action {self.action!r} is not one of {', '.join(sorted(FLAG_ACTIONS))}"
            )
        for name in ("before", "after"):
            _check_json_value(name, getattr(self, name))
        for name in ("actor", "role", "reason", "change_ref"):
            if not isinstance(getattr(self, name), str):
                raise InvalidChange(f"{name} must be a string")
        if self.approver is not None and not isinstance(self.approver, str):
            raise InvalidChange("approver must be a string or None")


def event_record(
    *,
    event_id: str,
    chain_id: str,
    recorded_at: datetime,
    action: str,
    controls: list[str],
    actor: str = "",
    approver: str | None = None,
    role: str = "",
    flag_key: str = "",
    environment: str = "",
    before: Any = None,
    after: Any = None,
    reason: str = "",
    change_ref: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record an outbox row carries; the relay adds sequence, timestamp_utc and hashes."""
    return {
        "schema_version": SCHEMA_VERSION,
        "chain_id": chain_id,
        "event_id": event_id,
        "recorded_at": format_timestamp(recorded_at),
        "actor": actor,
        "approver": approver or None,
        "role": role,
        "flag_key": flag_key,
        "environment": environment,
        "action": action,
        "before": before,
        "after": after,
        "reason": reason,
        "change_ref": change_ref,
        "soc2_controls": controls,
        "meta": meta,
    }
