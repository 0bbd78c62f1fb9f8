"""Flag platforms as sources: the Unleash mapping, and the LaunchDarkly and Flagsmith
webhook receivers as library calls (no HTTP), on the embedded outbox, relayed,
exported and verified. Payloads are shaped as the platforms document them and
signed as they sign them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from producers.events import canonical_json
from producers.identity import FileIdentityDirectory
from producers.policy import load_policy
from producers.sources.common import (
    OMITTED,
    SourceChange,
    bounded_state,
    is_production,
    policy_findings,
    source_event_id,
)
from producers.sources.unleash import unleash_change
from producers.sources.webhooks import PLATFORMS, WebhookReceiver, sign
from tests.conftest import run_cli

SECRET = "whsec-test-1"

# LaunchDarkly's audit log entry, as its webhook and "Get audit log entry" docs show it
LD_ENTRY = {
    "_links": {
        "canonical": {"href": "/api/v2/flags/default/checkout-v2", "type": "application/json"},
        "parent": {"href": "/api/v2/auditlog", "type": "application/json"},
        "self": {"href": "/api/v2/auditlog/57c0a8e29969090743529965", "type": "application/json"},
        "site": {"href": "/default/production/features/checkout-v2", "type": "text/html"},
    },
    "_id": "57c0a8e29969090743529965",
    "_accountId": "1234a56b7c89d012345e678f",
    "date": 1772355600123,
    "accesses": [
        {"action": "updateOn", "resource": "proj/default:env/production:flag/checkout-v2"}
    ],
    "kind": "flag",
    "name": "Checkout v2",
    "description": "- Turned on flag",
    "shortDescription": "",
    "comment": "Rollout approved in CHG-4821",
    "member": {
        "_links": {"parent": {"href": "/api/v2/members", "type": "application/json"}},
        "_id": "507f1f77bcf86cd799439011",
        "email": "alice@example.com",
        "firstName": "Alice",
        "lastName": "Example",
    },
    "titleVerb": "turned on the flag",
    "title": "Alice Example turned on the flag Checkout v2 in Production",
    "target": {
        "name": "Checkout v2",
        "resources": ["proj/default:env/production:flag/checkout-v2"],
    },
    "previousVersion": {"key": "checkout-v2", "environments": {"production": {"on": False}}},
    "currentVersion": {"key": "checkout-v2", "environments": {"production": {"on": True}}},
}

# Flagsmith's environment webhook body, as its docs show it
FS_ENVIRONMENT = {
    "data": {
        "changed_by": "Ben Rometsch",
        "new_state": {
            "enabled": True,
            "environment": {"id": 23, "name": "Development"},
            "feature": {
                "created_date": "2021-02-10T20:03:43.348556Z",
                "default_enabled": False,
                "description": "Show html in a butter bar for certain users",
                "id": 7168,
                "initial_value": None,
                "name": "butter_bar",
                "project": {"id": 12, "name": "Flagsmith Website"},
                "type": "CONFIG",
            },
            "feature_segment": None,
            "feature_state_value": "<strong>\nYou are using the develop environment.\n</strong>",
            "identity": None,
            "identity_identifier": None,
        },
        "previous_state": {
            "enabled": False,
            "environment": {"id": 23, "name": "Development"},
            "feature": {
                "created_date": "2021-02-10T20:03:43.348556Z",
                "default_enabled": False,
                "description": "Show html in a butter bar for certain users",
                "id": 7168,
                "initial_value": None,
                "name": "butter_bar",
                "project": {"id": 12, "name": "Flagsmith Website"},
                "type": "CONFIG",
            },
            "feature_segment": None,
            "feature_state_value": "<strong>\nYou are using the develop environment.\n</strong>",
            "identity": None,
            "identity_identifier": None,
        },
        "timestamp": "2021-06-18T07:50:26.595298Z",
    },
    "event_type": "FLAG_UPDATED",
}

# Flagsmith's audit-log webhook body, as its docs show it
FS_AUDIT = {
    "created_date": "2020-02-23T17:30:57.006318Z",
    "log": "New Flag / Remote Config created: my_feature",
    "author": {"id": 3, "email": "user@domain.com", "first_name": "Kyle", "last_name": "Johnson"},
    "environment": None,
    "project": {"id": 6, "name": "Project name", "organisation": 1},
    "related_object_id": 6,
    "related_object_type": "FEATURE",
}


def flagsmith_body(value: dict) -> bytes:
    """Flagsmith sends json.dumps(data, sort_keys=True) and signs those bytes."""
    return json.dumps(value, sort_keys=True).encode()


def receiver(engine: Engine, workdir: Path, platform: str) -> WebhookReceiver:
    return WebhookReceiver(
        engine,
        PLATFORMS[platform](),
        SECRET,
        chain_id="flag-audit",
        policy=load_policy(),
        identities=FileIdentityDirectory(workdir / "identities.toml"),
    )


def outbox_records(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT payload FROM flagtrail_outbox ORDER BY id")).scalars()
        return [json.loads(p) for p in rows]


# -- Unleash mapping ----------------------------------------------------------------------
def api_event(**fields: object) -> dict:
    event = {
        "id": 41,
        "type": "feature-environment-enabled",
        "createdBy": "alice@example.com",
        "createdByUserId": 7,
        "createdAt": "2026-03-01T10:00:00.123Z",
        "data": None,
        "preData": None,
        "featureName": "checkout-v2",
        "project": "default",
        "environment": "production",
    }
    return event | fields


def test_unleash_events_map_to_actions_states_and_ids() -> None:
    change = unleash_change(api_event())
    assert change is not None
    assert (change.action, change.flag_key, change.environment) == (
        "update",
        "checkout-v2",
        "production",
    )
    assert change.after == {"enabled": True, "environment": "production"}
    assert change.recorded_at == datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert source_event_id("unleash", change.platform_id) == "unleash:41"
    kinds = {
        "feature-created": "create",
        "feature-archived": "delete",
        "feature-strategy-update": "rollout",
        "feature-metadata-updated": "update",
    }
    for kind, action in kinds.items():
        mapped = unleash_change(api_event(type=kind, data={"x": 1}, environment=None))
        assert mapped is not None and mapped.action == action and mapped.after == {"x": 1}
    assert unleash_change(api_event(type="user-created", featureName=None)) is None


def test_an_unleash_archive_bound_to_no_environment_is_judged_as_production() -> None:
    production = frozenset({"production"})
    archive = unleash_change(api_event(type="feature-archived", environment=None))
    create = unleash_change(api_event(type="feature-created", environment=None))
    assert archive is not None and create is not None
    assert is_production(archive, production) and not is_production(create, production)
    findings = policy_findings(archive, True)
    assert findings[0]["control"] == "CC8.1"


def test_odd_platform_ids_map_to_one_plain_event_id_each() -> None:
    odd = source_event_id("flagsmith", "a/b c\u202e" * 30)
    assert odd == source_event_id("flagsmith", "a/b c\u202e" * 30)
    assert len(odd) <= 64 and odd.startswith("flagsmith:sha256:")
    assert odd != source_event_id("flagsmith", "a/b c\u202e" * 31)


def test_states_too_big_or_too_deep_are_omitted_not_refused() -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    assert OMITTED in bounded_state(deep)
    assert OMITTED in bounded_state({"x": "y" * 70_000})
    assert bounded_state({"x": [1, 2]}) == {"x": [1, 2]}


# -- LaunchDarkly -------------------------------------------------------------------------
def test_a_signed_launchdarkly_entry_is_durable_before_200_and_recorded_once(
    sqlite_engine: Engine, workdir: Path
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps(LD_ENTRY).encode()
    answer = ld.receive(body, {"X-LD-Signature": sign(SECRET, body)})
    assert answer.status == 200 and answer.body["duplicate"] is False
    [record] = outbox_records(sqlite_engine)  # committed before the answer
    assert record["event_id"] == "launchdarkly:57c0a8e29969090743529965"
    assert record["actor"] == "alice@example.com"
    assert (record["flag_key"], record["environment"]) == ("checkout-v2", "production")
    assert record["recorded_at"] == "2026-03-01T09:00:00.123000Z"
    assert record["before"]["environments"]["production"]["on"] is False
    assert record["after"]["environments"]["production"]["on"] is True
    assert record["policy_findings"][0]["rule"] == "distinct-approver"
    again = ld.receive(body, {"x-ld-signature": sign(SECRET, body)})  # redelivery, replay
    assert again.status == 200 and again.body["duplicate"] is True
    assert len(outbox_records(sqlite_engine)) == 1


def test_a_bad_signature_is_401_and_one_chained_rejection_however_often_replayed(
    sqlite_engine: Engine, workdir: Path
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps(LD_ENTRY).encode()
    forged = body.replace(b"alice@example.com", b"bob@example.com")
    for _ in range(3):
        answer = ld.receive(forged, {"X-LD-Signature": sign(SECRET, body)})
        assert answer.status == 401
    assert ld.receive(body, {}).status == 401  # no signature at all
    assert ld.receive(body, {"X-LD-Signature": sign("other", body)}).status == 401
    records = outbox_records(sqlite_engine)
    assert [r["action"] for r in records] == ["rejected"] * 3
    assert all("CC7.2" in r["soc2_controls"] for r in records)
    assert records[0]["meta"]["rule"] == "bad-signature" and records[0]["meta"]["status"] == 401
    assert "bob@example.com" not in json.dumps(records)  # an unsigned claim is not evidence


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        json.dumps({**LD_ENTRY, "date": "yesterday"}).encode(),
        json.dumps(
            {**LD_ENTRY, "accesses": [{"action": "updateOn"}], "currentVersion": {}}
        ).encode(),
        json.dumps({**LD_ENTRY, "_id": None}).encode(),
        b'{"kind": "flag", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({**LD_ENTRY, "big": 2**64}).encode(),
    ],
)
def test_a_signed_but_malformed_body_is_400_and_records_nothing(
    sqlite_engine: Engine, workdir: Path, body: bytes
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    answer = ld.receive(body, {"X-LD-Signature": sign(SECRET, body)})
    assert answer.status == 400, answer.body
    assert answer.problem == "malformed-webhook"
    assert outbox_records(sqlite_engine) == []


def test_a_huge_signed_body_is_refused_before_it_is_parsed(
    sqlite_engine: Engine, workdir: Path
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps({**LD_ENTRY, "pad": "x" * 2_000_000}).encode()
    assert ld.receive(body, {"X-LD-Signature": sign(SECRET, body)}).status == 413
    assert outbox_records(sqlite_engine) == []


def test_a_launchdarkly_entry_about_no_flag_is_acknowledged_not_recorded(
    sqlite_engine: Engine, workdir: Path
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps({**LD_ENTRY, "kind": "member"}).encode()
    answer = ld.receive(body, {"X-LD-Signature": sign(SECRET, body)})
    assert answer.status == 200 and answer.body["recorded"] is False
    assert outbox_records(sqlite_engine) == []


def test_an_entry_touching_staging_and_production_is_judged_as_production(
    sqlite_engine: Engine, workdir: Path
) -> None:
    entry = copy.deepcopy(LD_ENTRY)
    entry["accesses"] = [
        {"action": "updateRules", "resource": "proj/default:env/staging:flag/checkout-v2"},
        {"action": "updateRules", "resource": "proj/default:env/Production:flag/checkout-v2"},
    ]
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps(entry).encode()
    assert ld.receive(body, {"X-LD-Signature": sign(SECRET, body)}).status == 200
    [record] = outbox_records(sqlite_engine)
    assert record["action"] == "rollout" and record["policy_findings"]


# -- Flagsmith ----------------------------------------------------------------------------
def test_flagsmith_environment_and_audit_webhooks_are_recorded_once(
    sqlite_engine: Engine, workdir: Path
) -> None:
    fs = receiver(sqlite_engine, workdir, "flagsmith")
    for payload in (FS_ENVIRONMENT, FS_AUDIT):
        body = flagsmith_body(payload)
        headers = {"X-Flagsmith-Signature": sign(SECRET, body)}
        assert fs.receive(body, headers).status == 200
        assert fs.receive(body, headers).body["duplicate"] is True
    update, created = outbox_records(sqlite_engine)
    assert (update["flag_key"], update["environment"], update["action"]) == (
        "butter_bar",
        "Development",
        "update",
    )
    assert update["actor"] == "Ben Rometsch" and update["before"]["enabled"] is False
    assert update["recorded_at"] == "2021-06-18T07:50:26.595298Z"
    assert update["policy_findings"] == []  # Development is not production
    assert (created["flag_key"], created["action"], created["actor"]) == (
        "my_feature",
        "create",
        "user@domain.com",
    )
    bad = flagsmith_body(FS_AUDIT)
    assert fs.receive(bad, {"X-Flagsmith-Signature": sign("wrong", bad)}).status == 401


def test_a_production_flagsmith_change_without_approval_is_a_cc81_exception(
    sqlite_engine: Engine, workdir: Path
) -> None:
    payload = copy.deepcopy(FS_ENVIRONMENT)
    for state in ("new_state", "previous_state"):
        payload["data"][state]["environment"] = {"id": 1, "name": "Production"}
    fs = receiver(sqlite_engine, workdir, "flagsmith")
    body = flagsmith_body(payload)
    assert fs.receive(body, {"X-Flagsmith-Signature": sign(SECRET, body)}).status == 200
    [record] = outbox_records(sqlite_engine)
    assert record["policy_findings"][0]["control"] == "CC8.1"
    assert "CC7.2" in record["soc2_controls"] and "CC8.1" not in record["soc2_controls"]


def test_a_carried_approver_is_checked_against_the_identity_directory(workdir: Path) -> None:
    identities = FileIdentityDirectory(workdir / "identities.toml")
    policy = load_policy()

    def change(approver: str | None, actor: str = "alice@example.com") -> SourceChange:
        return SourceChange(
            "launchdarkly", "1", "updateOn", datetime.now(UTC), actor, "f", "production",
            "update", approver=approver,
        )  # fmt: skip

    assert policy_findings(change("bob@example.com"), True, identities, policy) == []
    rules = {
        "mallory@example.com": "unverified-approver",
        "carol@example.com": "approver-role-not-held",
        "alice@example.com": "distinct-approver",
    }
    for approver, rule in rules.items():
        found = policy_findings(change(approver), True, identities, policy)
        assert [f["rule"] for f in found] == [rule], approver
    assert policy_findings(change("bob", "bob@example.com"), True, identities, policy)


def test_webhook_records_relay_export_and_verify(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    fs = receiver(sqlite_engine, workdir, "flagsmith")
    body = json.dumps(LD_ENTRY, ensure_ascii=False).replace("Alice", "Ålice 😀").encode()
    assert ld.receive(body, {"X-LD-Signature": sign(SECRET, body)}).status == 200
    assert ld.receive(b"{}", {"X-LD-Signature": "00"}).status == 401
    body = flagsmith_body(FS_ENVIRONMENT)
    assert fs.receive(body, {"X-Flagsmith-Signature": sign(SECRET, body)}).status == 200
    env = {"AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem")}
    relayed = run_cli("relay", "--once", cwd=workdir, env=env)
    assert relayed.returncode == 0 and "relayed 3 events" in relayed.stdout, relayed.stderr
    days = ["--start", "2020-01-01", "--end", datetime.now(UTC).date().isoformat()]
    assert run_cli("export", *days, "--out", "ev", cwd=workdir, env=env).returncode == 0
    jsonl = next((workdir / "ev").glob("*.jsonl"))
    pubkey = str(rsa_keys / "audit-public.pem")
    verified = run_cli("verify", str(jsonl), "--pubkey", pubkey, cwd=workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = jsonl.read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["update", "rejected", "update"]
    assert canonical_json({"a": "Ålice 😀"}).encode().isascii()


def test_exceptions_are_counted_apart_in_the_summary_and_the_relay_metric(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    from prometheus_client import generate_latest

    from relay.logs.base import LogEntry
    from relay.metrics import RelayMetrics
    from relay.relay import BatchResult

    ld = receiver(sqlite_engine, workdir, "launchdarkly")
    body = json.dumps(LD_ENTRY).encode()  # production, no approver: a CC8.1 exception
    assert ld.receive(body, {"X-LD-Signature": sign(SECRET, body)}).status == 200
    body = flagsmith_body(FS_ENVIRONMENT)  # development: no exception
    fs = receiver(sqlite_engine, workdir, "flagsmith")
    assert fs.receive(body, {"X-Flagsmith-Signature": sign(SECRET, body)}).status == 200
    env = {"AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem")}
    assert run_cli("relay", "--once", cwd=workdir, env=env).returncode == 0
    days = ["--start", "2020-01-01", "--end", datetime.now(UTC).date().isoformat()]
    assert run_cli("export", *days, "--out", "ev", cwd=workdir, env=env).returncode == 0
    jsonl = next((workdir / "ev").glob("*.jsonl"))
    summary = run_cli("summary", str(jsonl), cwd=workdir).stdout
    # the seed's lines first and unchanged; the exception is not counted as CC8.1 evidence
    assert summary.startswith(
        "SOC2 control coverage summary:\n CC6.1: 2 events\n CC6.6: 2 events\n CC7.2: 1 events\n"
    )
    assert " CC8.1: 1 exceptions" in summary.split("Policy exceptions")[1]
    metrics = RelayMetrics("flag-audit")
    lines = jsonl.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    entries = [
        LogEntry(r["sequence"], r["timestamp_utc"], r["hash"], line, None)
        for r, line in zip(records, lines, strict=True)
    ]
    metrics.batch(BatchResult(2, 1, 2, 0.01, entries, records, datetime.now(UTC).timestamp()))
    exposed = generate_latest(metrics.registry).decode()
    assert 'flagtrail_policy_exceptions_total{control="CC8.1",source="launchdarkly"} 1.0' in exposed
    assert 'source="flagsmith"' not in exposed


# -- the commands' refusals (one sentence, an exit code, nothing written) -------------------
def test_follow_without_a_token_or_with_no_unleash_there_says_so(workdir: Path) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    no_token = run_cli("sources", "unleash", "follow", "--url", url, "--once", cwd=workdir)
    assert no_token.returncode == 2 and "FLAGTRAIL_UNLEASH_TOKEN" in no_token.stderr
    down = run_cli(
        "sources", "unleash", "follow", "--url", url, "--token", "t", "--once", cwd=workdir
    )
    assert down.returncode == 5 and "unreachable" in down.stderr
    assert "Traceback" not in down.stderr + no_token.stderr


def test_install_refuses_a_database_that_is_not_postgresql(workdir: Path) -> None:
    done = run_cli(
        "sources", "unleash", "install", "--database-url", f"sqlite:///{workdir / 'u.db'}",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 2 and "PostgreSQL" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "bad", [["--lookback", "nan"], ["--lookback", "1e300"], ["--interval", "nan"]]
)
def test_follow_refuses_an_impossible_period_in_one_sentence(bad: list[str], workdir: Path) -> None:
    """NaN passed `<= 0` and 1e300 overflowed timedelta: both ended in a traceback."""
    done = run_cli(
        "sources", "unleash", "follow", "--url", "http://127.0.0.1:9", "--token", "t",
        "--once", *bad,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and bad[0] in done.stderr.strip().splitlines()[-1]
