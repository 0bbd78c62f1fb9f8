"""Settings: command-line flag, then environment variable, then embedded default."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from producers.errors import ConfigError

DEFAULTS = {
    "FLAGTRAIL_OUTBOX_URL": "sqlite:///outbox.db",
    "FLAGTRAIL_LOG_URL": "sqlite:///log.db",
    "FLAGTRAIL_IDENTITIES": "identities.toml",
    "FLAGTRAIL_CHAIN": "flag-audit",
    "AUDIT_SIGNING_KEY_PATH": "audit-private.pem",
    # privacy (producers/privacy.py): keys outside the log and the database
    "FLAGTRAIL_PSEUDONYM_KEY_PATH": "pseudonym.key",
    "FLAGTRAIL_VAULT_KEY_PATH": "vault.key",
    "FLAGTRAIL_PSEUDONYMS": "auto",  # auto: on for new chains; on; off
    "FLAGTRAIL_OUTBOX_RETENTION_DAYS": "30",
    "FLAGTRAIL_VAULT_RETENTION_DAYS": "730",
    "FLAGTRAIL_NOTE_KEY_PATH": "note-private.key",
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


def tree_url(log: str, given: str | None = None, outbox_url: str | None = None) -> str:
    """Where the chains' Merkle trees live (relay/tree.py): FLAGTRAIL_TREE_URL, else the
    SQLite log's own file, else (a Kafka log) the outbox database."""
    explicit = given or os.environ.get("FLAGTRAIL_TREE_URL")
    if explicit:
        return explicit
    return log if log.startswith("sqlite:///") else (outbox_url or globals()["outbox_url"]())


def note_key_path(given: str | None = None) -> tuple[Path, bool]:
    """The checkpoints' note signing key, and whether it was named (flag or
    FLAGTRAIL_NOTE_KEY_PATH) rather than the default file."""
    named = given or os.environ.get("FLAGTRAIL_NOTE_KEY_PATH")
    return Path(named or DEFAULTS["FLAGTRAIL_NOTE_KEY_PATH"]), bool(named)


def chain_id(given: str | None = None) -> str:
    """The chain id, validated before it reaches a file path, a topic or a lock."""
    from relay.logs.base import check_chain_id

    return check_chain_id(setting("FLAGTRAIL_CHAIN", given))


def kafka_replication() -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new and used Kafka log topics:
    FLAGTRAIL_KAFKA_REPLICATION_FACTOR and FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS, default
    3 and 2 (deploy/local/up exports 1 and 1 for its single broker). A log URL's
    ``?replication_factor=&min_insync_replicas=`` overrides them."""
    from relay.logs import _kafka_settings

    values = _kafka_settings("(settings)", "")
    return int(values["replication_factor"]), int(values["min_insync_replicas"])  # type: ignore[call-overload]


@dataclass(frozen=True)
class Settings:
    """Every setting a command or the API needs, resolved once (flag, then environment,
    then default) and passed down: nothing below the CLI reads the environment again."""

    outbox_url: str
    log_url: str
    chain_id: str
    identities: str
    signing_key: Path
    tree_url: str = ""  # where the chain's Merkle tree lives (tree_url below)
    note_key: Path = Path(DEFAULTS["FLAGTRAIL_NOTE_KEY_PATH"])  # the checkpoints' signer
    note_key_named: bool = False  # named by flag or environment: missing is an error
    tsa_url: str | None = None  # the time-stamping authority asked at export (RFC 3161)

    @classmethod
    def resolve(
        cls,
        outbox: str | None = None,
        log: str | None = None,
        chain: str | None = None,
        identities: str | None = None,
        signing_key: str | None = None,
    ) -> Settings:
        outbox, log = outbox_url(outbox), log_url(log)
        note_key, note_key_named = note_key_path()
        return cls(
            outbox_url=outbox,
            log_url=log,
            chain_id=chain_id(chain),
            identities=identities_path(identities),
            signing_key=Path(setting("AUDIT_SIGNING_KEY_PATH", signing_key)),
            tree_url=tree_url(log, outbox_url=outbox),
            note_key=note_key,
            note_key_named=note_key_named,
            tsa_url=os.environ.get("FLAGTRAIL_TSA_URL") or None,
        )

    @classmethod
    def from_args(cls, args: object) -> Settings:
        """From a command's parsed flags (a command without a flag takes the default)."""
        return cls.resolve(
            getattr(args, "outbox_url", None),
            getattr(args, "log_url", None),
            getattr(args, "chain", None),
            getattr(args, "identities", None),
            getattr(args, "signing_key", None),
        )


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


def _read_only_sqlite(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def make_engine(url: str, read_only: bool = False) -> Engine:
    """An engine for the outbox database, tuned for the outbox's access pattern.

    A new SQLite file is created 0600 (its -wal and -shm files take its mode). With
    ``read_only`` (readers of the outbox) a missing SQLite file is a ConfigError and
    the file is opened ``mode=ro``: nothing is created or changed."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"outbox URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:///outbox.db or "
            "postgresql+psycopg://user@127.0.0.1:5432/db)"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed, read_only)
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # lets operators (and tests) see which process holds the relay lease
        connect_args = {"application_name": f"flagtrail-{os.getpid()}"}
        if read_only:  # a reader's transactions cannot write, whatever it runs
            connect_args["options"] = "-c default_transaction_read_only=on"
        return create_engine(
            parsed, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
        )
    raise ConfigError(
        f"outbox database {parsed.get_backend_name()!r} is not supported: use sqlite or postgresql"
    )


def _sqlite_engine(url: str, parsed: URL, read_only: bool) -> Engine:
    from relay.logs.base import create_private_file

    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError(f"outbox URL {redact(url)!r} must name a file: sqlite:///outbox.db")
    path = Path(database)
    if read_only:
        if not path.is_file():
            raise ConfigError(f"outbox {redact(url)} does not exist")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        engine = create_engine(parsed, creator=lambda: sqlite3.connect(uri, uri=True, timeout=60))
        event.listen(engine, "connect", _read_only_sqlite)
        return engine
    if not path.parent.is_dir():
        raise ConfigError(f"outbox folder {path.parent} does not exist")
    create_private_file(path)
    engine = create_engine(parsed, connect_args={"timeout": 60})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def redact(url: str) -> str:
    """A URL fit for a message: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def webhook_secret(platform: str) -> str | None:
    """A platform's webhook signing secret: FLAGTRAIL_<PLATFORM>_WEBHOOK_SECRET
    (launchdarkly, flagsmith); None when unset (its receiver answers 404)."""
    return os.environ.get(f"FLAGTRAIL_{platform.upper()}_WEBHOOK_SECRET") or None
