"""Settings: command-line flag, then environment variable, then embedded default."""

from __future__ import annotations

import os
import sqlite3
import time

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from producers.errors import ConfigError

DEFAULTS = {
    "FLAGTRAIL_OUTBOX_URL": "sqlite:///outbox.db",
    "FLAGTRAIL_LOG_URL": "sqlite:///log.db",
    "FLAGTRAIL_IDENTITIES": "identities.toml",
    "FLAGTRAIL_CHAIN": "flag-audit",
    "AUDIT_SIGNING_KEY_PATH": "audit-private.pem",
}


def setting(name: str, given: str | None = None) -> str:
    if given:
        return given
    return os.environ.get(name) or DEFAULTS[name]


def outbox_url(given: str | None = None) -> str:
    return setting("FLAGTRAIL_OUTBOX_URL", given)


def log_url(given: str | None = None) -> str:
    return setting("FLAGTRAIL_LOG_URL", given)


def identities_path(given: str | None = None) -> str:
    return setting("FLAGTRAIL_IDENTITIES", given)


def chain_id(given: str | None = None) -> str:
    return setting("FLAGTRAIL_CHAIN", given)


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # WAL lets the relay read while control-plane writers commit. Switching a new file
    # to WAL can fail at once with "database is locked" when two processes start
    # together (no busy wait for it): retry for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the outbox database, tuned for the outbox's access pattern."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"outbox URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:///outbox.db or "
            "postgresql+psycopg://user@127.0.0.1:5432/db)"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            # lets operators (and tests) see which process holds the relay lease
            connect_args={"application_name": f"flagtrail-{os.getpid()}"},
        )
    raise ConfigError(
        f"outbox database {parsed.get_backend_name()!r} is not supported: use sqlite or postgresql"
    )
