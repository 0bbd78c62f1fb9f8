"""PostgreSQL's driver errors at the outbox's edge: an outage is retriable, a wrong
setting is not; both are one sentence without the password (issue 7, section 13)."""

from __future__ import annotations

import pytest

from flagtrail import settings
from producers.errors import BackendUnavailable, ConfigError
from relay.lease import PostgresLease
from relay.outbox import open_outbox_source
from relay.outbox.base import Checkpoint, OutboxPosition
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_a_refused_connection_is_retriable() -> None:
    engine = settings.make_engine(
        f"postgresql+psycopg://flagtrail:s3cret-pw@127.0.0.1:{free_port()}/flagtrail"
    )
    with pytest.raises(BackendUnavailable) as raised:
        open_outbox_source(engine, "flag-audit")
    assert raised.value.retriable and "s3cret-pw" not in str(raised.value)
    with pytest.raises(BackendUnavailable):
        PostgresLease(engine, "flag-audit").try_acquire()


def test_a_missing_database_is_a_configuration_error(pg_url: str) -> None:
    engine = settings.make_engine(f"{pg_url}_missing")
    with pytest.raises(ConfigError, match="does not exist") as raised:
        open_outbox_source(engine, "flag-audit")
    assert not raised.value.retriable


def test_a_missing_outbox_table_on_postgres_is_a_configuration_error(pg_url: str) -> None:
    engine = settings.make_engine(pg_url)
    source = open_outbox_source(engine, "flag-audit")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE flagtrail_outbox")
    with pytest.raises(ConfigError, match="does not exist") as raised:
        source.fetch_pending(None, 10)
    assert not raised.value.retriable
    with pytest.raises(ConfigError, match="holds no flagtrail outbox"):
        open_outbox_source(engine, "flag-audit", read_only=True)
    engine.dispose()


def test_a_read_only_postgres_outbox_creates_and_changes_nothing(pg_url: str) -> None:
    reader = settings.make_engine(pg_url, read_only=True)
    with pytest.raises(ConfigError, match="holds no flagtrail outbox"):
        open_outbox_source(reader, "flag-audit", read_only=True)
    writer = settings.make_engine(pg_url)
    open_outbox_source(writer, "flag-audit")  # the relay creates the schema
    writer.dispose()
    source = open_outbox_source(reader, "flag-audit", read_only=True)
    assert source.backlog().pending == 0
    with pytest.raises(ConfigError, match="read-only transaction") as raised:
        source.mark_through(
            OutboxPosition(1, 1), 1, checkpoint=Checkpoint(1, "0" * 64, OutboxPosition(1, 1))
        )
    assert not raised.value.retriable
    reader.dispose()
