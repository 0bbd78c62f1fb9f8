"""Without an [oidc] table the directory stays the identity provider; records say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from producers import FlagChange, InvalidChange, Outbox
from producers.pseudonyms import pseudonym
from producers.schema import outbox as outbox_table
from tests.conftest import make_outbox


def attempt() -> FlagChange:
    return FlagChange(
        actor="alice@example.com",
        approver="bob",
        role="release-manager",
        flag_key="checkout-v2",
        environment="production",
        action="update",
        after={"enabled": True},
        reason="ship",
        change_ref="CHG-1",
    )


def test_directory_identities_are_recorded_as_such(sqlite_engine: Engine, workdir: Path) -> None:
    outbox = make_outbox(sqlite_engine, workdir)
    with sqlite_engine.begin() as conn:
        outbox.record(conn, attempt())
    with sqlite_engine.connect() as conn:
        (payload,) = conn.execute(select(outbox_table.c.payload)).scalars()
    record = json.loads(payload)
    # the alias resolved, as before, then pseudonymised on this new chain
    assert record["approver"] == pseudonym(outbox.privacy.pseudonym_key.material, "bob@example.com")
    directory = {"method": "directory", "issuer": None, "key_id": None}
    assert record["auth"] == {"actor": directory, "approver": directory}


def test_a_token_without_a_provider_to_verify_it_is_refused(
    sqlite_engine: Engine, workdir: Path
) -> None:
    outbox: Outbox = make_outbox(sqlite_engine, workdir)
    with (
        pytest.raises(InvalidChange, match="no \\[oidc\\] provider"),
        sqlite_engine.begin() as conn,
    ):
        outbox.record(conn, attempt(), actor_token="a.b.c")


def test_a_change_counts_as_provider_authenticated_only_when_every_identity_was() -> None:
    from collections import Counter

    from relay.summary import CHANGES, OIDC, count_changes, format_summary

    oidc = {"method": "oidc", "issuer": "https://idp", "key_id": "k"}
    directory = {"method": "directory", "issuer": None, "key_id": None}
    records = [
        {"action": "update", "approver": "b", "auth": {"actor": oidc, "approver": oidc}},
        {"action": "update", "approver": None, "auth": {"actor": oidc, "approver": None}},
        {"action": "update", "approver": "b", "auth": {"actor": oidc, "approver": directory}},
        {"action": "update", "approver": "b", "auth": {"actor": directory, "approver": oidc}},
        {"action": "update", "approver": "b"},  # recorded before auth existed
        {"action": "update", "approver": "b", "auth": "oidc"},  # malformed: not counted
        {"action": "rejected", "approver": "b", "auth": {"actor": oidc, "approver": oidc}},
    ]
    changes: Counter[str] = Counter()
    for record in records:
        count_changes(record, changes)
    assert (changes[OIDC], changes[CHANGES]) == (2, 6)
    summary = format_summary(Counter({"CC6.1": 7}), None, (), changes)
    assert summary == (
        "SOC2 control coverage summary:\n CC6.1: 7 events\n"
        "Flag changes authenticated by OpenID Connect: 2 of 6\n"
    )
    # no provider-authenticated change: the seed's format, untouched
    assert format_summary(Counter({"CC6.1": 7}), None, (), Counter({CHANGES: 6})) == (
        "SOC2 control coverage summary:\n CC6.1: 7 events\n"
    )
