"""An approval spent on PostgreSQL: two control-plane transactions racing with one token."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flagtrail import settings
from producers import PolicyError
from tests.oidc.conftest import Provider
from tests.oidc.test_real_provider import change, make_outbox, rows

pytestmark = [pytest.mark.integration, pytest.mark.oidc]


def test_two_concurrent_uses_of_one_approval_record_one_change(
    pg_url: str, workdir: Path, oidc_provider: Provider
) -> None:
    engine = settings.make_engine(pg_url)
    outbox = make_outbox(engine, workdir, oidc_provider)
    attempt = change()
    tokens = {
        "actor_token": oidc_provider.token("alice@example.com"),
        "approval_token": oidc_provider.token("bob@example.com", approves=attempt),
    }
    first_recorded, second_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def second() -> None:
        first_recorded.wait(30)
        try:
            with engine.begin() as conn:
                outbox.record(conn, change(), **tokens)
            outcome["second"] = "recorded"
        except PolicyError as exc:
            outcome["second"] = exc.rule
        second_done.set()

    racer = threading.Thread(target=second)
    racer.start()
    with engine.begin() as conn:
        outbox.record(conn, attempt, **tokens)
        first_recorded.set()
        # the second transaction waits on this one's uncommitted spend, not past it
        assert not second_done.wait(1.0)
    racer.join(30)
    assert outcome["second"] == "oidc-approval-replayed"
    assert sorted(r["action"] for r in rows(engine)) == ["rejected", "rollout"]
    engine.dispose()
