"""The Kafka log against the real broker: chains stay apart, readers never create a
topic, durability settings are enforced, and an outage is a structured, retriable
error within 5 s instead of raw librdkafka lines (issue 7, sections 8, 12, 15, 18)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from flagtrail import settings
from producers import Outbox
from producers.errors import ConfigError
from relay.logs import open_log
from relay.logs.base import LogUnavailable
from tests.conftest import FLAGTRAIL, REPO, Services, run_cli, wait_for
from tests.contracts import good_change
from tests.test_log_chains import chain_entries

pytestmark = pytest.mark.integration


def topics(services: Services) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_servers)
    try:
        return admin.list_topics()
    finally:
        admin.close()


def unique_chain() -> str:
    return f"chain-{uuid.uuid4().hex[:10]}"


# -- 8. a topic belongs to one chain ------------------------------------------------------
def test_a_topic_of_another_chain_is_refused(kafka_url: str) -> None:
    with open_log(kafka_url, "chain-a") as a:
        a.claim()
        a.append(chain_entries("chain-a", 3), after_sequence=0)
        assert a.entry_at(2) == chain_entries("chain-a", 3)[1]
    with open_log(kafka_url, "chain-b") as b, pytest.raises(ConfigError, match="holds chain"):
        b.claim()
    with (
        open_log(kafka_url, "chain-b", read_only=True) as reader,
        pytest.raises(ConfigError, match="'chain-a', not 'chain-b'"),
    ):
        list(reader.read())


def test_without_a_topic_each_chain_has_its_own(services: Services) -> None:
    first, second = unique_chain(), unique_chain()
    for chain in (first, second):
        with open_log(f"kafka://{services.kafka_servers}", chain) as audit_log:
            audit_log.claim()
            audit_log.append(chain_entries(chain, 2), after_sequence=0)
    assert {first, second} <= set(topics(services))
    with open_log(f"kafka://{services.kafka_servers}/", second, read_only=True) as reader:
        assert [e.sequence for e in reader.read()] == [1, 2]
        assert reader.tail() is not None and reader.tail().line == chain_entries(second, 2)[1].line


# -- 12. readers never create a topic ---------------------------------------------------
def test_a_reader_never_creates_a_topic(
    services: Services, kafka_url: str, workdir: Path, rsa_keys: Path
) -> None:
    topic = kafka_url.rsplit("/", 1)[1]
    with (
        open_log(kafka_url, read_only=True) as reader,
        pytest.raises(ConfigError, match="does not exist"),
    ):
        list(reader.read())
    env = {
        "FLAGTRAIL_LOG_URL": kafka_url,
        "AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem"),
    }
    for command in (["export", "--start", "2026-01-01", "--end", "2026-01-02"], ["drift"]):
        result = run_cli(*command, cwd=workdir, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert topic not in topics(services)
    assert not list(workdir.glob("*.jsonl"))


# -- 15. replication settings ----------------------------------------------------------
def test_the_relay_refuses_to_create_a_topic_below_the_production_minimum(
    services: Services, kafka_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAGTRAIL_KAFKA_REPLICATION_FACTOR")
    monkeypatch.delenv("FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS")
    assert settings.kafka_replication() == (3, 2)
    with open_log(kafka_url) as audit_log, pytest.raises(ConfigError, match="replication factor 3"):
        audit_log.claim()
    assert kafka_url.rsplit("/", 1)[1] not in topics(services)


def test_the_relay_refuses_a_topic_with_fewer_in_sync_replicas(
    kafka_url: str, workdir: Path
) -> None:
    with open_log(kafka_url) as audit_log:  # created with 1 and 1 (this broker)
        audit_log.claim()
    strict = f"{kafka_url}?replication_factor=1&min_insync_replicas=2"
    with pytest.raises(ConfigError, match=r"min_insync_replicas \(2\) cannot exceed"):
        open_log(strict)
    with open_log(f"{kafka_url}?min_insync_replicas=1&replication_factor=1") as ok:
        ok.claim()
    result = run_cli(
        "relay",
        "--once",
        cwd=workdir,
        env={
            "FLAGTRAIL_LOG_URL": kafka_url,
            "FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS": "2",
            "FLAGTRAIL_KAFKA_REPLICATION_FACTOR": "2",
        },
    )
    assert result.returncode == 2, result.stderr
    assert "has replication factor 1 and min.insync.replicas=1" in result.stderr
    assert "Traceback" not in result.stderr
    with open_log(kafka_url, read_only=True) as reader:  # readers read anyway
        assert list(reader.read()) == []


# -- 18. an outage is visible, structured and retriable --------------------------------
def _broker(action: str) -> None:
    subprocess.run(
        ["bash", str(REPO / f"deploy/local/{action}"), "kafka"],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
def stoppable_broker(services: Services) -> Iterator[None]:
    if not services.local:
        pytest.skip("needs the broker started by deploy/local")
    try:
        yield
    finally:
        _broker("up")  # always leave the broker running for the other tests


def _raw_lines(stderr: str) -> list[str]:
    """Lines that are not structured (JSON) log lines."""
    raw = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            raw.append(line)
    return raw


def test_a_stopped_broker_is_a_structured_retriable_wait_and_nothing_is_lost(
    services: Services,
    kafka_url: str,
    workdir: Path,
    stoppable_broker: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    stderr_path = workdir / "relay.stderr"
    env = {"FLAGTRAIL_LOG_URL": kafka_url}
    relay = subprocess.Popen(
        [*FLAGTRAIL, "relay", "--idle-wait", "0.2"],
        cwd=workdir,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("w"),
    )
    direct = open_log(f"kafka://{services.kafka_servers}", unique_chain())
    try:
        direct.claim()
        for n in range(5):
            with engine.begin() as conn:
                outbox.record(conn, good_change(n))

        def relayed() -> int:
            try:
                with open_log(kafka_url, read_only=True) as reader:
                    return len(list(reader.read()))
            except ConfigError:  # the relay has not created its topic yet
                return 0

        wait_for(lambda: relayed() == 5, 60, "the first rows")
        capfd.readouterr()
        _broker("down")
        with engine.begin() as conn:  # the relay must now try to append
            outbox.record(conn, good_change(5))
        written = datetime.now(UTC)
        # the backend's own part: a retriable error within 5 s, from ping, append, tail

        def ping_fails() -> bool:
            try:
                direct.ping()
            except LogUnavailable:
                return True
            return False

        wait_for(ping_fails, 5, "ping to notice the outage")
        started = time.monotonic()
        with pytest.raises(LogUnavailable) as raised:
            direct.append(chain_entries(direct.chain_id, 1), after_sequence=0)
        assert raised.value.retriable and time.monotonic() - started < 5.0
        started = time.monotonic()
        with pytest.raises(LogUnavailable):
            direct.tail()
        assert time.monotonic() - started < 5.0
        # the relay's part: a structured relay.waiting line within 5 s of the write
        wait_for(lambda: "relay.waiting" in stderr_path.read_text(), 15, "relay.waiting")
        for n in range(6, 10):
            with engine.begin() as conn:
                outbox.record(conn, good_change(n))
        time.sleep(2)
        _broker("up")
        wait_for(lambda: relayed() == 10, 90, "every row after the outage")
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        direct.close()
    stderr = stderr_path.read_text()
    assert _raw_lines(stderr) == [], "raw (non-structured) lines on the relay's stderr"
    waiting = [json.loads(x) for x in stderr.splitlines() if "relay.waiting" in x]
    assert waiting and waiting[0]["kind"] == "log"
    assert "LogUnavailable" in waiting[0]["cause"] and "Kafka" in waiting[0]["cause"]
    waited = (datetime.fromisoformat(waiting[0]["timestamp"]) - written).total_seconds()
    assert waited < 5.0, f"relay.waiting came {waited:.1f} s after the row was written"
    librdkafka = [x for x in stderr.splitlines() if '"kafka.' in x]
    assert len(librdkafka) < 40, "librdkafka's lines are not deduplicated"
    # in this process too: librdkafka and kafka-python print nothing raw
    captured = capfd.readouterr()
    assert "%3|" not in captured.err and "%4|" not in captured.err
    assert _raw_lines(captured.err) == []
    with open_log(kafka_url, read_only=True) as reader:
        records = [json.loads(e.line) for e in reader.read()]
    assert [r["sequence"] for r in records] == list(range(1, 11))
    assert [r["flag_key"] for r in records] == [f"flag-{n}" for n in range(10)]
