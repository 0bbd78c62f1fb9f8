"""The contracts on the embedded default: SQLite outbox, SQLite log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine

from producers import Outbox
from relay.logs import open_log
from relay.logs.base import AuditLog
from tests.contracts import AuditLogContract, OutboxContract, RelayContract, chain_of


class TestSQLiteOutbox(OutboxContract):
    @pytest.fixture
    def engine(self, sqlite_engine: Engine) -> Engine:
        return sqlite_engine


class TestSQLiteLog(AuditLogContract):
    @pytest.fixture
    def audit_log(self, workdir: Path) -> AuditLog:
        return open_log(f"sqlite:///{workdir / 'log.db'}")

    @pytest.mark.parametrize(
        "statement", ["UPDATE audit_log SET line = 'x'", "DELETE FROM audit_log"]
    )
    def test_log_refuses_update_and_delete(
        self, audit_log: AuditLog, workdir: Path, statement: str
    ) -> None:
        audit_log.append(chain_of(2), after_sequence=0)
        db = sqlite3.connect(workdir / "log.db")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
        assert len(list(audit_log.read())) == 2


class TestEmbeddedRelay(RelayContract):
    @pytest.fixture
    def outbox(self, sqlite_engine: Engine, workdir: Path) -> Outbox:
        return Outbox(sqlite_engine, str(workdir / "identities.toml"))

    @pytest.fixture
    def audit_log(self, workdir: Path) -> AuditLog:
        return open_log(f"sqlite:///{workdir / 'log.db'}")
