"""Operating the relay on PostgreSQL + Kafka: a real Prometheus scrapes it; failover on
a lost database connection."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from flagtrail import settings
from producers import Outbox
from tests.conftest import free_port, wait_for
from tests.contracts import good_change
from tests.test_operations import metric, scrape, start_daemon

pytestmark = pytest.mark.integration


def _env(pg_url: str, kafka_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGTRAIL_OUTBOX_URL", pg_url)
    monkeypatch.setenv("FLAGTRAIL_LOG_URL", kafka_url)


def _quiet_scrape(port: int) -> str:
    try:
        return scrape(port)[1]
    except OSError:
        return ""


def test_prometheus_scrapes_the_relay_and_answers_a_lag_query(
    pg_url: str, kafka_url: str, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus missing: `make test` installs Debian's prometheus package"
    _env(pg_url, kafka_url, monkeypatch)
    engine = settings.make_engine(pg_url)
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    for n in range(20):
        with engine.begin() as conn:
            outbox.record(conn, good_change(n))
    relay_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: flagtrail-relay\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{relay_port}']}}]\n"
    )
    relay = start_daemon(workdir, relay_port)
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: metric(_quiet_scrape(relay_port), "flagtrail_chain_head_sequence") == 20,
            60,
            "the relay to relay 20 events",
        )

        def query(expr: str) -> list[dict]:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
                {"query": expr}
            )
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return json.load(response)["data"]["result"]
            except OSError:
                return []

        wait_for(lambda: query("flagtrail_outbox_lag_seconds"), 60, "Prometheus to scrape")
        (lag,) = query("flagtrail_outbox_lag_seconds")
        assert lag["metric"]["job"] == "flagtrail-relay"
        assert float(lag["value"][1]) >= 0
        wait_for(lambda: query("flagtrail_chain_head_sequence == 20"), 30, "the head in Prometheus")
        assert query('sum(flagtrail_events_relayed_total{environment="production"})')
    finally:
        server.terminate()
        relay.terminate()
        server.wait(timeout=30)
        relay.wait(timeout=30)
        engine.dispose()


def test_standby_takes_over_when_the_active_relay_loses_its_database(
    pg_url: str, kafka_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(pg_url, kafka_url, monkeypatch)
    engine = settings.make_engine(pg_url)
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    ports = [free_port(), free_port()]
    daemons = [start_daemon(workdir, port) for port in ports]
    try:

        def actives() -> list[float | None]:
            return [metric(_quiet_scrape(p), "flagtrail_relay_active") for p in ports]

        wait_for(lambda: sorted(a or 0 for a in actives()) == [0, 1], 30, "one active relay")
        active = actives().index(1.0)
        # cut the active relay off from PostgreSQL: every backend of its process dies
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"flagtrail-{daemons[active].pid}"},
            )
            conn.commit()
        cut = time.monotonic()
        standby = ports[1 - active]
        wait_for(
            lambda: metric(_quiet_scrape(standby), "flagtrail_relay_active") == 1,
            10,
            "the standby to take over",
        )
        assert time.monotonic() - cut < 10
        for n in range(30):
            with engine.begin() as conn:
                outbox.record(conn, good_change(n))
        wait_for(
            lambda: metric(_quiet_scrape(standby), "flagtrail_chain_head_sequence") == 30,
            30,
            "the new leader relaying",
        )
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait()
    from relay.logs import open_log

    with open_log(kafka_url) as audit_log:
        records = [json.loads(e.line) for e in audit_log.read()]
    assert [r["sequence"] for r in records] == list(range(1, 31))
    assert len({r["event_id"] for r in records}) == 30
    engine.dispose()
