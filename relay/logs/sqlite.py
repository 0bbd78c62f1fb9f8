"""The embedded immutable log: an SQLite file whose table refuses UPDATE and DELETE.

One file may hold several chains: every row stores its chain id and the primary
key is (chain_id, sequence). A file written before chain ids were stored is
migrated when a writer opens it (each row keeps the chain id its record names)
and read through a view, without being changed, when a reader opens it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

from producers.errors import ConfigError
from relay.logs.base import (
    AuditLog,
    ChainConflict,
    LogEntry,
    LogUnavailable,
    check_chain_id,
    create_private_file,
    foreign_chain,
)
from relay.outbox.base import OutboxPosition

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_log (
    chain_id      TEXT    NOT NULL,
    sequence      INTEGER NOT NULL,
    timestamp_utc TEXT    NOT NULL,
    hash          TEXT    NOT NULL,
    outbox_tx     INTEGER,
    outbox_id     INTEGER,
    line          TEXT    NOT NULL,
    PRIMARY KEY (chain_id, sequence)
)""",
    "CREATE INDEX IF NOT EXISTS ix_audit_log_chain_time ON audit_log (chain_id, timestamp_utc)",
    "CREATE TRIGGER IF NOT EXISTS audit_log_refuses_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_refuses_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: DELETE refused'); END",
)

# the chain a row of a file from before chain ids belongs to: the one its record names
_LEGACY_CHAIN = "coalesce(CASE WHEN json_valid(line) THEN json_extract(line, '$.chain_id') END, ?)"
_LEGACY_COLUMNS = "sequence, timestamp_utc, hash, outbox_tx, outbox_id, line"
_COLUMNS = "sequence, timestamp_utc, hash, outbox_tx, outbox_id, line"

# SQLite errors that an operator fixes by waiting (another process holds the file)
_TRANSIENT = ("locked", "busy", "disk i/o error")


def _entry(row: tuple) -> LogEntry:
    sequence, ts, digest, tx, row_id, line = row
    position = OutboxPosition(tx, row_id) if row_id is not None else None
    return LogEntry(sequence, ts, digest, line, position)


