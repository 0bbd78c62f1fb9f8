"""Resolving pseudonyms for an auditor, and erasing a subject (crypto-shredding).

Both need an operator role (the policy's ``operator_roles``) and both are chained
as meta-events through the outbox, naming pseudonyms and never people:
``identity_resolved`` (who resolved which pseudonyms; the names go only to the
caller) and ``identity_erased`` (which pseudonym, when, why). A refused attempt
is a durable ``rejected`` event, like any other operator action.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from producers import vault
from producers.controls import controls_for_meta
from producers.errors import ConfigError, EvidenceError, InvalidChange
from producers.events import event_record, format_timestamp
from producers.identity import normalize_name
from producers.meta import require_operator
from producers.pseudonyms import PSEUDONYM, is_pseudonym, pseudonym
from producers.validation import check_text

if TYPE_CHECKING:
    from producers.outbox import Outbox


def pseudonyms_in(value: Any, found: set[str]) -> set[str]:
    """Every pseudonym anywhere in a decoded JSON value."""
    if isinstance(value, str):
        found.update(PSEUDONYM.findall(value))
    elif isinstance(value, dict):
        for item in value.values():
            pseudonyms_in(item, found)
    elif isinstance(value, list):
        for item in value:
            pseudonyms_in(item, found)
    return found


def pseudonyms_in_file(path: Path) -> list[str]:
    """The pseudonyms an export (JSONL, one record a line) or any JSON file names."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    found: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            pseudonyms_in(json.loads(line), found)
        except json.JSONDecodeError:
            raise ConfigError(f"{path} line {number} is not JSON") from None
        except RecursionError:  # no record nests this deep: a hostile file
            raise ConfigError(f"{path} line {number} nests too deeply to be a record") from None
    return sorted(found)


def write_event(
    outbox: Outbox,
    conn: Connection,
    action: str,
    operator: str,
    reason: str,
    meta: dict[str, Any],
    event_id: str | None = None,
) -> str:
    """Chain a library meta-event by ``operator`` (stored as the chain stores people)."""
    record = event_record(
        event_id=event_id or str(uuid.uuid4()),
        chain_id=outbox.chain_id,
        recorded_at=outbox.clock(),
        action=action,
        controls=controls_for_meta(),
        actor=outbox.privacy.person(conn, outbox.identities.resolve(operator) or operator),
        reason=reason,
        meta=meta,
    )
    return outbox._insert_meta(conn, record)


def _check_bound(found: vault.Resolution, key: bytes) -> None:
    """The name read back must be the one the pseudonym was made from: a vault row
    copied whole from another subject (with its key) would otherwise go unnoticed."""
    if found.identity is not None and pseudonym(key, found.identity) != found.pseudonym:
        raise EvidenceError(f"vault entry of {found.pseudonym} names someone else: it was altered")


def resolve(
    outbox: Outbox, operator: str, pseudonyms: list[str], note: dict[str, Any] | None = None
) -> dict[str, vault.Resolution]:
    """Names (or "erased on DATE", or unknown) for ``pseudonyms``, after chaining who
    asked: if the event cannot be written, no name is given."""
    bad = [p for p in pseudonyms if not is_pseudonym(p)]
    if bad:
        raise InvalidChange(f"{bad[0]!r} is not a pseudonym (id: and 64 hex digits)")
    if not pseudonyms:
        raise InvalidChange("no pseudonyms to resolve (the file names none)")
    wanted = sorted(set(pseudonyms))
    with outbox.engine.begin() as conn:
        require_operator(outbox, conn, operator, "identity_resolved")
        pseudonym_key, vault_key = outbox.privacy.existing_keys(conn)
        found = vault.lookup(conn, vault_key, wanted)
        for entry in found.values():
            _check_bound(entry, pseudonym_key.material)
        counts = {"resolved": 0, "erased": 0, "unknown": 0}
        for entry in found.values():
            counts[entry.as_json()["status"]] += 1
        write_event(
            outbox,
            conn,
            "identity_resolved",
            operator,
            "pseudonyms resolved for an auditor",
            {"pseudonyms": wanted, **counts, **(note or {})},
        )
    return found


@dataclass(frozen=True)
class Erasure:
    pseudonym: str
    erased_at: str
    already: bool
    event_id: str | None


