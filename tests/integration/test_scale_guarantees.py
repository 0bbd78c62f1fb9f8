"""Issue 3's guarantees on the real PostgreSQL server and Kafka broker."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import Engine, text

from flagtrail import settings
from producers import Outbox
from producers.errors import ConfigError
from relay.logs import open_log
from relay.logs.kafka import KafkaAuditLog
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.conftest import REPO, Services, run_cli, wait_for
from tests.contracts import good_change
from tests.crash import check_chain, kill_repeatedly, start_relay

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = settings.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(pg_engine: Engine, workdir: Path) -> Outbox:
    return Outbox(pg_engine, str(workdir / "identities.toml"))


def backend_env(pg_url: str, kafka_url: str) -> dict[str, str]:
    return {"FLAGTRAIL_OUTBOX_URL": pg_url, "FLAGTRAIL_LOG_URL": kafka_url}


def log_records(kafka_url: str) -> list[dict]:
    with open_log(kafka_url) as audit_log:
        return check_chain(e.line for e in audit_log.read())


def outbox_event_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text("SELECT payload::json->>'event_id' FROM flagtrail_outbox ORDER BY tx_id, id")
            )
        ]


@contextlib.contextmanager
def relay_thread(
    outbox: Outbox, kafka_url: str, idle_wait: float
) -> Iterator[tuple[Relay, threading.Event]]:
    """An in-process relay daemon on its own thread; set the event to stop it."""
    audit_log = open_log(kafka_url)
    relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), audit_log)
    stop = threading.Event()
    runner = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_wait": idle_wait})
    runner.start()
    try:
        yield relay, stop
    finally:
        stop.set()
        runner.join(timeout=idle_wait + 10)
        audit_log.close()


def test_reverse_commit_order_is_never_skipped(outbox: Outbox, kafka_url: str) -> None:
    """T1 inserts first and commits last while the relay runs: nothing is skipped."""
    with relay_thread(outbox, kafka_url, idle_wait=0.05) as (relay, _):
        first, second = outbox.engine.connect(), outbox.engine.connect()
        t1, t2 = first.begin(), second.begin()
        id1 = outbox.record(first, good_change(1))
        id2 = outbox.record(second, good_change(2))
        t2.commit()  # the later insert commits first
        time.sleep(1.5)  # the relay polls many times meanwhile
        assert relay.head.sequence == 0, "a row behind a running transaction was relayed"
        t1.commit()
        wait_for(lambda: relay.head.sequence == 2, 15, "both rows")
        first.close()
        second.close()
    records = log_records(kafka_url)
    assert [r["event_id"] for r in records] == [id1, id2]
    assert records[0]["timestamp_utc"] <= records[1]["timestamp_utc"]


def _writer(
    pg_url: str,
    workdir: Path,
    count: int,
    stop: threading.Event,
    written: list[int],
    pause: float = 0.0,
) -> None:
    """Commits ``count`` changes, retrying through server restarts."""
    engine = settings.make_engine(pg_url)
    outbox = Outbox(engine, str(workdir / "identities.toml"), create_schema=False)
    n = 0
    while n < count and not stop.is_set():
        try:
            with engine.begin() as conn:
                for k in range(10):
                    outbox.record(conn, good_change(n + k))
            n += 10
            written[0] = n
            time.sleep(pause)
        except Exception:
            time.sleep(0.2)  # server restarting; the transaction rolled back or not: the
            # final comparison is outbox table vs log, not this counter
    engine.dispose()


@pytest.mark.slow
def test_sigkill_relay_while_writers_commit_20000_changes(
    outbox: Outbox, pg_url: str, kafka_url: str, workdir: Path
) -> None:
    stop, written = threading.Event(), [0]
    writers = [
        threading.Thread(target=_writer, args=(pg_url, workdir, 10_000, stop, written))
        for _ in range(2)
    ]
    for writer in writers:
        writer.start()

    def relayed() -> int:
        with outbox.engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM flagtrail_outbox WHERE relayed_at_us IS NOT NULL")
            ).scalar()

    env = backend_env(pg_url, kafka_url)
    progress = kill_repeatedly(
        workdir, 9, random.Random(3), relayed, "--batch-size", "200", "--idle-wait", "0.2", env=env
    )
    for writer in writers:
        writer.join(timeout=300)
    assert sum(1 for n in progress if n < 20_000) >= 8, progress
    final = run_cli("relay", "--once", cwd=workdir, env=env)
    assert final.returncode == 0, final.stderr
    expected = outbox_event_ids(outbox.engine)
    assert len(expected) == 20_000
    records = log_records(kafka_url)  # every link and hash checked
    assert [r["event_id"] for r in records] == expected  # exactly once, in commit order
    assert [r["sequence"] for r in records] == list(range(1, 20_001))
    stamps = [r["timestamp_utc"] for r in records]
    assert stamps == sorted(stamps)
    # and the seed's snippet, unchanged, on the topic's records
    seed_dir = workdir / "seed"
    seed_dir.mkdir()
    with open_log(kafka_url) as audit_log:
        (seed_dir / "flag-audit-soc2_2026-01-01_2026-06-30.jsonl").write_text(
            "".join(e.line + "\n" for e in audit_log.read())
        )
    seed = subprocess.run(
        [sys.executable, str(REPO / "tests/seed/verify_chain.py")],
        cwd=seed_dir,
        capture_output=True,
        text=True,
    )
    assert seed.stdout.strip() == "Chain intact: 20000 records, no tampering detected."


def test_relay_creates_the_topic_for_evidence(
    outbox: Outbox, kafka_url: str, services: Services
) -> None:
    with outbox.engine.begin() as conn:
        outbox.record(conn, good_change())
    relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), open_log(kafka_url))
    relay.resume()
    assert relay.drain() == 1
    topic = kafka_url.rsplit("/", 1)[1]
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_servers)
    from kafka.admin import ConfigResource, ConfigResourceType

    (described,) = admin.describe_topics([topic])
    configs = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )["topic"][topic]
    admin.close()
    assert len(described["partitions"]) == 1
    assert configs["cleanup.policy"]["value"] == "delete"
    assert configs["retention.ms"]["value"] == "-1"
    assert configs["min.insync.replicas"]["value"] == "1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"num_partitions": 3}, "has 3 partitions"),
        ({"num_partitions": 1, "configs": {"cleanup.policy": "compact"}}, "compaction"),
        ({"num_partitions": 1, "configs": {"retention.ms": "604800000"}}, "24 months"),
    ],
)
def test_relay_refuses_a_topic_that_cannot_hold_evidence(
    services: Services, kafka_url: str, workdir: Path, pg_url: str, spec: dict, message: str
) -> None:
    topic = kafka_url.rsplit("/", 1)[1]
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_servers)
    admin.create_topics({topic: {"replication_factor": 1, **spec}}, wait_for_metadata=True)
    admin.close()
    with pytest.raises(ConfigError, match=message):
        KafkaAuditLog([services.kafka_servers], topic).ensure_topic()
    result = run_cli("relay", "--once", cwd=workdir, env=backend_env(pg_url, kafka_url))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_listen_notify_wakes_the_relay(outbox: Outbox, kafka_url: str) -> None:
    """With polling every 30 s, a commit still reaches the log in well under a second."""
    with relay_thread(outbox, kafka_url, idle_wait=30) as (relay, stop):
        wait_for(lambda: relay.head.position is None and relay.head.sequence == 0, 10, "start")
        time.sleep(1.0)  # the relay is now blocked in LISTEN
        latencies = []
        for n in range(5):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
            committed = time.monotonic()
            wait_for(lambda n=n: relay.head.sequence == n + 1, 10, "the notified row")
            latencies.append(time.monotonic() - committed)
        stop.set()
        with outbox.engine.begin() as conn:  # wake it so it sees the stop flag
            outbox.record(conn, good_change(99))
    assert max(latencies) < 2.0, latencies


def test_two_relays_started_at_once_one_writes_the_other_waits(
    outbox: Outbox, pg_url: str, kafka_url: str, workdir: Path
) -> None:
    env = backend_env(pg_url, kafka_url)
    relays = [start_relay(workdir, "--idle-wait", "0.2", env=env) for _ in range(2)]
    try:
        for n in range(200):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
        wait_for(lambda: _relayed(outbox.engine) == 200, 60, "all rows relayed")
        with outbox.engine.connect() as conn:
            holders = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalar()
        assert holders == 1  # one active relay, one standby
        # kill the active one: the standby takes over within 10 s
        active = next(p for p in relays if _holds_lease(outbox.engine, p.pid))
        active.kill()
        active.wait()
        for n in range(200, 250):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
        started = time.monotonic()
        wait_for(lambda: _relayed(outbox.engine) == 250, 10, "the standby taking over")
        assert time.monotonic() - started < 10
    finally:
        for process in relays:
            process.kill()
            process.wait()
    records = log_records(kafka_url)
    assert [r["event_id"] for r in records] == outbox_event_ids(outbox.engine)


def _relayed(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM flagtrail_outbox WHERE relayed_at_us IS NOT NULL")
        ).scalar()


def _holds_lease(engine: Engine, pid: int) -> bool:
    """Whether relay process ``pid`` (its application_name) holds the advisory lock."""
    with engine.connect() as conn:
        names = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                )
            )
        ]
    return f"flagtrail-{pid}" in names


def test_export_from_kafka_seeks_by_time_and_matches_the_embedded_package(
    outbox: Outbox,
    kafka_url: str,
    workdir: Path,
    rsa_keys: Path,
    monkeypatch: pytest.MonkeyPatch,
    h1_clock,
) -> None:
    from datetime import date

    from relay.export import export_window

    outbox.clock = h1_clock  # 7-minute steps from 2026-01-01 09:00
    for n in range(600):  # about three days
        with outbox.engine.begin() as conn:
            outbox.record(conn, good_change(n))
    kafka_log = open_log(kafka_url)
    relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), kafka_log)
    relay.resume()
    relay.drain()
    sqlite_log = open_log(f"sqlite:///{workdir / 'copy.db'}")  # the same chain, embedded
    sqlite_log.append(list(kafka_log.read()), after_sequence=0)

    seeks: list[int] = []
    from kafka import KafkaConsumer

    original = KafkaConsumer.seek
    monkeypatch.setattr(
        KafkaConsumer,
        "seek",
        lambda self, tp, offset: (seeks.append(offset), original(self, tp, offset))[1],
    )
    day = date(2026, 1, 3)
    k_paths, k_manifest = export_window(
        kafka_log, day, day, workdir / "k", rsa_keys / "audit-private.pem"
    )
    s_paths, s_manifest = export_window(
        sqlite_log, day, day, workdir / "s", rsa_keys / "audit-private.pem"
    )
    assert seeks and seeks[0] > 200  # started near the window, not at offset 0
    assert k_paths.jsonl.read_bytes() == s_paths.jsonl.read_bytes()
    for manifest in (k_manifest, s_manifest):
        manifest.pop("generated_at")
    assert k_manifest == s_manifest
    assert k_manifest["anchor"]["sequence"] > 0 and k_manifest["record_count"] > 100
    kafka_log.close()
    sqlite_log.close()


@pytest.mark.slow
def test_broker_and_database_restarts_lose_nothing(
    outbox: Outbox, pg_url: str, kafka_url: str, workdir: Path, services: Services
) -> None:
    if not services.local:
        pytest.skip("restarts need the servers started by deploy/local")
    env = backend_env(pg_url, kafka_url)
    log_file = (workdir / "relay.log").open("w")
    relay = start_relay(workdir, "--idle-wait", "0.2", env=env, stderr=log_file)
    stop, written = threading.Event(), [0]
    writer = threading.Thread(
        target=_writer, args=(pg_url, workdir, 10**9, stop, written), kwargs={"pause": 0.02}
    )
    writer.start()
    local = ["bash", str(REPO / "deploy/local/down")], ["bash", str(REPO / "deploy/local/up")]
    try:
        wait_for(lambda: _relayed(outbox.engine) > 200, 60, "relay running")
        subprocess.run([*local[0], "kafka"], check=True, capture_output=True)
        time.sleep(12)  # longer than the producer's blocking limit: the relay must wait
        subprocess.run([*local[1], "kafka"], check=True, capture_output=True)
        subprocess.run([*local[0], "pg"], check=True, capture_output=True)
        time.sleep(3)
        subprocess.run([*local[1], "pg"], check=True, capture_output=True)
        time.sleep(3)
        stop.set()
        writer.join(timeout=60)
        wait_for(
            lambda: _relayed(outbox.engine) == len(outbox_event_ids(outbox.engine)),
            120,
            "the relay to catch up",
        )
        assert relay.poll() is None, "the relay died instead of waiting"
    finally:
        stop.set()
        relay.terminate()
        relay.wait(timeout=30)
        log_file.close()
    logged = [
        json.loads(line)
        for line in (workdir / "relay.log").read_text().splitlines()
        if line.startswith("{")
    ]
    waits = [e for e in logged if e["event"] == "relay.waiting"]
    assert waits and all(e["retry_in_s"] <= 10 for e in waits)  # said it waited, backed off
    records = log_records(kafka_url)
    assert [r["event_id"] for r in records] == outbox_event_ids(outbox.engine)
    assert len(records) > 200 and written[0] > 200
