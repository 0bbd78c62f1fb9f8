"""Outbox rows the relay cannot seal: decided here, set aside as ``quarantined`` meta-events.

A row is sealed only when hashing it cannot change what the producer wrote: one
JSON object, strictly decoded (exact long integers, no lone surrogates), with the
fields readers rely on, in this chain, and canonical JSON that re-encodes to its
own bytes. Anything else would either stop the relay for good (a poison pill) or
put a value in the chain that differs from the one committed. Such a row is
replaced in the chain by a ``quarantined`` record naming the row, its digest and
why, never its raw payload (which stays in the outbox for the investigation).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime
from typing import Any

import orjson

from producers.controls import controls_for_meta
from producers.events import canonical_json, event_record
from relay.canonical import EXPONENT_OR_TINY, LineError, ascii_escape, strict_record
from relay.outbox.base import OutboxRow

RELAY_ACTOR = "flagtrail-relay"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024  # well above the producer's before/after/reason limits
# actions only the relay writes: a producer row claiming one is not sealed as such
RELAY_ONLY_ACTIONS = frozenset({"quarantined"})
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TEXT_FIELDS = ("actor", "role", "flag_key", "environment", "reason", "change_ref")
# the two float shapes where orjson and json differ (see relay.canonical.fast_parts)
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")


class Unsealable(Exception):
    """Why a row cannot be chained; ``event_id`` when the payload names a readable one."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


def payload_bytes(payload: str | bytes) -> bytes:
    """The row's bytes; a str with lone surrogates keeps them (surrogatepass) so that
    its digest and length describe what the database holds."""
    return payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")


def decode_row(
    row: OutboxRow, chain_id: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], bool]:
    """The row's record, ready to seal, and whether orjson may seal it (see
    _canonical_by); or Unsealable."""
    raw = payload_bytes(row.payload)
    if len(raw) > max_bytes:
        raise Unsealable(f"payload is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        record = strict_record(raw)
    except LineError as exc:
        raise Unsealable(f"payload is not a readable record: {exc}", _name(raw)) from None
    problem = _field_problem(record, chain_id)
    proof = None if problem else _canonical_by(raw, record)
    if problem is None and proof is None:
        problem = (
            "payload is not canonical JSON (it does not re-encode to its own bytes, so "
            "hashing it would change what was committed)"
        )
    if problem:
        event_id = record.get("event_id")
        readable = isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id)
        raise Unsealable(problem, event_id if readable else None)
    return record, proof == "orjson"


def _name(raw: bytes) -> str | None:
    """The event_id of a payload strict_record refused, when a lenient read finds a plain
    one: it only names the row in the quarantine record, nothing of it is sealed."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id) else None


def _field_problem(record: dict[str, Any], chain_id: str) -> str | None:
    get = record.get
    event_id, recorded_at, action = get("event_id"), get("recorded_at"), get("action")
    # the common case in one expression (this runs for every row); the reason after it
    if (
        type(event_id) is str
        and _EVENT_ID.fullmatch(event_id)
        and type(recorded_at) is str
        and _TIMESTAMP.fullmatch(recorded_at)
        and type(action) is str
        and action
        and action not in RELAY_ONLY_ACTIONS
        and get("chain_id") == chain_id
        and type(get("soc2_controls")) is list
        and "hash" not in record
        and "prev_hash" not in record
        and type(get("actor", "")) is str
        and type(get("role", "")) is str
        and type(get("flag_key", "")) is str
        and type(get("environment", "")) is str
        and type(get("reason", "")) is str
        and type(get("change_ref", "")) is str
        and type(get("approver") or "") is str
        and (action != "sentinel_rotation" or _operator_rotation(record))
    ):
        try:
            datetime.fromisoformat(recorded_at)
        except ValueError:
            return "field 'recorded_at' is not a real date and time"
        return None
    return _field_reason(record, chain_id)


def _operator_rotation(record: dict[str, Any]) -> bool:
    """A rotation through the outbox is an operator's: never one claiming to be the
    relay's automatic rotation (which asserts the log was found tampered)."""
    meta = record.get("meta") or {}
    return meta.get("automatic", False) is False and record.get("actor") != RELAY_ACTOR


def _field_reason(record: dict[str, Any], chain_id: str) -> str:
    for name in ("event_id", "recorded_at", "action", "chain_id"):
        if not isinstance(record.get(name), str) or not record[name]:
            return f"field {name!r} is missing or not a non-empty string"
    if not _EVENT_ID.fullmatch(record["event_id"]):
        return "field 'event_id' is not a plain identifier"
    if not _TIMESTAMP.fullmatch(record["recorded_at"]):
        return "field 'recorded_at' is not an RFC 3339 UTC timestamp with microseconds"
    if record["chain_id"] != chain_id:
        return f"payload belongs to chain {record['chain_id'][:64]!r}, not {chain_id!r}"
    if record["action"] in RELAY_ONLY_ACTIONS:
        return f"action {record['action']!r} is written only by the relay"
    if "hash" in record or "prev_hash" in record:
        return "payload carries hash fields that only the relay writes"
    if record["action"] == "sentinel_rotation" and not _operator_rotation(record):
        return "an automatic sentinel_rotation is written only by the relay"
    if not isinstance(record.get("soc2_controls"), list):
        return "field 'soc2_controls' is missing"
    for name in (*_TEXT_FIELDS, "approver"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return f"field {name!r} is not a string"
    return "a field has an unexpected type"


def _canonical_by(raw: bytes, record: dict[str, Any]) -> str | None:
    """How canonical_json(record) == raw was proven: "orjson" where that is sound,
    "json" by json itself, or None when the payload is not canonical.

    orjson's sorted output equals json's for ASCII text without DEL and without
    the two float shapes they write differently (the argument of
    relay.canonical.fast_parts); big integers make orjson refuse, so json decides.
    A record proven by orjson stays orjson-safe when the relay adds plain ASCII
    strings and integers to it, so the relay may seal it with orjson too.
    """
    if not raw.isascii() or b"\x7f" in raw:
        return None  # canonical JSON is ASCII and escapes DEL (ensure_ascii)
    if not (
        (b"0e-" in raw.translate(_ZERO_DIGITS) or b"0.0000" in raw) and EXPONENT_OR_TINY.search(raw)
    ):
        try:
            if orjson_canonical(record) == raw:
                return "orjson"
        except orjson.JSONEncodeError:
            pass
    return "json" if canonical_json(record).encode() == raw else None


def orjson_canonical(record: dict[str, Any]) -> bytes:
    """orjson's sorted encoding with non-ASCII escaped as json.dumps does. It equals
    canonical_json(record) for records _canonical_by proved with "orjson" and for those
    plus the plain ASCII strings and integers the relay adds."""
    encoded = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return encoded if encoded.isascii() else ascii_escape(encoded)


def quarantine_record(
    row: OutboxRow, problem: Unsealable, chain_id: str, now: datetime
) -> dict[str, Any]:
    """The chained meta-event that takes the row's place."""
    raw = payload_bytes(row.payload)
    where = row.position.encode()
    return event_record(
        event_id=str(uuid.uuid4()),
        chain_id=chain_id,
        recorded_at=now,
        action="quarantined",
        controls=controls_for_meta(),
        actor=RELAY_ACTOR,
        reason=f"outbox row {where} could not be sealed: {problem.reason}",
        meta={
            "outbox_position": where,
            "outbox_recorded_at_us": row.recorded_at_us,
            "event_id": problem.event_id,
            "payload_sha256": hashlib.sha256(raw).hexdigest(),
            "payload_bytes": len(raw),
            "reason": problem.reason,
        },
    )
