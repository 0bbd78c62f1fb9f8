"""Shared fixtures: an isolated working folder, keys, and the real servers.

Integration tests use a real PostgreSQL server and a real Kafka broker:
FLAGTRAIL_TEST_POSTGRES_URL / FLAGTRAIL_TEST_KAFKA_SERVERS when set (``make
test`` sets them from deploy/local/up), else testcontainers when a Docker
engine answers, else deploy/local/up started from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from flagtrail import settings
from producers import Outbox
from producers.identity import SAMPLE_DIRECTORY
from relay.signing import generate_keypair

REPO = Path(__file__).resolve().parent.parent
FLAGTRAIL = [sys.executable, "-m", "flagtrail.cli"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("FLAGTRAIL_") and not name.startswith("FLAGTRAIL_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("AUDIT_SIGNING_KEY_PATH", raising=False)
    # a new chain makes its privacy keys on first use: in the test's folder (the
    # workdir fixture's too), never in the folder pytest was started from
    for kind in ("pseudonym", "vault"):
        monkeypatch.setenv(f"FLAGTRAIL_{kind.upper()}_KEY_PATH", str(tmp_path / f"{kind}.key"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder with the sample identity directory, as the current folder."""
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rsa")
    generate_keypair(folder, "rsa")
    return folder


@pytest.fixture(scope="session")
def ec_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ec")
    generate_keypair(folder, "ec")
    return folder


class SteppingClock:
    """A deterministic producer clock: each call is ``step`` later than the last."""

    def __init__(self, start: datetime, step: timedelta = timedelta(seconds=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


@pytest.fixture
def h1_clock() -> SteppingClock:
    """Records inside the seed's audit window, January to June 2026."""
    return SteppingClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC), timedelta(minutes=7))


@pytest.fixture
def sqlite_engine(workdir: Path) -> Engine:
    return settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")


def make_outbox(engine: Engine, workdir: Path, **kwargs: object) -> Outbox:
    return Outbox(engine, str(workdir / "identities.toml"), **kwargs)  # type: ignore[arg-type]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*FLAGTRAIL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- real servers ------------------------------------------------------------------------
@dataclass(frozen=True)
class Services:
    postgres_url: str  # server URL without a database name
    kafka_servers: str
    local: bool  # started by deploy/local (can be restarted by tests)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _local_services() -> Services:
    out = subprocess.run(
        ["bash", str(REPO / "deploy/local/up")],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    pg = values["FLAGTRAIL_OUTBOX_URL"].rsplit("/", 1)[0]
    kafka = values["FLAGTRAIL_LOG_URL"].removeprefix("kafka://").split("/", 1)[0]
    return Services(pg, kafka, local=True)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    pg, kafka = (
        os.environ.get("FLAGTRAIL_TEST_POSTGRES_URL"),
        os.environ.get("FLAGTRAIL_TEST_KAFKA_SERVERS"),
    )
    if pg and kafka:
        yield Services(pg.rstrip("/"), kafka, local=True)
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            PostgresContainer("postgres:16", driver="psycopg") as postgres,
            KafkaContainer("apache/kafka:4.1.1").with_kraft() as broker,
        ):
            yield Services(
                postgres.get_connection_url().rsplit("/", 1)[0],
                broker.get_bootstrap_server(),
                local=False,
            )
    else:
        yield _local_services()


@pytest.fixture
def pg_url(services: Services) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{services.postgres_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = f"{services.postgres_url}/{name}"
    yield url
    admin = create_engine(f"{services.postgres_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # a fresh connection: the server may have restarted
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def kafka_url(services: Services) -> str:
    """A Kafka log URL on a topic no other test uses."""
    return f"kafka://{services.kafka_servers}/audit-{uuid.uuid4().hex[:12]}"
