"""A real PostgreSQL outbox stopped under a running relay: visible within 5 s, then healed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from flagtrail import settings
from producers import Outbox
from tests.conftest import REPO, Services, free_port, wait_for
from tests.contracts import good_change
from tests.crash import start_relay
from tests.test_operations import _quiet, daemon_log, metric, scrape, wait_for_metrics

pytestmark = pytest.mark.integration


def record(pg_url: str, workdir: Path, first: int, count: int) -> None:
    engine = settings.make_engine(pg_url)
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    for n in range(first, first + count):
        with engine.begin() as conn:
            outbox.record(conn, good_change(n))
    engine.dispose()


def waits(workdir: Path, port: int) -> list[dict]:
    return [
        json.loads(line)
        for line in daemon_log(workdir, port).read_text().splitlines()
        if line.startswith("{") and '"relay.waiting"' in line
    ]


def test_a_stopped_postgres_outbox_shows_within_five_seconds_and_heals(
    pg_url: str, workdir: Path, services: Services
) -> None:
    if not services.local:
        pytest.skip("stopping the server needs the one started by deploy/local")
    local = REPO / "deploy/local"
    record(pg_url, workdir, 0, 3)
    port = free_port()
    with daemon_log(workdir, port).open("w") as log_file:
        relay = start_relay(
            workdir,
            "--metrics-port",
            str(port),
            "--idle-wait",
            "0.2",
            env={"FLAGTRAIL_OUTBOX_URL": pg_url, "FLAGTRAIL_LOG_URL": "sqlite:///log.db"},
            stderr=log_file,
        )
    try:
        wait_for_metrics(relay, workdir, port)
        wait_for(lambda: metric(scrape(port)[1], "flagtrail_chain_head_sequence") == 3, 30, "3")
        subprocess.run(["bash", str(local / "down"), "pg"], check=True, capture_output=True)
        down = time.monotonic()
        wait_for(lambda: waits(workdir, port), 5, "relay.waiting within 5 s of the outage")
        wait_for(lambda: _quiet(scrape, port, "/ready")[0] == 503, 5, "/ready 503")
        assert time.monotonic() - down < 5
        first = waits(workdir, port)[0]
        assert first["kind"] in ("outbox", "lease") and first["retry_in_s"] > 0
        text = scrape(port)[1]
        assert any(
            line.startswith("flagtrail_relay_errors_total{kind=") and not line.endswith(" 0.0")
            for line in text.splitlines()
        )
        subprocess.run(["bash", str(local / "up"), "pg"], check=True, capture_output=True)
        record(pg_url, workdir, 3, 2)
        wait_for(
            lambda: metric(scrape(port)[1], "flagtrail_chain_head_sequence") == 5, 60, "healed"
        )
        wait_for(lambda: scrape(port, "/ready")[0] == 200, 15, "ready again")
        assert relay.poll() is None
    finally:
        relay.kill()
        relay.wait()
