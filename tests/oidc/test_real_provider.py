"""Outbox.record against a real OpenID Connect provider (npm oidc-provider on loopback).

Every token here is issued by the provider's own token endpoint; nothing signs
a token by hand. Each refusal is a PolicyError (403, CC6.6) whose attempt is
chained as a ``rejected`` event.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from producers import FlagChange, Outbox, PolicyError
from producers.oidc.approval import change_digest
from producers.oidc.replay import used_approvals
from producers.pseudonyms import pseudonym
from producers.schema import outbox as outbox_table
from tests.conftest import run_cli
from tests.oidc.conftest import Provider

pytestmark = pytest.mark.oidc


def change(**overrides: Any) -> FlagChange:
    fields: dict[str, Any] = {
        "actor": "",
        "role": "release-manager",
        "flag_key": "checkout-v2",
        "environment": "production",
        "action": "rollout",
        "before": {"enabled": True, "rollout": 10},
        "after": {"enabled": True, "rollout": 50},
        "reason": "step up after a clean day",
        "change_ref": "CHG-4821",
    }
    return FlagChange(**(fields | overrides))


def make_outbox(engine: Engine, folder: Path, provider: Provider, **settings: object) -> Outbox:
    policy = folder / f"policy-{len(list(folder.glob('policy-*')))}.toml"
    policy.write_text(provider.policy(**settings))
    return Outbox(engine, str(folder / "identities.toml"), policy=str(policy))


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        payloads = conn.execute(select(outbox_table.c.payload).order_by(outbox_table.c.id))
        return [json.loads(p) for (p,) in payloads]


def header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def refused(outbox: Outbox, engine: Engine, attempt: FlagChange, rule: str, **tokens: str) -> str:
    """Assert the attempt is refused (403, CC6.6 for tokens) and chained as rejected."""
    with pytest.raises(PolicyError) as caught, engine.begin() as conn:
        outbox.record(conn, attempt, **tokens)
    assert caught.value.rule == rule, caught.value.message
    last = rows(engine)[-1]
    assert last["action"] == "rejected" and last["meta"]["rule"] == rule
    assert last["meta"]["status"] == 403 and last["meta"]["control"] == caught.value.control
    return caught.value.message


@pytest.fixture
def oidc_outbox(sqlite_engine: Engine, workdir: Path, oidc_provider: Provider) -> Outbox:
    return make_outbox(sqlite_engine, workdir, oidc_provider)


def test_valid_tokens_record_the_verified_subjects_and_how(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()
    actor_token = oidc_provider.token("alice@example.com", "urn:flagtrail:rs256")
    approval = oidc_provider.token("bob@example.com", "urn:flagtrail:es256", approves=attempt)
    with sqlite_engine.begin() as conn:
        oidc_outbox.record(conn, attempt, actor_token=actor_token, approval_token=approval)
    (record,) = rows(sqlite_engine)
    assert record["action"] == "rollout"
    key = oidc_outbox.privacy.pseudonym_key.material  # a new chain stores pseudonyms
    assert (record["actor"], record["approver"]) == (
        pseudonym(key, "alice@example.com"),
        pseudonym(key, "bob@example.com"),
    )
    assert record["auth"]["actor"] == {
        "method": "oidc",
        "issuer": oidc_provider.issuer,
        "key_id": header(actor_token)["kid"],
        "algorithm": "RS256",
    }
    approver = record["auth"]["approver"]
    assert approver["method"] == "oidc" and approver["algorithm"] == "ES256"
    assert approver["key_id"] == header(approval)["kid"] and approver["token_id"]
    assert "CC8.1" in record["soc2_controls"]


def test_outside_production_an_actor_token_alone_is_enough(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change(environment="staging", role="engineer", change_ref="")
    with sqlite_engine.begin() as conn:
        oidc_outbox.record(conn, attempt, actor_token=oidc_provider.token("carol@example.com"))
    (record,) = rows(sqlite_engine)
    carol = pseudonym(oidc_outbox.privacy.pseudonym_key.material, "carol@example.com")
    assert record["actor"] == carol and record["approver"] is None
    assert record["auth"]["actor"]["method"] == "oidc" and record["auth"]["approver"] is None


def test_a_typed_name_that_is_not_the_tokens_subject_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change(actor="carol@example.com")
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-subject-mismatch",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )
    assert message.startswith("SOC2 CC6.6:")


def test_roles_come_from_the_providers_groups(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    # carol is in "engineering" only (engineer): no release-manager role in production
    attempt = change()
    refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "role-not-held",
        actor_token=oidc_provider.token("carol@example.com"),
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )
    # and an approver in no approving group cannot approve
    refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "approver-role-not-held",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=oidc_provider.token("mallory@example.com", approves=attempt),
    )


def test_one_person_holding_both_tokens_is_not_a_distinct_approver(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()
    refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "distinct-approver",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=oidc_provider.token("alice@example.com", approves=attempt),
    )


def test_missing_tokens_are_refused_when_the_policy_requires_them(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    # names the directory knows are not enough once the provider is required
    attempt = change(actor="alice@example.com", approver="bob@example.com")
    refused(oidc_outbox, sqlite_engine, attempt, "oidc-token-missing")
    refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-token-missing",
        actor_token=oidc_provider.token("alice@example.com"),
    )


def test_an_expired_token_is_refused(
    sqlite_engine: Engine, workdir: Path, oidc_provider: Provider
) -> None:
    outbox = make_outbox(sqlite_engine, workdir, oidc_provider, leeway_seconds=0)
    attempt = change()
    short = oidc_provider.token("alice@example.com", "urn:flagtrail:short")  # lives 2 s
    approval = oidc_provider.token("bob@example.com", approves=attempt)
    time.sleep(3.1)
    message = refused(
        outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=short,
        approval_token=approval,
    )
    assert "expired" in message
    assert rows(sqlite_engine)[-1]["meta"]["control"] == "CC6.6"


def test_a_token_for_another_audience_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=oidc_provider.token("alice@example.com", "urn:other:service"),
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )
    assert "audience" in message


def test_a_token_from_another_issuer_with_the_same_keys_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider, twin_provider: Provider
) -> None:
    attempt = change()
    twin_token = twin_provider.token("alice@example.com")
    assert header(twin_token)["kid"] == header(oidc_provider.token("alice@example.com"))["kid"]
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=twin_token,
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )
    assert "issuer" in message


def test_a_token_signed_by_an_unknown_key_is_refused(
    oidc_outbox: Outbox,
    sqlite_engine: Engine,
    oidc_provider: Provider,
    stranger_provider: Provider,
) -> None:
    attempt = change()
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-approval-token",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=stranger_provider.token("bob@example.com", approves=attempt),
    )
    assert "not among the provider's keys" in message


def test_a_tampered_token_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()
    head, payload, signature = oidc_provider.token("carol@example.com").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["flag-release-managers"]  # carol promotes herself
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=f"{head}.{forged}.{signature}",
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )
    assert "signature" in message


def test_an_approval_token_cannot_serve_as_an_actor_token(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    # alice is handed bob's approval to submit her change; she must not act as bob
    attempt = change()
    bobs_approval = oidc_provider.token("bob@example.com", approves=attempt)
    message = refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=bobs_approval,
        approval_token=oidc_provider.token("alice@example.com", approves=attempt),
    )
    assert "approval token" in message


def test_a_groups_claim_that_is_a_string_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()  # dana's provider says groups: "flag-release-managers"
    refused(
        oidc_outbox,
        sqlite_engine,
        attempt,
        "oidc-actor-token",
        actor_token=oidc_provider.token("dana@example.com"),
        approval_token=oidc_provider.token("bob@example.com", approves=attempt),
    )


@pytest.mark.parametrize(
    "other",
    [
        {"flag_key": "search-v3"},
        {"environment": "production-eu"},
        {"action": "update"},
        {"after": {"enabled": True, "rollout": 100}},
        {"before": {"enabled": False}},
    ],
)
def test_an_approval_cannot_be_replayed_for_another_change(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider, other: dict[str, Any]
) -> None:
    approval = oidc_provider.token("bob@example.com", approves=change())
    refused(
        oidc_outbox,
        sqlite_engine,
        change(**other),
        "oidc-approval-binding",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=approval,
    )


def test_an_approval_without_the_binding_is_refused(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    refused(
        oidc_outbox,
        sqlite_engine,
        change(),
        "oidc-approval-binding",
        actor_token=oidc_provider.token("alice@example.com"),
        approval_token=oidc_provider.token("bob@example.com"),
    )


def test_an_approval_is_spent_by_its_change_and_refused_the_second_time(
    oidc_outbox: Outbox, sqlite_engine: Engine, oidc_provider: Provider
) -> None:
    attempt = change()
    actor_token = oidc_provider.token("alice@example.com")
    approval = oidc_provider.token("bob@example.com", approves=attempt)
    # a rolled-back transaction does not spend it
    with pytest.raises(RuntimeError), sqlite_engine.begin() as conn:
        oidc_outbox.record(conn, attempt, actor_token=actor_token, approval_token=approval)
        raise RuntimeError("the flag write failed")
    with sqlite_engine.begin() as conn:
        oidc_outbox.record(conn, attempt, actor_token=actor_token, approval_token=approval)
    # the same change again (a new event), the same approval: refused, durably
    again = change()
    message = refused(
        oidc_outbox,
        sqlite_engine,
        again,
        "oidc-approval-replayed",
        actor_token=actor_token,
        approval_token=approval,
    )
    assert "already used" in message
    # another process (a fresh Outbox, another key cache) sees the spent id too
    fresh = Outbox(sqlite_engine, oidc_outbox.identities, policy=oidc_outbox.policy)
    refused(
        fresh,
        sqlite_engine,
        change(),
        "oidc-approval-replayed",
        actor_token=actor_token,
        approval_token=approval,
    )
    with sqlite_engine.connect() as conn:
        assert len(conn.execute(select(used_approvals)).all()) == 1
    assert [r["action"] for r in rows(sqlite_engine)] == ["rollout", "rejected", "rejected"]


def test_key_rotation_refetches_once_for_a_new_key_and_drops_retired_keys(
    sqlite_engine: Engine, workdir: Path, rotating_provider: Provider
) -> None:
    provider = rotating_provider
    outbox = make_outbox(sqlite_engine, workdir, provider, jwks_refetch_seconds=1)
    keys = outbox.identity_source.verifier.keys

    def record(actor_token: str, **overrides: Any) -> None:
        attempt = change(**overrides)
        approval = provider.token("bob@example.com", approves=attempt)
        with sqlite_engine.begin() as conn:
            outbox.record(conn, attempt, actor_token=actor_token, approval_token=approval)

    old_token = provider.token("alice@example.com")
    record(old_token)
    assert keys.fetches == 1
    provider.rotate()  # new keys first, old ones still published
    new_token = provider.token("alice@example.com")
    assert header(new_token)["kid"] != header(old_token)["kid"]
    time.sleep(1.1)  # past the refetch interval since the first fetch
    record(new_token, flag_key="search-v3")
    assert keys.fetches == 2  # one refetch for the new kid
    record(old_token, flag_key="payments-v2")  # old key still published: still good
    assert keys.fetches == 2
    # a burst of unknown kids right after a refetch does not refetch again
    forged = provider.token("alice@example.com").split(".")
    bogus = base64.urlsafe_b64encode(
        json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": "no-such-key"}).encode()
    ).rstrip(b"=")
    unknown_kid = ".".join([bogus.decode(), *forged[1:]])
    for _ in range(5):
        refused(
            outbox,
            sqlite_engine,
            change(),
            "oidc-actor-token",
            actor_token=unknown_kid,
            approval_token=provider.token("bob@example.com", approves=change()),
        )
    assert keys.fetches == 2  # within the refetch interval: the cache answers
    time.sleep(1.1)
    refused(
        outbox,
        sqlite_engine,
        change(),
        "oidc-actor-token",
        actor_token=unknown_kid,
        approval_token=provider.token("bob@example.com", approves=change()),
    )
    assert keys.fetches == 3  # once the interval passed, one refetch
    provider.retire()  # the old keys are withdrawn
    # a control plane started now (fresh cache) no longer trusts the old key
    later = make_outbox(sqlite_engine, workdir, provider)
    message = refused(
        later,
        sqlite_engine,
        change(),
        "oidc-actor-token",
        actor_token=old_token,
        approval_token=provider.token("bob@example.com", approves=change()),
    )
    assert "not among the provider's keys" in message


def test_record_cli_takes_tokens_and_summary_counts_provider_changes(
    workdir: Path, oidc_provider: Provider, rsa_keys: Path
) -> None:
    (workdir / "policy.toml").write_text(oidc_provider.policy())
    env = {
        "FLAGTRAIL_POLICY": str(workdir / "policy.toml"),
        "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{workdir / 'outbox.db'}",
        "FLAGTRAIL_LOG_URL": f"sqlite:///{workdir / 'log.db'}",
    }
    attempt = change(flag_key="cli-flag", before=None, after={"enabled": True})
    args = [
        "record",
        "--flag=cli-flag",
        "--env=production",
        "--action=rollout",
        "--role=release-manager",
        '--after={"enabled": true}',
        "--reason=ship it",
        "--change-ref=CHG-1",
    ]
    missing = run_cli(*args, "--actor=alice@example.com", cwd=workdir, env=env)
    assert missing.returncode == 3 and "requires an actor token" in missing.stderr
    assert "Traceback" not in missing.stderr
    env["FLAGTRAIL_ACTOR_TOKEN"] = oidc_provider.token("alice@example.com")
    # the approval UI's entry, from `flagtrail approval-digest`, is what record checks
    digest = run_cli(
        "approval-digest", *args[1:4], '--after={"enabled": true}', "--json", cwd=workdir
    )
    assert digest.returncode == 0, digest.stderr
    entry = json.loads(digest.stdout)
    assert entry["change_digest"] == change_digest(attempt)
    approval = oidc_provider.token("bob@example.com", details=[entry])
    done = run_cli(*args, f"--approval-token={approval}", cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    again = run_cli(*args, f"--approval-token={approval}", cwd=workdir, env=env)
    assert again.returncode == 3 and "already used" in again.stderr
    assert "Traceback" not in again.stderr
    # relay, export, summary: one of the two changes the provider authenticated
    assert run_cli("relay", "--once", cwd=workdir, env=env).returncode == 0
    today = datetime.now(UTC).date().isoformat()
    signing_key = str(rsa_keys / "audit-private.pem")
    window = ["--start", today, "--end", today, "--out", str(workdir / "out")]
    exported = run_cli("export", *window, "--signing-key", signing_key, cwd=workdir, env=env)
    assert exported.returncode == 0, exported.stderr
    (out,) = (workdir / "out").glob("*.jsonl")
    summary = run_cli("summary", str(out), cwd=workdir, env=env)
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.startswith("SOC2 control coverage summary:\n CC6.1: 3 events\n")
    assert "Flag changes authenticated by OpenID Connect: 1 of 1\n" in summary.stdout


def test_without_require_tokens_a_missing_token_falls_back_to_the_directory(
    sqlite_engine: Engine, workdir: Path, oidc_provider: Provider
) -> None:
    outbox = make_outbox(sqlite_engine, workdir, oidc_provider, require_tokens=False)
    attempt = change(approver="bob@example.com")  # bob from the directory, no approval token
    with sqlite_engine.begin() as conn:
        outbox.record(conn, attempt, actor_token=oidc_provider.token("alice@example.com"))
    (record,) = rows(sqlite_engine)
    assert record["auth"]["actor"]["method"] == "oidc"
    assert record["auth"]["approver"] == {"method": "directory", "issuer": None, "key_id": None}
    # a token that is present is still verified: no fallback for a bad one
    refused(
        outbox,
        sqlite_engine,
        change(approver="bob@example.com"),
        "oidc-actor-token",
        actor_token=oidc_provider.token("alice@example.com", "urn:other:service"),
    )


def test_an_unreachable_provider_is_an_outage_not_a_refusal(
    sqlite_engine: Engine, workdir: Path, rotating_provider: Provider
) -> None:
    from producers.errors import BackendUnavailable

    outbox = make_outbox(sqlite_engine, workdir, rotating_provider)
    attempt = change()
    tokens = {
        "actor_token": rotating_provider.token("alice@example.com"),
        "approval_token": rotating_provider.token("bob@example.com", approves=attempt),
    }
    rotating_provider.stop()
    with pytest.raises(BackendUnavailable), sqlite_engine.begin() as conn:
        outbox.record(conn, attempt, **tokens)
    assert rows(sqlite_engine) == []  # nothing recorded: the caller retries
