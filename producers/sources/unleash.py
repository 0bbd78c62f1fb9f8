"""Unleash as a source: an Unleash event (its ``events`` table row, or its Admin API's
``/api/admin/search/events`` item) as a flagtrail record.

Mapping (kept identical in the PL/pgSQL trigger, unleash_trigger.py):
- actor: ``createdBy``; ``createdByUserId`` and ``project`` go in ``source``;
- flag: ``featureName``; environment: ``environment`` ("" when none);
- action from the type: created/revived/cloned → create; archived/deleted → delete;
  strategy and variant changes → rollout; anything else about a flag → update;
- before: ``preData``; after: ``data``, except feature-environment-enabled/disabled,
  whose ``data`` is empty: the state the type names, in the environment it names;
- event_id ``unleash:<id>``; ``recorded_at``: ``createdAt`` to the millisecond (what
  the Admin API returns, so both ways in give the same record).
Events about no flag (users, tokens, projects, segments) are not flag changes and
are not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from producers.sources.common import SourceChange

PLATFORM = "unleash"
CREATE_TYPES = frozenset({"feature-created", "feature-revived", "feature-cloned"})
DELETE_TYPES = frozenset({"feature-archived", "feature-deleted"})
ROLLOUT_TYPES = frozenset(
    {
        "feature-strategy-add",
        "feature-strategy-update",
        "feature-strategy-remove",
        "strategy-order-changed",
        "feature-variants-updated",
        "feature-environment-variants-updated",
    }
)
TOGGLE_TYPES = {"feature-environment-enabled": True, "feature-environment-disabled": False}

# the events table's column names, by the Admin API's field names
_COLUMNS = {
    "createdBy": "created_by",
    "createdByUserId": "created_by_user_id",
    "createdAt": "created_at",
    "featureName": "feature_name",
    "preData": "pre_data",
}


def action_of(event_type: str) -> str:
    if event_type in CREATE_TYPES:
        return "create"
    if event_type in DELETE_TYPES:
        return "delete"
    if event_type in ROLLOUT_TYPES:
        return "rollout"
    return "update"


def _get(event: Mapping[str, Any], name: str) -> Any:
    """A field by its API name, or by its column name (a row of the events table)."""
    if name in event:
        return event[name]
    return event.get(_COLUMNS.get(name, name))


def _moment(value: Any) -> datetime:
    """Unleash's time, to the millisecond: a datetime (table row) or ISO text (API)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError(f"createdAt {value!r:.40} is not a time")
    moment = value.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def unleash_change(event: Mapping[str, Any]) -> SourceChange | None:
    """The flagtrail change an Unleash event describes; None for an event about no flag."""
    flag = _get(event, "featureName")
    if not flag:
        return None
    event_type = str(_get(event, "type") or "")
    environment = _get(event, "environment") or ""
    after = _get(event, "data")
    if event_type in TOGGLE_TYPES:
        after = {"enabled": TOGGLE_TYPES[event_type], "environment": environment}
    return SourceChange(
        platform=PLATFORM,
        platform_id=str(_get(event, "id")),
        platform_type=event_type,
        recorded_at=_moment(_get(event, "createdAt")),
        actor=str(_get(event, "createdBy") or ""),
        flag_key=str(flag),
        environment=str(environment),
        action=action_of(event_type),
        before=_get(event, "preData"),
        after=after,
        details={
            "project": _get(event, "project"),
            "user_id": _get(event, "createdByUserId"),
        },
    )
