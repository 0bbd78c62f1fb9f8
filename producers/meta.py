"""Meta-events an operator writes through the outbox, so they are chained like changes."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime
from typing import Any

from producers.controls import controls_for_meta
from producers.errors import InvalidChange, PolicyError
from producers.events import canonical_json, event_record, format_timestamp, utc_now
from producers.outbox import Outbox


def _require_identity(outbox: Outbox, who: str, role_of: str) -> None:
    if not who.strip():
        raise InvalidChange(f"{role_of} is required")
    if not outbox.identities.is_known(who):
        raise PolicyError(
            f"SOC2 CC6.1: {role_of} {who!r} is not a known identity", "unknown-actor", "CC6.1"
        )


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


def request_rotation(outbox: Outbox, conn: Any, actor: str, reason: str) -> str:
    """Start a new chain epoch: the relay seals this with GENESIS and names the old head."""
    _require_identity(outbox, actor, "actor")
    if not reason.strip():
        raise InvalidChange("a rotation needs a --reason")
    return _write_meta(
        outbox,
        conn,
        "sentinel_rotation",
        actor,
        reason,
        {"rotated_by": actor, "automatic": False, "reason": reason},
    )


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


def statement_digest(statement: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(statement).encode()).digest()


def document_gap(
    outbox: Outbox, conn: Any, statement: dict[str, Any], signature: bytes, key_fingerprint: str
) -> str:
    """Write a signed gap_documented meta-event (the signature covers ``statement``)."""
    _require_identity(outbox, statement["author"], "author")
    return _write_meta(
        outbox,
        conn,
        "gap_documented",
        statement["author"],
        statement["reason"],
        {
            **statement,
            "statement_signature": base64.b64encode(signature).decode(),
            "signing_key_fingerprint": key_fingerprint,
            "signature_covers": "sha256 of the canonical JSON of from, to, reason, author, "
            "stated_at",
        },
    )