def _names_the_subject(reason: str, identity: str) -> bool:
    text = normalize_name(reason)
    spellings = {normalize_name(identity), normalize_name(identity.split("@", 1)[0])}
    return any(len(s) >= 3 and s in text for s in spellings)


def erase(outbox: Outbox, operator: str, subject: str, reason: str) -> Erasure:
    """Destroy ``subject``'s vault key and ciphertext and chain ``identity_erased``.

    ``subject`` is a pseudonym or the identity itself (it is pseudonymised here and
    never written anywhere). Erasing an erased subject changes nothing."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidChange("an erasure needs a --reason (a ticket or request number)")
    check_text("reason", reason, outbox.policy.limits.max_reason_bytes)
    with outbox.engine.begin() as conn:
        require_operator(outbox, conn, operator, "identity_erased")
        pseudonym_key, vault_key = outbox.privacy.existing_keys(conn)
        alias = (
            subject
            if is_pseudonym(subject)
            else pseudonym(pseudonym_key.material, outbox.identities.resolve(subject) or subject)
        )
        found = vault.lookup(conn, vault_key, [alias])[alias]
        if found.unknown:
            raise InvalidChange(f"no vault entry for {alias}: nothing to erase")
        if found.erased_at is not None:
            return Erasure(alias, found.erased_at, True, None)
        _check_bound(found, pseudonym_key.material)
        assert found.identity is not None
        if _names_the_subject(reason, found.identity):
            raise InvalidChange(
                "the reason names the person being erased; it is chained forever: give a "
                "ticket or request number instead"
            )
        if outbox.privacy.redact.active:
            reason = outbox.privacy.redact(reason)
        if conn.dialect.name == "sqlite":
            # overwrite the freed bytes instead of leaving them in free pages
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        at = vault.now_us()
        event_id = str(uuid.uuid4())
        vault.shred(conn, alias, event_id, at)
        erased_at = format_timestamp(datetime.fromtimestamp(at / 1_000_000, UTC))
        write_event(
            outbox,
            conn,
            "identity_erased",
            operator,
            reason,
            {"pseudonym": alias, "erased_at": erased_at},
            event_id,
        )
    _truncate_sqlite_wal(outbox)
    return Erasure(alias, vault.day_of(at), False, event_id)


def _truncate_sqlite_wal(outbox: Outbox) -> None:
    """SQLite keeps old page images in its WAL until a checkpoint: fold it back and
    empty it now (best effort: a reader holding an old snapshot can delay it)."""
    if outbox.engine.dialect.name != "sqlite":
        return
    with outbox.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


SIDECAR_SUFFIX = ".identities.json"


def write_sidecar(
    outbox: Outbox, operator: str, export: Path, signing_key: Any, out: Path | None = None
) -> tuple[Path, Path]:
    """A signed identity sidecar for an export: its pseudonyms resolved, bound to the
    export by SHA-256, signed like the export (``openssl dgst -sha256 -verify``).

    The sidecar is personal data for the auditor, never part of the chain: the export
    verifies without it, and erasing a subject later does not reach copies handed out.
    The resolve is chained (``identity_resolved``, naming the export's digest)."""
    import hashlib

    from producers.events import canonical_json
    from relay.signing import fingerprint, sign_digest

    try:
        export_sha256 = hashlib.sha256(export.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"cannot read export {export}: {exc.strerror}") from None
    wanted = pseudonyms_in_file(export)
    if not wanted:
        raise InvalidChange(f"{export} names no pseudonyms: no sidecar needed")
    found = resolve(
        outbox, operator, wanted, {"sidecar_for": export.name, "export_sha256": export_sha256}
    )
    sidecar = {
        "sidecar_version": 1,
        "export_file": export.name,
        "export_sha256": export_sha256,
        "generated_at": format_timestamp(datetime.now(UTC)),
        "identities": {p: found[p].as_json() for p in sorted(found)},
        "public_key_fingerprint": fingerprint(signing_key.public_key()),
        "note": "personal data for the auditor; not part of the chain, which verifies without it",
    }
    body = canonical_json(sidecar).encode()
    path = out or export.with_name(export.name.removesuffix(".jsonl") + SIDECAR_SUFFIX)
    signature = path.with_name(path.name + ".sig")
    write_private(path, body)
    write_private(signature, sign_digest(hashlib.sha256(body).digest(), signing_key))
    return path, signature


def write_private(path: Path, data: bytes) -> None:
    from relay.signing import write_private_file

    try:
        write_private_file(path, data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