class SQLiteAuditLog(AuditLog):
    def __init__(
        self, path: str, chain_id: str, read_only: bool = False, busy_timeout_s: float = 60.0
    ) -> None:
        self.chain_id = check_chain_id(chain_id)
        self.busy_timeout_s = busy_timeout_s
        self.url = f"sqlite:///{path}"
        self.path = Path(path)
        self.read_only = read_only
        self._table = "audit_log"
        if read_only:
            self._db = self._open_read_only()
        else:
            if not self.path.parent.is_dir():
                raise ConfigError(f"log folder {self.path.parent} does not exist")
            if self.path.exists() and not self.path.is_file():
                raise ConfigError(f"log {self.url} is not a file")
            create_private_file(self.path)
            self._db = self._open(path)

    # -- opening ------------------------------------------------------------------------
    def _open_read_only(self) -> sqlite3.Connection:
        """``mode=ro``: a reader never creates, migrates or changes the file."""
        if not self.path.exists():
            raise ConfigError(f"log {self.url} does not exist")
        if not self.path.is_file():
            raise ConfigError(f"log {self.url} is not a file")
        try:
            db = sqlite3.connect(
                f"file:{quote(str(self.path.resolve()))}?mode=ro",
                uri=True,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            columns = self._columns(db)
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc
        if not columns:
            db.close()
            raise ConfigError(f"log {self.url} holds no flagtrail audit log")
        if "chain_id" not in columns:
            # a file from before chain ids: a temporary view, nothing written to the file
            db.execute(
                "CREATE TEMP VIEW audit_log_chains AS SELECT "
                f"{_LEGACY_CHAIN.replace('?', _quoted(self.chain_id))} AS chain_id, "
                f"{_LEGACY_COLUMNS} FROM main.audit_log"
            )
            self._table = "temp.audit_log_chains"
        return db

    @staticmethod
    def _columns(db: sqlite3.Connection) -> set[str]:
        return {row[1] for row in db.execute("PRAGMA main.table_info(audit_log)")}

    def _open(self, path: str, patience_s: float = 30.0) -> sqlite3.Connection:
        """Open and set up the log file. Switching to WAL can fail with "database is
        locked" without waiting when two relays start at once: retry for a while."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                db = sqlite3.connect(
                    path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                self._migrate(db)
                for statement in _SCHEMA:
                    db.execute(statement)
                return db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise self._translate(exc, "open") from exc
                time.sleep(0.05)
            except sqlite3.Error as exc:
                raise self._translate(exc, "open") from exc

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Give a file from before chain ids its chain_id column, in one transaction."""
        columns = self._columns(db)
        if not columns or "chain_id" in columns:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if "chain_id" not in self._columns(db):  # a peer may have migrated meanwhile
                db.execute("DROP TRIGGER IF EXISTS audit_log_refuses_update")
                db.execute("DROP TRIGGER IF EXISTS audit_log_refuses_delete")
                db.execute("ALTER TABLE audit_log RENAME TO audit_log_before_chains")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(
                    f"INSERT INTO audit_log (chain_id, {_LEGACY_COLUMNS}) "
                    f"SELECT {_LEGACY_CHAIN}, {_LEGACY_COLUMNS} FROM audit_log_before_chains "
                    "ORDER BY sequence",
                    (self.chain_id,),
                )
                # DROP TABLE fires no DELETE trigger; every row was copied above
                db.execute("DROP TABLE audit_log_before_chains")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    # -- errors -------------------------------------------------------------------------
    def _translate(self, exc: sqlite3.Error, doing: str) -> Exception:
        """sqlite3's errors at this edge: waiting helps (retriable) or it does not."""
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and any(
            word in text.lower() for word in _TRANSIENT
        ):
            return LogUnavailable(f"log {self.url} is unavailable ({doing}): {text}")
        if "readonly" in text.lower() or "read-only" in text.lower():
            return ConfigError(f"log {self.url} cannot be written ({doing}): {text}")
        return ConfigError(f"log {self.url} cannot be used ({doing}): {text}")

    def _query(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._translate(exc, "read") from exc

    # -- the interface --------------------------------------------------------------------
    def tail(self) -> LogEntry | None:
        row = self._query(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE chain_id = ? "
            "ORDER BY sequence DESC LIMIT 1",
            (self.chain_id,),
        ).fetchone()
        return _entry(row) if row else None

    def chain_ids(self, limit: int = 5) -> list[str]:
        """Some chains this file holds (a reader names them when asked for another)."""
        rows = self._query(f"SELECT DISTINCT chain_id FROM {self._table} LIMIT ?", (limit,))
        return [row[0] for row in rows.fetchall()]

    def entry_at(self, sequence: int) -> LogEntry | None:
        row = self._query(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE chain_id = ? AND sequence = ?",
            (self.chain_id, sequence),
        ).fetchone()
        return _entry(row) if row else None

    def append(self, entries: Sequence[LogEntry], after_sequence: int) -> None:
        if self.read_only:
            raise ConfigError(f"log {self.url} was opened read-only")
        for e in entries:
            if foreign_chain(e.line, self.chain_id):
                raise ConfigError(
                    f"record {e.sequence} names another chain than {self.chain_id!r}: "
                    "open the log with the record's chain id"
                )
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock before checking the tail
        except sqlite3.Error as exc:
            raise self._translate(exc, "append") from exc
        try:
            (current,) = db.execute(
                "SELECT coalesce(max(sequence), 0) FROM audit_log WHERE chain_id = ?",
                (self.chain_id,),
            ).fetchone()
            if current != after_sequence:
                raise ChainConflict(
                    f"log tail of chain {self.chain_id} is sequence {current}, this relay "
                    f"expected {after_sequence}"
                )
            db.executemany(
                f"INSERT INTO audit_log (chain_id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        self.chain_id,
                        e.sequence,
                        e.timestamp_utc,
                        e.record_hash,
                        e.position.tx if e.position else None,
                        e.position.id if e.position else None,
                        e.line,
                    )
                    for e in entries
                ],
            )
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc, "append") from exc
            raise

    def read(self, since: str | None = None, until: str | None = None) -> Iterator[LogEntry]:
        cursor = self._query(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE chain_id = ? "
            "AND timestamp_utc >= ? AND timestamp_utc < ? ORDER BY sequence",
            (self.chain_id, since or "", until or "~"),
        )
        while True:
            try:
                batch = cursor.fetchmany(5000)
            except sqlite3.Error as exc:
                raise self._translate(exc, "read") from exc
            if not batch:
                return
            yield from map(_entry, batch)

    def close(self) -> None:
        self._db.close()


def _quoted(value: str) -> str:
    """An SQL string literal; chain ids are validated, this only guards the quotes."""
    return "'" + value.replace("'", "''") + "'"
