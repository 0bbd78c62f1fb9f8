"""Outages are visible and configuration errors stop the daemon (issue 7, sections 13 and 18)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from flagtrail import settings
from producers.errors import BackendUnavailable, ConfigError
from relay.logs.sqlite import SQLiteAuditLog
from relay.metrics import RelayMetrics
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.conftest import free_port, wait_for
from tests.test_operations import (
    _quiet,
    daemon_log,
    metric,
    record_changes,
    scrape,
    start_daemon,
    wait_for_metrics,
)


def rename_outbox(old: str, new: str) -> None:
    """Take the outbox table away (or bring it back): every query of the relay fails
    with the database driver's own error, as in a real outage of the outbox."""
    db = sqlite3.connect("outbox.db", timeout=30)
    db.execute(f"ALTER TABLE {old} RENAME TO {new}")
    db.commit()
    db.close()


def waiting_lines(workdir: Path, port: int) -> list[dict]:
    return [
        json.loads(line)
        for line in daemon_log(workdir, port).read_text().splitlines()
        if line.startswith("{") and '"relay.waiting"' in line
    ]


def errors(port: int, kind: str) -> float:
    for line in scrape(port)[1].splitlines():
        if line.startswith(f'flagtrail_relay_errors_total{{kind="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_outbox_outage_shows_within_five_seconds_and_the_relay_recovers(
    workdir: Path,
) -> None:
    record_changes(workdir, 2)
    port = free_port()
    daemon = start_daemon(workdir, port)
    try:
        wait_for_metrics(daemon, workdir, port)
        wait_for(
            lambda: metric(scrape(port)[1], "flagtrail_chain_head_sequence") == 2, 20, "relayed"
        )
        wait_for(lambda: scrape(port, "/ready")[0] == 200, 10, "ready")
        assert errors(port, "outbox") == 0

        rename_outbox("flagtrail_outbox", "flagtrail_outbox_away")
        down = time.monotonic()
        wait_for(lambda: waiting_lines(workdir, port), 5, "a relay.waiting line within 5 s")
        first = waiting_lines(workdir, port)[0]
        assert first["kind"] == "outbox" and "no such table" in first["cause"]
        assert first["attempt"] == 1 and first["retry_in_s"] > 0
        assert first["level"] == "warning"
        wait_for(lambda: _quiet(scrape, port, "/ready")[0] == 503, 5, "/ready 503")
        assert time.monotonic() - down < 5
        assert errors(port, "outbox") >= 1
        assert scrape(port, "/healthz")[0] == 200  # alive: waiting is not stalled
        wait_for(lambda: len(waiting_lines(workdir, port)) >= 3, 10, "backoff attempts")
        attempts = [line["attempt"] for line in waiting_lines(workdir, port)]
        assert attempts[:3] == [1, 2, 3]

        rename_outbox("flagtrail_outbox_away", "flagtrail_outbox")
        record_changes(workdir, 1, start=2)
        wait_for(
            lambda: metric(scrape(port)[1], "flagtrail_chain_head_sequence") == 3,
            20,
            "recovery",
        )
        wait_for(lambda: scrape(port, "/ready")[0] == 200, 10, "ready again")
        assert '"relay.recovered"' in daemon_log(workdir, port).read_text()
    finally:
        daemon.kill()
        daemon.wait()


class BrokenLog(SQLiteAuditLog):
    """A real SQLite log whose next claims fail as a backend would report them."""

    def __init__(self, path: str, failures: list[Exception]) -> None:
        super().__init__(path, "flag-audit")
        self.failures = failures

    def claim(self) -> None:
        if self.failures:
            raise self.failures.pop(0)


def run_relay(
    workdir: Path, failures: list[Exception], stop_when, metrics: RelayMetrics
) -> list[dict]:
    engine = settings.make_engine("sqlite:///outbox.db")
    relay = Relay(
        open_outbox_source(engine, "flag-audit"),
        BrokenLog(str(workdir / "log.db"), failures),
        observer=metrics,
    )
    stop = threading.Event()
    with capture_logs() as logs:
        # it also ends when the relay has stopped (a test expecting the relay to raise):
        # a watcher left waiting would fail later, in another test's thread
        watcher = threading.Thread(
            target=lambda: (
                wait_for(lambda: stop.is_set() or stop_when(relay), 20, "relay"),
                stop.set(),
            ),
            daemon=True,
        )
        watcher.start()
        try:
            relay.run(stop, idle_wait=0.05)
        finally:
            stop.set()
            relay.log.close()
            engine.dispose()
    return logs


def test_a_retriable_error_backs_off_and_an_untranslated_driver_error_is_retried(
    workdir: Path,
) -> None:
    record_changes(workdir, 2)
    failures: list[Exception] = [
        BackendUnavailable("the log is unavailable: broker 127.0.0.1:9092 refused"),
        sqlite3.OperationalError("disk I/O error"),
    ]
    metrics = RelayMetrics("flag-audit")
    logs = run_relay(workdir, failures, lambda relay: relay.head.sequence == 2, metrics)
    waiting = [e for e in logs if e["event"] == "relay.waiting"]
    assert [(w["kind"], w["attempt"]) for w in waiting] == [("log", 1), ("log", 2)]
    assert "BackendUnavailable" in waiting[0]["cause"] and "disk I/O" in waiting[1]["cause"]
    assert metrics.registry.get_sample_value("flagtrail_relay_errors_total", {"kind": "log"}) == 2
    assert metrics.ready()


def test_a_configuration_error_stops_the_daemon(workdir: Path) -> None:
    record_changes(workdir, 1)
    failures: list[Exception] = [ConfigError("Kafka topic 'audit' has replication factor 1")]
    metrics = RelayMetrics("flag-audit")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="replication factor"):
        run_relay(workdir, failures, lambda relay: False, metrics)
    assert time.monotonic() - started < 5  # at once, not after retries
    errors = metrics.registry.get_sample_value
    assert errors("flagtrail_relay_errors_total", {"kind": "config"}) == 1
    assert not metrics.ready()


def test_the_daemon_exits_non_zero_with_one_line_on_a_configuration_error(workdir: Path) -> None:
    from tests.conftest import run_cli

    (workdir / "log.db").mkdir()  # the log location is a folder: nothing to wait for
    result = run_cli("relay", "--idle-wait", "0.1", cwd=workdir, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "log" in result.stderr
