"""What every flag platform source shares: a platform's change as a flagtrail record.

A platform (Unleash, LaunchDarkly, Flagsmith) has already applied the change when
flagtrail hears of it, so nothing can be refused: a record is always written, and
what the write-time policy would have refused is carried in ``policy_findings``
(detection where the platform does not enforce approval). The platform's own id
of the event is the record's ``event_id`` (``<platform>:<id>``): the outbox's
unique event_id makes a second delivery of one event a no-op, whichever path
(trigger, follower, webhook, replay) delivers it.

The Unleash trigger (producers/sources/unleash_trigger.py) builds the same record
in PL/pgSQL, so every rule here that shapes a record is kept deliberately simple
(no identity look-ups in the shape): the relay seals both paths' rows alike.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from producers.controls import controls_for_change
from producers.events import EVENT_ID_MAX, event_record, parse_timestamp
from producers.identity import IdentityProvider, normalize_name
from producers.outbox import outbox_row
from producers.policy import DISTINCT_APPROVER_MESSAGE, Policy
from producers.schema import outbox
from producers.validation import DEFAULT_LIMITS, Limits

_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]+")
# before/after a platform sent that the chain cannot carry safely is replaced by this
# marker (the change already happened: dropping the record would lose evidence)
OMITTED = "flagtrail_omitted"


@dataclass(frozen=True)
class SourceChange:
    """One change a platform reports, in flagtrail's terms."""

    platform: str  # unleash | launchdarkly | flagsmith
    platform_id: str  # the platform's id of the event: the dedupe key
    platform_type: str  # the platform's kind of event (feature-environment-enabled, ...)
    recorded_at: datetime  # the platform's time of the change
    actor: str
    flag_key: str
    environment: str  # "" when the change is not bound to one environment
    action: str  # create | update | rollout | delete
    before: Any = None
    after: Any = None
    approver: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # platform extras (project, ...)


def source_event_id(platform: str, platform_id: str) -> str:
    """``<platform>:<id>``; an id that is not plain or too long is replaced by its digest,
    so one platform event always maps to one event_id."""
    candidate = f"{platform}:{platform_id}"
    if _PLAIN_ID.fullmatch(platform_id) and len(candidate) <= EVENT_ID_MAX:
        return candidate
    digest = hashlib.sha256(platform_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{platform}:sha256:{digest[: EVENT_ID_MAX - len(platform) - 8]}"


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def bounded_state(value: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``value``, or the omission marker when it is nested deeper than ``max_depth`` or
    larger than ``max_state_bytes`` as canonical JSON (the trigger applies the same two
    rules, so both paths keep or omit the same states)."""
    from producers.events import canonical_json

    if _depth_exceeds(value, limits.max_depth):
        return {OMITTED: f"nested deeper than {limits.max_depth} levels"}
    size = len(canonical_json(value))
    if size > limits.max_state_bytes:
        return {OMITTED: f"{size} bytes, over the {limits.max_state_bytes}-byte limit"}
    return value


def is_production(change: SourceChange, production_environments: frozenset[str]) -> bool:
    """Judged under the production rules: a production environment, or a deletion bound to
    no environment (it removes the flag from every environment, production included)."""
    if not change.environment:
        return change.action == "delete"
    # one LaunchDarkly entry can touch several environments ("staging,production")
    return any(
        normalize_name(name) in production_environments for name in change.environment.split(",")
    )


def production_environments(policy: Policy) -> frozenset[str]:
    """The policy's normalised environment names whose class has the production rules."""
    return frozenset(
        name for c in policy.classes.values() if c.requires_approval for name in c.environments
    )


def finding(rule: str, control: str, message: str) -> dict[str, str]:
    return {"rule": rule, "control": control, "message": message}


def policy_findings(
    change: SourceChange,
    production: bool,
    identities: IdentityProvider | None = None,
    policy: Policy | None = None,
) -> list[dict[str, str]]:
    """What the write-time policy would have refused, as findings (CC8.1 exceptions).

    The approval rule needs no identity look-up, so the trigger applies it too; a
    carried approver (LaunchDarkly, Flagsmith change requests) is checked against the
    identity directory when one is given (webhook paths only).
    """
    found: list[dict[str, str]] = []
    approver = change.approver or None
    if production and (
        approver is None or normalize_name(approver) == normalize_name(change.actor)
    ):
        found.append(finding("distinct-approver", "CC8.1", DISTINCT_APPROVER_MESSAGE))
    if approver and identities is not None:
        if identities.resolve(approver) and identities.resolve(approver) == identities.resolve(
            change.actor
        ):
            if not found:
                found.append(finding("distinct-approver", "CC8.1", DISTINCT_APPROVER_MESSAGE))
        elif not identities.is_known(approver):
            found.append(
                finding(
                    "unverified-approver",
                    "CC8.1",
                    f"SOC2 CC8.1: approver {approver!r} is not a verified identity",
                )
            )
        elif production and policy is not None:
            approving = set().union(
                *(c.approve_roles for c in policy.classes.values() if c.requires_approval)
            )
            held = {normalize_name(r) for r in identities.roles_of(approver)}
            if approving and not held & approving:
                found.append(
                    finding(
                        "approver-role-not-held",
                        "CC8.1",
                        f"SOC2 CC8.1: approver {approver!r} holds no approving role",
                    )
                )
    return found


def source_record(
    change: SourceChange,
    *,
    chain_id: str,
    production: bool,
    findings: list[dict[str, str]],
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The outbox record of a platform's change (see the module docstring)."""
    controls = controls_for_change(production, change.approver if not findings else None)
    if findings:
        controls = sorted({*controls, "CC7.2"})  # detected, not prevented: monitoring
    record = event_record(
        event_id=source_event_id(change.platform, change.platform_id),
        chain_id=chain_id,
        recorded_at=change.recorded_at,
        action=change.action,
        controls=controls,
        actor=change.actor,
        approver=change.approver,
        role="",
        flag_key=change.flag_key,
        environment=change.environment,
        before=bounded_state(change.before, limits),
        after=bounded_state(change.after, limits),
    )
    record["source"] = {
        "platform": change.platform,
        "id": change.platform_id,
        "type": change.platform_type,
        **change.details,
    }
    record["policy_findings"] = findings
    return record


def insert_records(conn: Connection, chain_id: str, records: list[dict[str, Any]]) -> int:
    """Insert the records' outbox rows in the caller's transaction, skipping any whose
    event_id is there already (a platform event delivered again); returns how many
    were new. One statement for the lot: a follower's chunk costs one round trip."""
    if not records:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    rows = [outbox_row(chain_id, r, parse_timestamp(r["recorded_at"])) for r in records]
    statement = (
        dialect_insert(outbox)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(outbox.c.id)
    )
    return len(conn.execute(statement).all())
