"""The event model: what a flag change is, and the record an outbox row carries."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from producers.errors import InvalidChange
from producers.validation import (
    DEFAULT_LIMITS,
    Limits,
    check_identifier,
    check_json_value,
    check_text,
)

# The seed's canonical JSON (sorted keys, no spaces, ASCII): outbox payloads, chain
# hashes and signed statements all use this one encoder.
canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode

SCHEMA_VERSION = 1
FLAG_ACTIONS = frozenset({"create", "update", "rollout", "delete"})
# identity_resolved / identity_erased / retention_applied: producers/identity_ops.py and
# producers/retention.py; they name pseudonyms, never people
IDENTITY_ACTIONS = frozenset({"identity_resolved", "identity_erased", "retention_applied"})
META_ACTIONS = (
    frozenset(
        {"rejected", "sentinel_rotation", "gap_documented", "quarantined", "evidence_exported"}
    )
    | IDENTITY_ACTIONS
)
PRODUCTION = "production"
EVENT_ID_MAX = 64  # the outbox column's width


def format_timestamp(moment: datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z``: the one timestamp form in every record."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """A record's RFC 3339 timestamp (fromisoformat: C speed, unlike strptime)."""
    return datetime.fromisoformat(text).astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


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

    def validate_shape(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Structural checks (400): a change that cannot be chained safely is refused.

        Runs before the policy, so even a rejection never carries an unsafe value.
        """
        for name in ("flag_key", "environment", "action"):
            check_identifier(name, getattr(self, name), limits, required=True)
        if self.action not in FLAG_ACTIONS:
            raise InvalidChange(
                f"action {self.action!r} is not one of {', '.join(sorted(FLAG_ACTIONS))}"
            )
        for name in ("actor", "role", "change_ref"):
            check_identifier(name, getattr(self, name), limits)
        if self.approver is not None:
            check_identifier("approver", self.approver, limits)
        check_identifier("event_id", self.event_id, limits, required=True)
        if len(self.event_id) > EVENT_ID_MAX:
            raise InvalidChange(f"event_id is longer than {EVENT_ID_MAX} characters")
        check_text("reason", self.reason, limits.max_reason_bytes)
        for name in ("before", "after"):
            check_json_value(name, getattr(self, name), limits)


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
    environment_class: str | None = None,
) -> dict[str, Any]:
    """The record an outbox row carries; the relay adds sequence, timestamp_utc and hashes."""
    record = {
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
    if environment_class is not None:
        # the policy class the change was judged under (Production, prod, ... -> production)
        record["environment_class"] = environment_class
    return record


def change_record(
    change: FlagChange,
    *,
    chain_id: str,
    recorded_at: datetime,
    action: str,
    controls: list[str],
    **overrides: Any,
) -> dict[str, Any]:
    """``event_record`` of a flag change: its fields as given, unless ``overrides``
    replaces some (the verified identities, a rejection's meta, the policy class)."""
    fields: dict[str, Any] = {
        "actor": change.actor,
        "approver": change.approver,
        "role": change.role,
        "flag_key": change.flag_key,
        "environment": change.environment,
        "before": change.before,
        "after": change.after,
        "reason": change.reason,
        "change_ref": change.change_ref,
    }
    return event_record(
        event_id=change.event_id,
        chain_id=chain_id,
        recorded_at=recorded_at,
        action=action,
        controls=controls,
        **(fields | overrides),
    )
