"""Flagsmith's webhooks as flagtrail changes.

Two documented bodies (docs.flagsmith.com, "Webhooks"):
- environment webhook: ``{"event_type": "FLAG_UPDATED", "data": {"changed_by",
  "timestamp", "new_state", "previous_state"}}``; a state names its ``feature``
  (``name``), ``environment`` (an id, or ``{"id", "name"}``), ``enabled``,
  ``feature_state_value``, and ``feature_segment``/``identity`` for overrides. It has no
  event id: the dedupe key is the digest of the body's identifying fields, so the same
  delivery replayed maps to the same event.
- audit-log (organisation) webhook: ``{"id"?, "created_date", "log", "author": {"email",
  ...}, "environment": {"name", ...} | null, "project", "related_object_id",
  "related_object_type"}``.
Both are signed in ``X-Flagsmith-Signature``: hex HMAC-SHA256 of the raw body under
the webhook's secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from producers.errors import InvalidChange
from producers.events import canonical_json
from producers.sources.common import SourceChange

PLATFORM = "flagsmith"
SIGNATURE_HEADER = "x-flagsmith-signature"
_AUDIT_FLAG_TYPES = frozenset({"FEATURE", "FEATURE_STATE", "EF_VERSION"})


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidChange(f"Flagsmith {name} is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidChange(f"Flagsmith {name} {value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Flagsmith writes UTC
    return moment.astimezone(UTC)


def _environment_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("id") or "")
    return "" if value is None else str(value)


def _state_action(before: Any, after: Any) -> str:
    if before is None:
        return "create"
    if after is None:
        return "delete"
    override = after.get("feature_segment") or after.get("identity")
    return "rollout" if override else "update"


def environment_change(body: Mapping[str, Any]) -> SourceChange | None:
    data = body.get("data")
    if not isinstance(data, dict):
        raise InvalidChange("Flagsmith webhook has no data object")
    after, before = data.get("new_state"), data.get("previous_state")
    if not isinstance(after, dict | type(None)) or not isinstance(before, dict | type(None)):
        raise InvalidChange("Flagsmith new_state/previous_state are not objects")
    state = after or before
    if state is None:
        raise InvalidChange("Flagsmith webhook has neither new_state nor previous_state")
    feature = state.get("feature")
    if not isinstance(feature, dict) or not feature.get("name"):
        raise InvalidChange("Flagsmith state names no feature")
    identifying = {
        "event_type": body.get("event_type"),
        "timestamp": data.get("timestamp"),
        "state_id": state.get("id"),
        "changed_by": data.get("changed_by"),
        "enabled": after.get("enabled") if after else None,
        "value": after.get("feature_state_value") if after else None,
    }
    digest = hashlib.sha256(canonical_json(identifying).encode()).hexdigest()[:40]
    return SourceChange(
        platform=PLATFORM,
        platform_id=f"env-{digest}",
        platform_type=str(body.get("event_type") or ""),
        recorded_at=_time(data.get("timestamp"), "timestamp"),
        actor=str(data.get("changed_by") or ""),
        flag_key=str(feature["name"]),
        environment=_environment_name(state.get("environment")),
        action=_state_action(before, after),
        before=before,
        after=after,
        details={"state_id": state.get("id")},
    )


def audit_change(body: Mapping[str, Any]) -> SourceChange | None:
    if body.get("related_object_type") not in _AUDIT_FLAG_TYPES:
        return None  # not about a flag (segments, users, environments)
    log = body.get("log")
    if not isinstance(log, str):
        raise InvalidChange("Flagsmith audit log entry has no log text")
    author = body.get("author")
    actor = str(author.get("email") or "") if isinstance(author, dict) else ""
    key = body.get("id")
    if key is None:  # older payloads carry no id: the entry's own fields identify it
        key = hashlib.sha256(canonical_json(dict(body)).encode()).hexdigest()[:40]
    # the log text ends with the feature's name ("Flag state updated for feature: x")
    flag = log.rsplit(": ", 1)[-1].strip() if ": " in log else ""
    return SourceChange(
        platform=PLATFORM,
        platform_id=f"audit-{key}",
        platform_type=str(body.get("related_object_type")),
        recorded_at=_time(body.get("created_date"), "created_date"),
        actor=actor,
        flag_key=flag or f"flagsmith-object-{body.get('related_object_id')}",
        environment=_environment_name(body.get("environment")),
        action="create" if log.lower().startswith("new flag") else "update",
        before=None,
        after={"log": log},
        details={"related_object_id": body.get("related_object_id")},
    )


def flagsmith_change(body: Mapping[str, Any]) -> SourceChange | None:
    """The change either Flagsmith webhook describes; None for one about no flag."""
    if "event_type" in body or "data" in body:
        return environment_change(body)
    if "log" in body or "related_object_type" in body:
        return audit_change(body)
    raise InvalidChange("not a Flagsmith environment or audit-log webhook body")
