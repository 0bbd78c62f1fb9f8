"""Meta-events an operator writes through the outbox, so they are chained like changes.

Operator meta-events (``gap_documented``, an operator's ``sentinel_rotation``)
need an identity holding an operator role (the policy's ``operator_roles``,
``audit-admin`` by default) and are signed. The signed contract, which
``flagtrail verify`` checks with the trusted key::

    statement = {k: meta[k] for k in meta["signed_fields"]}
    meta["statement_signature"] = base64(sign_digest(sha256(canonical_json(statement))))
    meta["signing_key_fingerprint"] = "SHA256:..."

Everything else in the meta vocabulary (``rejected``, ``quarantined``, an
automatic rotation, ``evidence_exported``) is written only by the library itself
or the relay, never accepted from a caller of the public API.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from producers.controls import controls_for_meta
from producers.errors import InvalidChange
from producers.events import FlagChange, canonical_json, event_record, format_timestamp, utc_now
from producers.identity import normalize_name
from producers.policy import Violation
from producers.validation import check_identifier, check_json_value, check_text

if TYPE_CHECKING:
    from producers.outbox import Outbox

# chain_id is signed so that a statement cannot be replayed into another chain
GAP_SIGNED_FIELDS = ["chain_id", "from", "to", "reason", "author", "stated_at"]
ROTATION_SIGNED_FIELDS = ["chain_id", "reason", "rotated_by", "stated_at"]
# action -> the meta key naming the operator and the fields its signature must cover
PUBLIC_META = {
    "gap_documented": ("author", GAP_SIGNED_FIELDS),
    "sentinel_rotation": ("rotated_by", ROTATION_SIGNED_FIELDS),
}


def statement_digest(statement: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(statement).encode()).digest()


def sign_statement(meta: dict[str, Any], signed_fields: list[str], key: Any) -> dict[str, Any]:
    """``meta`` with its signature, the key's fingerprint and the list of signed fields."""
    from relay.signing import fingerprint, sign_digest

    statement = {k: meta[k] for k in signed_fields}
    signature = sign_digest(statement_digest(statement), key)
    return {
        **meta,
        "statement_signature": base64.b64encode(signature).decode(),
        "signing_key_fingerprint": fingerprint(key.public_key()),
        "signed_fields": list(signed_fields),
    }


def _refuse(action: str, why: str) -> InvalidChange:
    return InvalidChange(f"a {action} meta-event cannot be written through the public API: {why}")


def check_public_meta(outbox: Outbox, conn: Any, record: dict[str, Any]) -> None:
    """What ``Outbox.record_meta`` accepts: a signed operator event by an operator."""
    action = record.get("action") if isinstance(record, dict) else None
    if action not in PUBLIC_META:
        raise _refuse(
            str(action), "only gap_documented and operator sentinel_rotation are accepted"
        )
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise _refuse(action, "it carries no meta")
    if action == "sentinel_rotation" and meta.get("automatic") is not False:
        raise _refuse(action, "automatic rotations are the relay's alone")
    operator_key, fields = PUBLIC_META[action]
    if meta.get("signed_fields") != fields:
        raise _refuse(action, f"its signed_fields must be {fields}")
    if not isinstance(meta.get("statement_signature"), str) or not isinstance(
        meta.get("signing_key_fingerprint"), str
    ):
        raise _refuse(action, "it is not signed")
    check_identifier("event_id", record.get("event_id"), outbox.policy.limits, required=True)
    for name in fields:
        if not isinstance(meta.get(name), str):
            raise _refuse(action, f"{name} must be a string")
    check_text("reason", meta["reason"], outbox.policy.limits.max_reason_bytes)
    check_json_value("meta", meta, outbox.policy.limits)
    if meta["chain_id"] != outbox.chain_id:
        raise _refuse(action, f"it is signed for chain {meta['chain_id']!r}, not this one")
    if record.get("actor") != meta[operator_key]:
        raise _refuse(action, f"actor must be the {operator_key}")
    require_operator(outbox, conn, meta[operator_key], action)


