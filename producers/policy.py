"""Write-time SOC2 policy: the checks that make a flag write authorized.

Each rule returns a Violation naming the control it enforces; the message text
starts with the control so the 403 a control plane returns is self-explaining.
"""

from __future__ import annotations

from dataclasses import dataclass

from producers.events import PRODUCTION, FlagChange
from producers.identity import IdentityProvider

DISTINCT_APPROVER_MESSAGE = "SOC2 CC8.1: production flag change requires a distinct approver"


@dataclass(frozen=True)
class Violation:
    rule: str
    control: str
    message: str


def _missing_fields(change: FlagChange) -> list[str]:
    required = ["actor", "role", "reason"]
    if change.environment == PRODUCTION:
        required.append("change_ref")
    return [name for name in required if not getattr(change, name).strip()]


def evaluate(change: FlagChange, identities: IdentityProvider) -> Violation | None:
    """The first rule the change breaks, or None when it may be written."""
    missing = _missing_fields(change)
    if missing:
        control = "CC6.1" if {"actor", "role"} & set(missing) else "CC8.1"
        return Violation(
            "required-fields",
            control,
            f"SOC2 {control}: flag change is missing required field(s): {', '.join(missing)}",
        )
    if change.environment == PRODUCTION and (
        not change.approver or change.approver == change.actor
    ):
        return Violation("distinct-approver", "CC8.1", DISTINCT_APPROVER_MESSAGE)
    if not identities.is_known(change.actor):
        return Violation(
            "unknown-actor",
            "CC6.1",
            f"SOC2 CC6.1: actor {change.actor!r} is not a known identity",
        )
    if not identities.holds_role(change.actor, change.role):
        return Violation(
            "role-not-held",
            "CC6.1",
            f"SOC2 CC6.1: actor {change.actor!r} does not hold role {change.role!r}",
        )
    allowed = identities.roles_allowed_in(change.environment)
    if allowed is not None and change.role not in allowed:
        return Violation(
            "role-not-allowed",
            "CC6.1",
            f"SOC2 CC6.1: role {change.role!r} may not change flags in "
            f"{change.environment} (allowed: {', '.join(sorted(allowed))})",
        )
    if change.approver and not identities.is_known(change.approver):
        return Violation(
            "unverified-approver",
            "CC8.1",
            f"SOC2 CC8.1: approver {change.approver!r} is not a verified identity",
        )
    return None
