"""Signed statements inside the chain: gap statements and operator rotations.

A ``gap_documented`` record or an operator ``sentinel_rotation`` carries in
``meta``: ``statement_signature`` (base64 of ``sign_digest(sha256(canonical_json(
statement)))``), ``signing_key_fingerprint`` and ``signed_fields`` (the meta keys
the statement is made of). A statement documents something only when its
signature checks with a key the reader holds: the exporter's own key, or a
verifier's trusted keys. Everything else documents nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any

from producers.events import canonical_json, parse_timestamp
from relay.canonical import LineError
from relay.gaps import Gap, GapFinder
from relay.signing import PublicKey, fingerprint, signature_valid

# gap statements written before signed_fields existed sign exactly these
DEFAULT_SIGNED_FIELDS = {"gap_documented": ("from", "to", "reason", "author", "stated_at")}
# what the signature must cover for the statement to say anything: a gap statement its
# range, a rotation its operator. Without this, a rotation's signature (no from/to)
# relabelled gap_documented, with any range added beside the signed fields, documents
# every gap; and neither kind's signature passes as the other's.
# a statement must sign what it claims and the chain it is about: one without chain_id
# (written before statements named their chain) could be replayed into any chain
REQUIRED_SIGNED_FIELDS = {
    "gap_documented": {"chain_id", "from", "to"},
    "sentinel_rotation": {"chain_id", "rotated_by"},
}


def statement_signed(record: dict[str, Any], keys: Sequence[PublicKey]) -> bool:
    """True when the record's statement signature checks with one of ``keys``."""
    meta = record.get("meta")
    if not isinstance(meta, dict):
        return False
    fields = meta.get("signed_fields", DEFAULT_SIGNED_FIELDS.get(str(record.get("action"))))
    signature_text = meta.get("statement_signature")
    if (
        not isinstance(fields, list | tuple)
        or not fields
        or not all(isinstance(f, str) and f in meta for f in fields)
        or not REQUIRED_SIGNED_FIELDS.get(str(record.get("action")), set()) <= set(fields)
        or ("chain_id" in fields and meta["chain_id"] != record.get("chain_id"))
        or not isinstance(signature_text, str)
    ):
        return False  # a statement signed for another chain says nothing about this one
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        return False
    digest = hashlib.sha256(canonical_json({f: meta[f] for f in fields}).encode()).digest()
    named = meta.get("signing_key_fingerprint")
    candidates = [k for k in keys if fingerprint(k) == named] or list(keys)
    return any(signature_valid(digest, signature, key) for key in candidates)


def stated_in_time(record: dict[str, Any], lag_s: float) -> bool:
    """A signed stated_at lies within the relay's lag of when the relay sealed the record
    (relayed_at, the relay's own clock), so a statement signed long ago and copied into
    a new outbox row (a replay) does not pass as made now. A record whose signature
    does not cover stated_at cannot be judged and is not refused here."""
    meta = record.get("meta")
    fields = meta.get("signed_fields") if isinstance(meta, dict) else None
    if not isinstance(fields, list | tuple) or "stated_at" not in fields:
        return True
    try:
        stated = parse_timestamp(str(meta.get("stated_at")))
        relayed = parse_timestamp(str(record.get("relayed_at")))
    except (LineError, ValueError):
        return False
    late = (relayed - stated).total_seconds()
    # only a statement signed long before it was sealed is a replay; an operator's clock
    # ahead of the relay's is a clock_skew finding, not a reason to disbelieve them
    return abs(late) <= lag_s


def operator_rotation_signed(
    record: dict[str, Any], keys: Sequence[PublicKey], lag_s: float
) -> bool:
    """An operator's rotation, signed with one of ``keys`` and sealed when it was signed."""
    return (
        not is_automatic_rotation(record)
        and statement_signed(record, keys)
        and stated_in_time(record, lag_s)
    )


def is_automatic_rotation(record: dict[str, Any]) -> bool:
    meta = record.get("meta")
    return isinstance(meta, dict) and meta.get("automatic") is True


class CheckedGapFinder(GapFinder):
    """GapFinder where only signed statements document gaps.

    A gap statement with a bad or missing signature is ignored; a rotation
    documents itself only when it is an operator rotation with a good
    signature (an automatic one, or an unsigned one, stays undocumented unless
    a signed gap statement covers its time).
    """

    def __init__(self, keys: Sequence[PublicKey], lag_threshold_s: float) -> None:
        super().__init__(lag_threshold_s=lag_threshold_s)
        self.keys = list(keys)
        self.rejected_statements: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        before = len(self.gaps)
        try:
            super().add(record)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # a record whose times cannot be read is itself something to explain,
            # never a reason to stop reading (export and verify agree on it)
            self._previous = None  # export and verify resume alike after it
            stamp = str(record.get("timestamp_utc"))
            self.gaps.append(
                Gap(
                    "unreadable_time",
                    stamp,
                    stamp,
                    "recorded_at or relayed_at is not an RFC 3339 time",
                    record.get("sequence", 0),
                )
            )
            return
        if record.get("action") != "sentinel_rotation":
            return
        signed = operator_rotation_signed(record, self.keys, self.lag_threshold_s)
        for gap in self.gaps[before:]:
            if gap.kind == "rotation":
                gap.documented_by = record.get("event_id") if signed else None

    def note_statement(self, record: dict[str, Any]) -> None:
        if statement_signed(record, self.keys):
            meta, stamp = record["meta"], record.get("timestamp_utc")
            if isinstance(stamp, str) and isinstance(meta.get("to"), str) and meta["to"] > stamp:
                # a statement vouches for the past only: "--to 2099" must not document
                # the log being found tampered next month
                record = {**record, "meta": {**meta, "to": stamp}}
            super().note_statement(record)
        else:
            self.rejected_statements.append(
                {"sequence": record.get("sequence"), "event_id": record.get("event_id")}
            )
