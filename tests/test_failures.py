"""Driver errors that reach the command become one sentence: an outage (exit 5) or not (2)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from flagtrail.failures import translate
from producers.errors import EXIT_ERROR, EXIT_UNAVAILABLE, BackendUnavailable, ConfigError


def test_a_locked_sqlite_database_is_an_outage(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with pytest.raises(OperationalError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    holder.rollback()
    error = translate(caught.value)
    assert isinstance(error, BackendUnavailable) and error.exit_code == EXIT_UNAVAILABLE
    assert "database is locked" in str(error) and "\n" not in str(error)
    assert "sqlalche.me" not in str(error)  # SQLAlchemy's background link is not the sentence


def test_a_file_that_is_not_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database at all, just some bytes" * 100)
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(Exception) as caught, engine.connect() as conn:
        conn.execute(text("SELECT * FROM sqlite_master"))
    error = translate(caught.value)
    assert isinstance(error, ConfigError) and error.exit_code == EXIT_ERROR
    assert str(error) == "cannot use the outbox database: file is not a database"


def test_a_refused_postgresql_connection_is_an_outage() -> None:
    engine = create_engine("postgresql+psycopg://u:pw@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(OperationalError) as caught:
        engine.connect()
    error = translate(caught.value)
    assert isinstance(error, BackendUnavailable)
    assert "Connection refused" in str(error) and "\n" not in str(error)


def test_kafka_errors_keep_their_retriable_flag() -> None:
    from confluent_kafka import KafkaError, KafkaException
    from kafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

    assert isinstance(translate(KafkaTimeoutError("no broker")), BackendUnavailable)
    down = KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers down"))
    assert isinstance(translate(down), BackendUnavailable)
    fatal = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    assert isinstance(translate(fatal), ConfigError)
    assert isinstance(translate(UnknownTopicOrPartitionError("gone")), BackendUnavailable) is (
        UnknownTopicOrPartitionError.retriable
    )


def test_os_errors_name_the_file_and_bugs_are_not_hidden(tmp_path: Path) -> None:
    try:
        (tmp_path / "missing" / "x").read_text()
    except OSError as exc:
        error = translate(exc)
    assert isinstance(error, ConfigError)
    assert str(error) == f"cannot use {tmp_path / 'missing' / 'x'}: No such file or directory"
    assert isinstance(translate(ConnectionRefusedError(111, "refused")), BackendUnavailable)
    assert translate(KeyError("a bug")) is None
    assert translate(ZeroDivisionError()) is None
