"""Write-time policy: CC8.1 separation of duties, CC6.1 RBAC, verified identities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from producers import FlagChange, InvalidChange, Outbox, PolicyError
from producers.errors import ConfigError
from producers.identity import SAMPLE_DIRECTORY, parse_directory
from producers.policy import (
    DEFAULT_POLICY,
    DISTINCT_APPROVER_MESSAGE,
    default_policy,
    evaluate,
    load_policy,
    parse_policy,
)
from producers.pseudonyms import pseudonym
from relay.outbox import open_outbox_source
from tests.conftest import run_cli

DIRECTORY = parse_directory(SAMPLE_DIRECTORY, "sample")


def change(**overrides: object) -> FlagChange:
    fields = dict(
        actor="alice@example.com",
        approver="bob@example.com",
        role="release-manager",
        flag_key="checkout-v2",
        environment="production",
        action="update",
        before={"enabled": False},
        after={"enabled": True},
        reason="Rollout",
        change_ref="CHG-1",
    )
    fields.update(overrides)
    return FlagChange(**fields)  # type: ignore[arg-type]


def test_valid_production_change_passes() -> None:
    assert evaluate(change(), DIRECTORY) is None


@pytest.mark.parametrize("approver", [None, "", "alice@example.com"])
def test_production_needs_a_distinct_approver_with_the_seed_message(approver: object) -> None:
    violation = evaluate(change(approver=approver), DIRECTORY)
    assert violation is not None
    assert violation.message == DISTINCT_APPROVER_MESSAGE
    assert violation.message == "SOC2 CC8.1: production flag change requires a distinct approver"


@pytest.mark.parametrize(
    ("overrides", "rule", "prefix"),
    [
        ({"actor": "nobody@example.com"}, "unknown-actor", "SOC2 CC6.1:"),
        ({"role": "engineer"}, "role-not-allowed", "SOC2 CC6.1:"),
        (
            {"actor": "bob@example.com", "approver": "alice@example.com", "role": "engineer"},
            "role-not-held",
            "SOC2 CC6.1:",
        ),
        ({"approver": "mallory@evil.test"}, "unverified-approver", "SOC2 CC8.1:"),
        ({"reason": "  "}, "required-fields", "SOC2 CC8.1:"),
        ({"change_ref": ""}, "required-fields", "SOC2 CC8.1:"),
        ({"actor": ""}, "required-fields", "SOC2 CC6.1:"),
    ],
)
def test_blocked_changes_name_their_rule(overrides: dict, rule: str, prefix: str) -> None:
    violation = evaluate(change(**overrides), DIRECTORY)
    assert violation is not None and violation.rule == rule
    assert violation.message.startswith(prefix)


def test_staging_needs_no_approver_or_ticket_but_a_held_role() -> None:
    ok = change(
        actor="carol@example.com",
        approver=None,
        role="engineer",
        environment="staging",
        change_ref="",
    )
    assert evaluate(ok, DIRECTORY) is None
    bad = change(
        actor="carol@example.com", approver=None, role="release-manager", environment="staging"
    )
    assert evaluate(bad, DIRECTORY).rule == "role-not-held"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "overrides",
    [{"action": "toggle"}, {"flag_key": ""}, {"after": {1, 2}}, {"before": float("nan")}],
)
def test_malformed_changes_are_invalid_not_policy(overrides: dict) -> None:
    with pytest.raises(InvalidChange):
        change(**overrides).validate_shape()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ("[other]\nx=1", r"no \[identities"),
        ('[identities."a"]\nroles = "admin"', "must be a list of strings"),
    ],
)
def test_bad_identity_directory_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_directory(text, "ids.toml")


# -- policy by class, failing closed (issue 7, section 9) ---------------------------------
ALIASED = parse_directory(
    SAMPLE_DIRECTORY.replace(
        'roles = ["engineer", "release-manager"]',
        'roles = ["engineer", "release-manager"]\naliases = ["Alice@Example.com", "alice"]',
        1,
    ),
    "aliased",
)


@pytest.mark.parametrize(
    "environment",
    [
        "production",
        "Production",
        "prod",
        " PRODUCTION ",
        "\uff50\uff52\uff4f\uff44",
        "Production-EU",
    ],
)
def test_every_spelling_of_production_gets_the_production_rules(environment: str) -> None:
    violation = evaluate(change(environment=environment, approver="alice@example.com"), DIRECTORY)
    assert violation is not None and violation.message == DISTINCT_APPROVER_MESSAGE
    no_ticket = evaluate(change(environment=environment, change_ref=""), DIRECTORY)
    assert no_ticket is not None and no_ticket.rule == "required-fields"
    engineer = evaluate(change(environment=environment, role="engineer"), DIRECTORY)
    assert engineer is not None and engineer.rule == "role-not-allowed"
    assert evaluate(change(environment=environment), DIRECTORY) is None


@pytest.mark.parametrize("environment", ["prod-us", "produktion", "", "staging2"])
def test_an_undeclared_environment_is_refused_with_400(environment: str) -> None:
    with pytest.raises(InvalidChange) as raised:
        evaluate(change(environment=environment or " "), DIRECTORY)
    assert raised.value.status == 400 and "not declared" in str(raised.value)


def test_a_default_class_takes_undeclared_environments() -> None:
    text = DEFAULT_POLICY.replace("# default_class", "default_class")
    lenient = parse_policy(text, "lenient.toml")
    ok = change(actor="carol@example.com", role="engineer", approver=None, environment="qa-7")
    assert evaluate(ok, DIRECTORY, lenient) is None
    strict = parse_policy(
        DEFAULT_POLICY.replace("# default_class", 'default_class = "production"\n#'), "s"
    )
    assert evaluate(ok, DIRECTORY, strict).rule == "distinct-approver"  # type: ignore[union-attr]


def test_the_approver_must_hold_an_approving_role_for_the_class() -> None:
    violation = evaluate(change(approver="carol@example.com"), DIRECTORY)
    assert violation is not None and violation.rule == "approver-role-not-held"
    assert violation.message.startswith("SOC2 CC8.1: approver 'carol@example.com' holds no")


@pytest.mark.parametrize(
    ("actor", "approver"),
    [
        ("ALICE@example.com", "alice"),
        ("alice", "alice@example.com"),
        ("Alice@Example.com", " alice@EXAMPLE.com "),
        ("\uff41\uff4c\uff49\uff43\uff45@example.com", "alice"),  # fullwidth
    ],
)
def test_aliases_resolve_to_one_identity_before_the_distinct_approver_check(
    actor: str, approver: str
) -> None:
    violation = evaluate(change(actor=actor, approver=approver), ALIASED)
    assert violation is not None and violation.message == DISTINCT_APPROVER_MESSAGE


def test_an_alias_is_a_known_identity_with_its_roles() -> None:
    assert evaluate(change(actor="alice", approver="BOB@example.com"), ALIASED) is None
    assert ALIASED.resolve("ALICE@EXAMPLE.COM") == "alice@example.com"
    assert ALIASED.resolve("mallory") is None


def test_one_alias_for_two_people_is_a_config_error() -> None:
    text = SAMPLE_DIRECTORY.replace(
        'roles = ["engineer"]', 'roles = ["engineer"]\naliases = ["Bob"]'
    )
    with pytest.raises(ConfigError, match="names both"):
        parse_directory(text, "ids.toml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("requires_approval = true", "requires_aproval = true"), "unknown setting"),
        (('"staging", ', '"staging", "prod", '), "is in both"),
        (('approve_roles = ["release-manager"]', "approve_roles = []"), "names no approve_roles"),
        (("# default_class", 'default_class = "nope"\n#'), "is not a class"),
        (('change_roles = ["release-manager"]', ""), "must list change_roles"),
        (("max_depth = 32", "max_depth = 0"), "at least 1"),
        (("[limits]", "[limits]\nmax_depht = 3"), "unexpected keyword"),
        (("operator_roles", "operator_roles = 1\n#"), "list of non-empty strings"),
    ],
)
def test_a_doubtful_policy_is_a_config_error(edit: tuple[str, str], message: str) -> None:
    assert edit[0] in DEFAULT_POLICY
    with pytest.raises(ConfigError, match=message):
        parse_policy(DEFAULT_POLICY.replace(*edit, 1), "bad.toml")


def test_the_shipped_example_is_the_built_in_default(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parent.parent / "deploy/examples/policy.toml"
    assert example.read_text() == DEFAULT_POLICY
    monkeypatch.setenv("FLAGTRAIL_POLICY", str(example))
    assert load_policy().classes == load_policy(None).classes == default_policy().classes


def test_flagtrail_policy_names_the_file_and_a_missing_one_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_POLICY.replace('"production-eu", ', '"production-eu", "main", '))
    monkeypatch.setenv("FLAGTRAIL_POLICY", str(path))
    assert load_policy().class_of("MAIN").name == "production"
    monkeypatch.setenv("FLAGTRAIL_POLICY", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_policy()


def test_outbox_maps_cc8_1_by_class_and_records_the_verified_identity(
    sqlite_engine: Engine, workdir: Path
) -> None:
    (workdir / "identities.toml").write_text(
        SAMPLE_DIRECTORY.replace('aliases = ["bob"]', 'aliases = ["bob", "Robert"]')
    )
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        outbox.record(conn, change(environment="Prod", approver="robert"))
    with pytest.raises(PolicyError), sqlite_engine.begin() as conn:
        outbox.record(
            conn,
            change(environment="\uff50\uff52\uff4f\uff44", actor="BOB", approver="bob@example.com"),
        )
    with pytest.raises(InvalidChange), sqlite_engine.begin() as conn:
        outbox.record(conn, change(environment="prod-us"))
    rows = open_outbox_source(sqlite_engine, outbox.chain_id).fetch_pending(None, 10)
    recorded, rejected = (json.loads(r.payload) for r in rows)  # nothing for prod-us
    assert "CC8.1" in recorded["soc2_controls"] and recorded["environment_class"] == "production"
    # the verified identity, stored as its pseudonym on a new chain (producers/privacy.py)
    bob = pseudonym(outbox.privacy.pseudonym_key.material, "bob@example.com")
    assert recorded["approver"] == bob and recorded["environment"] == "Prod"
    assert rejected["action"] == "rejected" and "CC8.1" in rejected["soc2_controls"]
    assert rejected["meta"]["message"] == DISTINCT_APPROVER_MESSAGE


def test_cli_refuses_self_approval_in_prod_and_an_undeclared_environment(workdir: Path) -> None:
    base = ["record", "--flag", "f", "--action", "update", "--actor", "alice@example.com"]
    base += ["--role", "release-manager", "--reason", "r", "--change-ref", "CHG-9"]
    blocked = run_cli(*base, "--env", "PROD", "--approver", " Alice@Example.COM", cwd=workdir)
    assert blocked.returncode == 3, blocked.stderr
    assert DISTINCT_APPROVER_MESSAGE in blocked.stderr
    undeclared = run_cli(*base, "--env", "prod-us", "--approver", "bob", cwd=workdir)
    assert undeclared.returncode == 2 and "not declared" in undeclared.stderr
    assert "Traceback" not in blocked.stderr + undeclared.stderr
