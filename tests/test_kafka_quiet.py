"""Without any broker: librdkafka and kafka-python never print raw lines, repeats are
deduplicated, and an unreachable cluster is a retriable error within 5 s (issue 7, 18)."""

from __future__ import annotations

import time

import pytest
import structlog
from confluent_kafka import Producer

from relay.logs import open_log
from relay.logs.base import LogUnavailable
from relay.logs.kafka import _LibrdkafkaLogger, _on_error
from tests.conftest import free_port


def test_librdkafka_lines_go_through_structlog_once(capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens: librdkafka reconnects and complains repeatedly
    producer = Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{port}",
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 100,
            "logger": _LibrdkafkaLogger(),
            "error_cb": _on_error,
        }
    )
    with structlog.testing.capture_logs() as logs:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            producer.poll(0.2)
    kinds = [(e["event"], e.get("facility") or e.get("code")) for e in logs]
    assert ("kafka.error", "_TRANSPORT") in kinds
    assert len(logs) == len(set(kinds)) <= 6, logs  # each kind once, not per reconnect
    assert all(e["log_level"] in ("info", "warning") for e in logs)
    assert f":{port}" in logs[0]["message"]
    del producer
    captured = capfd.readouterr()
    assert "%3|" not in captured.err and "rdkafka" not in captured.err


def test_an_unreachable_cluster_is_retriable_within_five_seconds(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGTRAIL_KAFKA_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS", "1")
    audit_log = open_log(f"kafka://127.0.0.1:{free_port()}/audit", "flag-audit")
    for attempt in (audit_log.claim, audit_log.tail):
        started = time.monotonic()
        with pytest.raises(LogUnavailable) as raised:
            attempt()
        assert raised.value.retriable
        assert time.monotonic() - started < 5.0
    assert "kafka" not in capfd.readouterr().err.lower()  # kafka-python stays quiet
