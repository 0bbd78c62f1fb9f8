"""Meta-events under policy: operator role, signed rotations and gaps, relay-only actions."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from producers import InvalidChange, Outbox, PolicyError
from producers.controls import controls_for_meta
from producers.events import META_ACTIONS, event_record
from producers.meta import (
    GAP_SIGNED_FIELDS,
    ROTATION_SIGNED_FIELDS,
    document_gap,
    gap_statement,
    request_rotation,
    sign_statement,
    statement_digest,
)
from producers.policy import DEFAULT_POLICY, parse_policy
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from relay.signing import load_private_key, load_public_key, signature_valid
from tests.conftest import run_cli
from tests.pseudonymised import alias


def pending(outbox: Outbox) -> list[dict]:
    source = open_outbox_source(outbox.engine, outbox.chain_id)
    return [json.loads(r.payload) for r in source.fetch_pending(None, 1000)]


def signature_holds(meta: dict, public_pem: Path) -> bool:
    statement = {k: meta[k] for k in meta["signed_fields"]}
    signature = base64.b64decode(meta["statement_signature"])
    return signature_valid(statement_digest(statement), signature, load_public_key(public_pem))


@pytest.fixture
def outbox(sqlite_engine: Engine, workdir: Path) -> Outbox:
    return Outbox(sqlite_engine, str(workdir / "identities.toml"))


def test_new_meta_actions_are_in_the_vocabulary() -> None:
    assert {"quarantined", "evidence_exported", "sentinel_rotation"} <= META_ACTIONS


@pytest.mark.parametrize("who", ["alice@example.com", "carol@example.com", "eve@example.com"])
def test_rotate_needs_an_operator_role_and_the_refusal_is_recorded(
    workdir: Path, rsa_keys: Path, outbox: Outbox, who: str
) -> None:
    key = str(rsa_keys / "audit-private.pem")
    result = run_cli("rotate", "--reason", "r", "--actor", who, "--signing-key", key, cwd=workdir)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "needs an operator role (audit-admin)" in result.stderr or (
        "not a known identity" in result.stderr and who.startswith("eve")
    )
    (rejected,) = pending(outbox)
    assert rejected["action"] == "rejected" and rejected["actor"] == alias(workdir, who)
    assert rejected["meta"]["attempted_action"] == "sentinel_rotation"
    assert "CC6.1" in rejected["soc2_controls"] and "CC7.2" in rejected["soc2_controls"]


def test_gap_document_needs_an_operator_role(workdir: Path, rsa_keys: Path) -> None:
    result = run_cli(
        "gap",
        "document",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-02",
        "--reason",
        "outage",
        "--author",
        "alice@example.com",
        "--signing-key",
        str(rsa_keys / "audit-private.pem"),
        cwd=workdir,
    )
    assert result.returncode == 3 and "needs an operator role" in result.stderr


def test_the_operator_role_is_set_in_the_policy(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    text = DEFAULT_POLICY.replace('operator_roles = ["audit-admin"]', 'operator_roles = ["sre"]')
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"), policy=parse_policy(text, "p"))
    key = load_private_key(rsa_keys / "audit-private.pem")
    with pytest.raises(PolicyError, match=r"operator role \(sre\)"), sqlite_engine.begin() as c:
        request_rotation(outbox, c, "bob@example.com", "ceremony", key)


def test_an_operator_rotation_is_signed_and_still_verifies_after_the_relay(
    outbox: Outbox, workdir: Path, rsa_keys: Path
) -> None:
    key = load_private_key(rsa_keys / "audit-private.pem")
    with outbox.engine.begin() as conn:
        request_rotation(outbox, conn, "bob", "annual key ceremony", key)  # an alias of bob
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), audit_log)
        relay.resume()
        relay.drain()
        (entry,) = list(audit_log.read())
    meta = json.loads(entry.line)["meta"]
    assert meta["signed_fields"] == ROTATION_SIGNED_FIELDS
    bob = alias(workdir, "bob@example.com")
    assert meta["rotated_by"] == bob and meta["chain_id"] == outbox.chain_id
    assert meta["automatic"] is False and "previous_hash" in meta  # the relay's, unsigned
    assert meta["signing_key_fingerprint"].startswith("SHA256:")
    assert signature_holds(meta, rsa_keys / "audit-public.pem")
    meta["reason"] = "nothing to see"
    assert not signature_holds(meta, rsa_keys / "audit-public.pem")


def test_a_gap_statement_names_its_signed_fields(
    outbox: Outbox, rsa_keys: Path, workdir: Path
) -> None:
    key = load_private_key(rsa_keys / "audit-private.pem")
    statement = gap_statement(
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), "broker", "BOB"
    )
    with outbox.engine.begin() as conn:
        document_gap(outbox, conn, statement, key)
    (record,) = pending(outbox)
    meta = record["meta"]
    assert meta["signed_fields"] == GAP_SIGNED_FIELDS
    assert meta["author"] == alias(workdir, "bob@example.com")
    assert signature_holds(meta, rsa_keys / "audit-public.pem")


def meta_record(outbox: Outbox, action: str, actor: str, meta: dict) -> dict:
    return event_record(
        event_id=str(uuid.uuid4()),
        chain_id=outbox.chain_id,
        recorded_at=datetime.now(UTC),
        action=action,
        controls=controls_for_meta(),
        actor=actor,
        reason="r",
        meta=meta,
    )


@pytest.mark.parametrize(
    ("action", "meta", "message"),
    [
        ("quarantined", {"row": "0:7", "why": "x"}, "only gap_documented"),
        ("evidence_exported", {"window": "2026-01"}, "only gap_documented"),
        ("rejected", {"rule": "x"}, "only gap_documented"),
        ("update", {}, "only gap_documented"),
        (
            "sentinel_rotation",
            {"automatic": True, "reason": "r", "rotated_by": "bob@example.com"},
            "automatic rotations are the relay's",
        ),
        ("gap_documented", None, "carries no meta"),
        (
            "gap_documented",
            {"from": "a", "to": "b", "reason": "r", "author": "bob@example.com", "stated_at": "s"},
            "signed_fields must be",
        ),
    ],
)
def test_the_public_meta_api_refuses_what_only_the_relay_may_write(
    outbox: Outbox, action: str, meta: dict | None, message: str
) -> None:
    record = meta_record(outbox, action, "bob@example.com", meta)  # type: ignore[arg-type]
    with pytest.raises(InvalidChange, match=message), outbox.engine.begin() as conn:
        outbox.record_meta(conn, record)
    assert pending(outbox) == []


@pytest.fixture
def plain_outbox(sqlite_engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Outbox:
    """A chain that stores names (as chains made before pseudonyms do)."""
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "off")
    return Outbox(sqlite_engine, str(workdir / "identities.toml"))


def test_record_meta_needs_a_signature_and_an_operator(
    plain_outbox: Outbox, rsa_keys: Path
) -> None:
    outbox = plain_outbox
    key = load_private_key(rsa_keys / "audit-private.pem")
    statement = {"from": "a", "to": "b", "reason": "r", "author": "x", "stated_at": "s"}
    statement["chain_id"] = outbox.chain_id
    unsigned = {**statement, "author": "bob@example.com", "signed_fields": GAP_SIGNED_FIELDS}
    with pytest.raises(InvalidChange, match="not signed"), outbox.engine.begin() as conn:
        outbox.record_meta(conn, meta_record(outbox, "gap_documented", "bob@example.com", unsigned))
    # a well-signed statement by someone without the operator role is blocked and recorded
    by_alice = sign_statement({**statement, "author": "alice@example.com"}, GAP_SIGNED_FIELDS, key)
    forged = meta_record(outbox, "gap_documented", "alice@example.com", by_alice)
    with pytest.raises(PolicyError, match="operator role"), outbox.engine.begin() as conn:
        outbox.record_meta(conn, forged)
    assert [r["action"] for r in pending(outbox)] == ["rejected"]


def test_record_meta_keeps_only_the_checked_parts(plain_outbox: Outbox, rsa_keys: Path) -> None:
    outbox = plain_outbox
    key = load_private_key(rsa_keys / "audit-private.pem")
    statement = {"from": "a", "to": "b", "reason": "r", "author": "bob@example.com"}
    statement["chain_id"] = outbox.chain_id
    signed = sign_statement({**statement, "stated_at": "s"}, GAP_SIGNED_FIELDS, key)
    record = meta_record(outbox, "gap_documented", "bob@example.com", signed)
    record |= {"recorded_at": 12, "sequence": 99, "chain_id": "other", "flag_key": "x"}
    with outbox.engine.begin() as conn:
        outbox.record_meta(conn, record)
    (stored,) = pending(outbox)  # a poison recorded_at would stop the relay
    assert isinstance(stored["recorded_at"], str) and "sequence" not in stored
    assert stored["chain_id"] == outbox.chain_id and stored["flag_key"] == ""
    bad = sign_statement({**statement, "stated_at": "s"}, GAP_SIGNED_FIELDS, key)
    bad["extra"] = {"n": 2**60}
    with pytest.raises(InvalidChange, match="outside"), outbox.engine.begin() as conn:
        outbox.record_meta(conn, meta_record(outbox, "gap_documented", "bob@example.com", bad))
