"""LaunchDarkly's audit-log webhook as a flagtrail change.

The webhook body is an audit log entry (LaunchDarkly's REST API docs, "Webhooks" and
"Get audit log entry"): ``_id`` (the entry's id: the dedupe key), ``date`` (epoch
milliseconds), ``kind`` (``flag`` for flag changes), ``accesses[]`` with ``action``
(``updateOn``, ``updateRules``, ``createFlag``, ...) and ``resource``
(``proj/<p>:env/<e>:flag/<key>``), the initiator as ``member`` (email), ``token``
(name) or ``app`` (name), and ``previousVersion``/``currentVersion``. The signature
is ``X-LD-Signature``: hex HMAC-SHA256 of the raw body under the webhook's secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from producers.errors import InvalidChange
from producers.sources.common import SourceChange

PLATFORM = "launchdarkly"
SIGNATURE_HEADER = "x-ld-signature"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CREATE = frozenset({"createFlag", "cloneFlag"})
_DELETE = frozenset({"deleteFlag", "updateGlobalArchived"})
_ROLLOUT = frozenset(
    {
        "updateRules",
        "updateFallthrough",
        "updateTargets",
        "updateContextTargets",
        "updateOffVariation",
        "updatePrerequisites",
        "updateFlagVariations",
        "updateExpiringTargets",
        "updateFallthroughWithMeasuredRollout",
        "updateRulesWithMeasuredRollout",
    }
)


def _resource_parts(resource: str) -> dict[str, str]:
    """``proj/p:env/e:flag/k`` → {"proj": "p", "env": "e", "flag": "k"} (a tag list after
    ``;`` is dropped)."""
    parts: dict[str, str] = {}
    for piece in resource.split(";", 1)[0].split(":"):
        kind, _, name = piece.partition("/")
        if name:
            parts[kind] = name
    return parts


def _actor(entry: Mapping[str, Any]) -> str:
    member, token, app = entry.get("member"), entry.get("token"), entry.get("app")
    if isinstance(member, dict) and member.get("email"):
        return str(member["email"])
    if isinstance(token, dict) and token.get("name"):
        return f"token:{token['name']}"
    if isinstance(app, dict) and app.get("name"):
        return f"app:{app['name']}"
    return ""


def _action(actions: list[str]) -> str:
    if _CREATE & set(actions):
        return "create"
    if _DELETE & set(actions):
        return "delete"
    if _ROLLOUT & set(actions):
        return "rollout"
    return "update"


def launchdarkly_change(entry: Mapping[str, Any]) -> SourceChange | None:
    """The change an audit log entry describes; None for an entry about no flag."""
    if entry.get("kind") != "flag":
        return None
    entry_id, date = entry.get("_id"), entry.get("date")
    if not isinstance(entry_id, str) or not entry_id:
        raise InvalidChange("LaunchDarkly entry has no _id")
    if not isinstance(date, int) or isinstance(date, bool) or not 0 <= date < 2**53:
        raise InvalidChange("LaunchDarkly entry's date is not epoch milliseconds")
    accesses = entry.get("accesses")
    if not isinstance(accesses, list) or not all(isinstance(a, dict) for a in accesses):
        raise InvalidChange("LaunchDarkly entry's accesses is not a list of objects")
    resources = [_resource_parts(str(a.get("resource", ""))) for a in accesses]
    flag = next((r["flag"] for r in resources if "flag" in r), None)
    current = entry.get("currentVersion")
    if flag is None and isinstance(current, dict):
        flag = current.get("key")
    if not flag:
        raise InvalidChange("LaunchDarkly entry names no flag (accesses[].resource)")
    environments = sorted({r["env"] for r in resources if "env" in r})
    return SourceChange(
        platform=PLATFORM,
        platform_id=entry_id,
        platform_type=",".join(str(a.get("action", "")) for a in accesses)[:200],
        recorded_at=_EPOCH + timedelta(milliseconds=date),
        actor=_actor(entry),
        flag_key=str(flag),
        environment=environments[0] if len(environments) == 1 else ",".join(environments),
        action=_action([str(a.get("action", "")) for a in accesses]),
        before=entry.get("previousVersion"),
        after=current,
        details={
            "project": next((r["proj"] for r in resources if "proj" in r), None),
            "comment": entry.get("comment"),
        },
    )