def require_operator(outbox: Outbox, conn: Any, who: str, action: str) -> None:
    """Operator actions need a known identity holding an operator role; a refusal is
    itself recorded as a durable ``rejected`` event (CC6.1)."""
    check_identifier("operator", who, outbox.policy.limits, required=True)
    violation = None
    if not outbox.identities.is_known(who):
        violation = Violation(
            "unknown-actor", "CC6.1", f"SOC2 CC6.1: {action} by {who!r}: not a known identity"
        )
    else:
        held = {normalize_name(r) for r in outbox.identities.roles_of(who)}
        if not held & outbox.policy.operator_roles:
            roles = ", ".join(sorted(outbox.policy.operator_roles))
            violation = Violation(
                "operator-role",
                "CC6.1",
                f"SOC2 CC6.1: {action} needs an operator role ({roles}); {who!r} holds none",
            )
    if violation is not None:
        attempt = FlagChange(
            actor=who,
            role="",
            flag_key="",
            environment="",
            action=action,
            reason=f"{action} attempted",
        )
        outbox.reject(conn, attempt, violation, attempted_action=action)


def _write_meta(
    outbox: Outbox, conn: Any, action: str, actor: str, reason: str, meta: dict[str, Any]
) -> str:
    record = event_record(
        event_id=str(uuid.uuid4()),
        chain_id=outbox.chain_id,
        recorded_at=outbox.clock(),
        action=action,
        controls=controls_for_meta(),
        actor=actor,
        reason=reason,
        meta=meta,
    )
    return outbox.record_meta(conn, record)


def request_rotation(outbox: Outbox, conn: Any, actor: str, reason: str, key: Any) -> str:
    """Start a new chain epoch, signed by ``key``: the relay seals this with GENESIS and
    names the old head (previous_sequence / previous_hash, outside the signed fields)."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidChange("a rotation needs a --reason")
    require_operator(outbox, conn, actor, "sentinel_rotation")
    canonical = outbox.identities.resolve(actor) or actor
    meta = {
        "chain_id": outbox.chain_id,
        "reason": reason,
        "rotated_by": canonical,
        "stated_at": format_timestamp(utc_now()),
        "automatic": False,
    }
    signed = sign_statement(meta, ROTATION_SIGNED_FIELDS, key)
    return _write_meta(outbox, conn, "sentinel_rotation", canonical, reason, signed)


def gap_statement(start: datetime, end: datetime, reason: str, author: str) -> dict[str, Any]:
    if end <= start:
        raise InvalidChange(
            f"--to {format_timestamp(end)} must be after --from {format_timestamp(start)}"
        )
    if not reason.strip():
        raise InvalidChange("a gap statement needs a --reason")
    return {
        "from": format_timestamp(start),
        "to": format_timestamp(end),
        "reason": reason,
        "author": author,
        "stated_at": format_timestamp(utc_now()),
    }


def document_gap(outbox: Outbox, conn: Any, statement: dict[str, Any], key: Any) -> str:
    """Write a gap_documented meta-event signed by ``key`` (covering GAP_SIGNED_FIELDS)."""
    require_operator(outbox, conn, statement["author"], "gap_documented")
    statement = {
        **statement,
        "author": outbox.identities.resolve(statement["author"]),
        "chain_id": outbox.chain_id,
    }
    signed = sign_statement(statement, GAP_SIGNED_FIELDS, key)
    signed["signature_covers"] = "sha256 of the canonical JSON of the signed_fields: " + ", ".join(
        GAP_SIGNED_FIELDS
    )
    return _write_meta(
        outbox, conn, "gap_documented", statement["author"], statement["reason"], signed
    )


def record_export_receipt(
    outbox: Outbox, conn: Any, token_name: str, route: str, details: dict[str, Any]
) -> str:
    """Chain an ``evidence_exported`` event: which API token pulled which evidence.

    Written by the library for the evidence API only (``record_meta`` refuses it from
    callers). CC7.2 alone: a pull is monitoring evidence about the trail, not a change,
    so it never inflates the change-management (CC8.1) count of a later summary."""
    check_identifier("token", token_name, outbox.policy.limits, required=True)
    meta = {"token": token_name, "route": route, **details}
    check_json_value("meta", meta, outbox.policy.limits)
    record = event_record(
        event_id=str(uuid.uuid4()),
        chain_id=outbox.chain_id,
        recorded_at=outbox.clock(),
        action="evidence_exported",
        controls=["CC7.2"],
        actor=f"api-token:{token_name}",
        reason=f"evidence pulled through {route}",
        meta=meta,
    )
    return outbox._insert_meta(conn, record)
