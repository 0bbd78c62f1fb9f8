"""The same contracts on the real PostgreSQL server and the real Kafka broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from flagtrail import settings
from producers import Outbox
from relay.logs import open_log
from relay.logs.base import AuditLog
from tests.contracts import AuditLogContract, OutboxContract, RelayContract

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(pg_url: str) -> Engine:
    engine = settings.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def kafka_log(kafka_url: str) -> AuditLog:
    audit_log = open_log(kafka_url)
    yield audit_log
    audit_log.close()


class TestPostgresOutbox(OutboxContract):
    @pytest.fixture
    def engine(self, pg_engine: Engine) -> Engine:
        return pg_engine


class TestKafkaLog(AuditLogContract):
    @pytest.fixture
    def audit_log(self, kafka_log: AuditLog) -> AuditLog:
        return kafka_log


class TestScaleRelay(RelayContract):
    @pytest.fixture
    def outbox(self, pg_engine: Engine, workdir: Path) -> Outbox:
        return Outbox(pg_engine, str(workdir / "identities.toml"))

    @pytest.fixture
    def audit_log(self, kafka_log: AuditLog) -> AuditLog:
        return kafka_log


class TestPostgresOutboxWithSQLiteLog(RelayContract):
    """Backends mix: a PostgreSQL outbox can feed the embedded log."""

    @pytest.fixture
    def outbox(self, pg_engine: Engine, workdir: Path) -> Outbox:
        return Outbox(pg_engine, str(workdir / "identities.toml"))

    @pytest.fixture
    def audit_log(self, workdir: Path) -> AuditLog:
        return open_log(f"sqlite:///{workdir / 'log.db'}")
