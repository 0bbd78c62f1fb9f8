"""The evidence API with its tokens and receipts in a real PostgreSQL outbox."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from flagtrail.api.tokens import TokenStore, api_tokens
from flagtrail.settings import make_engine
from producers import Outbox
from producers.identity import SAMPLE_DIRECTORY
from producers.schema import outbox as outbox_table
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.apiserver import serve
from tests.conftest import SteppingClock, run_cli
from tests.contracts import good_change

pytestmark = pytest.mark.integration


def test_token_store_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    stores: list[TokenStore] = []
    threads = [threading.Thread(target=lambda: stores.append(TokenStore(engine))) for _ in range(4)]
    for t in threads:  # concurrent first starts must not race on CREATE TABLE
        t.start()
    for t in threads:
        t.join()
    assert len(stores) == 4
    store, now = stores[0], datetime.now(UTC)
    secret = store.create("ci-weekly", ["export:read"], timedelta(days=90), now)
    found = store.lookup(secret)
    assert found is not None and found.name == "ci-weekly" and found.state(now) == "active"
    assert store.lookup(secret + "x") is None
    with engine.connect() as conn:
        stored = conn.execute(select(api_tokens.c.token_sha256)).scalar_one()
    assert secret not in stored
    store.revoke("ci-weekly", now)
    assert store.state("ci-weekly", now) == "revoked"
    assert [t.name for t in store.list()] == ["ci-weekly"]


def test_pulls_through_a_postgresql_outbox_are_chained(
    pg_url: str, tmp_path: Path, rsa_keys: Path
) -> None:
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    shutil.copy(rsa_keys / "audit-private.pem", tmp_path / "audit-private.pem")
    engine = make_engine(pg_url)
    clock = SteppingClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), timedelta(hours=3))
    outbox = Outbox(engine, str(tmp_path / "identities.toml"), clock=clock)
    for n in range(8):
        with engine.begin() as conn:
            outbox.record(conn, good_change(n))
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    relay = Relay(open_outbox_source(engine, "flag-audit"), open_log(log_url))
    relay.resume()
    assert relay.drain() == 8
    env = {"FLAGTRAIL_OUTBOX_URL": pg_url, "FLAGTRAIL_LOG_URL": log_url}
    made = run_cli(
        "token", "create", "--name", "auditor", "--scope", "export:read", cwd=tmp_path, env=env
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[-1]
    with serve(tmp_path, FLAGTRAIL_OUTBOX_URL=pg_url) as server:
        got = httpx.post(
            f"{server.url}/v1/export",
            data={"start": "2026-01-01", "end": "2026-01-31"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert got.status_code == 200 and got.content.count(b"\n") == 8
    with engine.connect() as conn:
        payloads = [json.loads(p) for p in conn.execute(select(outbox_table.c.payload)).scalars()]
    [receipt] = [p for p in payloads if p["action"] == "evidence_exported"]
    assert receipt["meta"]["token"] == "auditor" and receipt["meta"]["record_count"] == 8
    assert relay.drain() == 1  # the relay chains it like any event
