"""The embedded immutable log: an SQLite file whose table refuses UPDATE and DELETE."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from producers.errors import ConfigError
from relay.logs.base import AuditLog, ChainConflict, LogEntry
from relay.outbox.base import OutboxPosition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    sequence      INTEGER PRIMARY KEY,
    timestamp_utc TEXT    NOT NULL,
    hash          TEXT    NOT NULL,
    outbox_tx     INTEGER,
    outbox_id     INTEGER,
    line          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_audit_log_time ON audit_log (timestamp_utc);
CREATE TRIGGER IF NOT EXISTS audit_log_refuses_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_refuses_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: DELETE refused'); END;
"""

_COLUMNS = "sequence, timestamp_utc, hash, outbox_tx, outbox_id, line"


def _entry(row: tuple) -> LogEntry:
    sequence, ts, digest, tx, row_id, line = row
    position = OutboxPosition(tx, row_id) if row_id is not None else None
    return LogEntry(sequence, ts, digest, line, position)


class SQLiteAuditLog(AuditLog):
    def __init__(self, path: str) -> None:
        self.url = f"sqlite:///{path}"
        self.path = Path(path)
        if not self.path.parent.exists():
            raise ConfigError(f"log folder {self.path.parent} does not exist")
        self._db = self._open(path)

    @staticmethod
    def _open(path: str, patience_s: float = 30.0) -> sqlite3.Connection:
        """Open and set up the log file. Switching to WAL can fail with "database is
        locked" without waiting when two relays start at once: retry for a while."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                db = sqlite3.connect(
                    path, timeout=60, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise ConfigError(f"cannot open log {path}: {exc}") from exc
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"cannot open log {path}: {exc}") from exc

    def tail(self) -> LogEntry | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM audit_log ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        return _entry(row) if row else None

    def append(self, entries: Sequence[LogEntry], after_sequence: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # take the write lock before checking the tail
        try:
            (current,) = db.execute("SELECT coalesce(max(sequence), 0) FROM audit_log").fetchone()
            if current != after_sequence:
                raise ChainConflict(
                    f"log tail is sequence {current}, this relay expected {after_sequence}"
                )
            db.executemany(
                f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
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
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def read(self, since: str | None = None, until: str | None = None) -> Iterator[LogEntry]:
        cursor = self._db.execute(
            f"SELECT {_COLUMNS} FROM audit_log WHERE timestamp_utc >= ? AND timestamp_utc < ? "
            "ORDER BY sequence",
            (since or "", until or "~"),
        )
        while batch := cursor.fetchmany(5000):
            yield from map(_entry, batch)

    def close(self) -> None:
        self._db.close()
