"""An approval token approves one change: the binding and its digest.

The approval UI asks the provider for a token carrying an RFC 9396
``authorization_details`` entry (the claim the policy's ``approval_claim`` names)
of type ``flagtrail_change``::

    {"type": "flagtrail_change", "flag_key": "checkout-v2",
     "environment": "production", "change_digest": "<64 hex>"}

``change_digest`` is the SHA-256, in lowercase hex, of the canonical JSON
(sorted keys, no spaces, ASCII escapes: ``producers.events.canonical_json``) of
the change's five fields exactly as the control plane submits them::

    {"action": "rollout", "after": {...}, "before": {...},
     "environment": "production", "flag_key": "checkout-v2"}

e.g. in Python ``hashlib.sha256(json.dumps(obj, sort_keys=True,
separators=(",", ":")).encode()).hexdigest()``; ``before``/``after`` are null when
absent. So the approval names what the flag was and what it becomes: the same
token for another flag, another environment, another action or another state is
refused. A token must carry exactly one such entry. Its ``jti`` is spent in the
outbox database (producers/oidc/replay.py), so it approves one change once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from producers.events import FlagChange, canonical_json

APPROVAL_TYPE = "flagtrail_change"


def change_digest(change: FlagChange) -> str:
    """SHA-256 hex of canonical_json of the change's flag_key, environment, action,
    before and after: what an approval token binds (see the module docstring)."""
    bound = {
        "flag_key": change.flag_key,
        "environment": change.environment,
        "action": change.action,
        "before": change.before,
        "after": change.after,
    }
    return hashlib.sha256(canonical_json(bound).encode("ascii")).hexdigest()


def _approval_entries(claims: dict[str, Any], claim: str) -> list[dict[str, Any]]:
    details = claims.get(claim)
    entries = details if isinstance(details, list) else [details] if details else []
    return [e for e in entries if isinstance(e, dict) and e.get("type") == APPROVAL_TYPE]


def has_approval_entry(claims: dict[str, Any], claim: str) -> bool:
    return bool(_approval_entries(claims, claim))


def binding_problem(claims: dict[str, Any], claim: str, change: FlagChange) -> str | None:
    """Why the token does not approve ``change``, or None when it is bound to it."""
    bound = _approval_entries(claims, claim)
    if len(bound) != 1:
        return f"it carries {len(bound)} {APPROVAL_TYPE!r} entries in {claim!r}, not exactly one"
    entry = bound[0]
    if entry.get("flag_key") != change.flag_key or entry.get("environment") != change.environment:
        return (
            f"it approves flag {entry.get('flag_key')!r} in {entry.get('environment')!r}, "
            f"not {change.flag_key!r} in {change.environment!r}"
        )
    if entry.get("change_digest") != change_digest(change):
        return "it approves another change to this flag (change_digest differs)"
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        return "it has no token id (jti), so its single use cannot be enforced"
    return None
