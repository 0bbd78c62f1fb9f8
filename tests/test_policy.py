"""Write-time policy: CC8.1 separation of duties, CC6.1 RBAC, verified identities."""

from __future__ import annotations

import pytest

from producers import FlagChange, InvalidChange
from producers.errors import ConfigError
from producers.identity import SAMPLE_DIRECTORY, parse_directory
from producers.policy import DISTINCT_APPROVER_MESSAGE, evaluate

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
