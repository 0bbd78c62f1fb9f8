"""The rejection journal: a blocked write's ``rejected`` event, durable before PolicyError.

SQLite has one writer. When the caller's own transaction holds the write lock,
the rejection cannot be committed on a second connection (it would wait on the
caller) and must not ride in the caller's transaction (its rollback, or a crash
before it ends, would undo it). So the outbox row is first appended, fsync'd,
to a side file beside the database, ``<db>-rejections.jsonl``, under its own
lock (``<db>-rejections.lock``), and only then is PolicyError raised.

The journal is folded into the outbox idempotently by ``event_id`` (``INSERT
... ON CONFLICT DO NOTHING``): by the caller's commit or rollback hook when the
process lives on (the usual case), and by the relay's SQLite reader before each
fetch (``relay/outbox/sqlite.py``), which covers a process killed in between.
Lines are removed only after the rows they hold committed; a crash between the
two folds them again, which the unique event_id makes a no-op. The fold never
waits on a producer's write lock for long: if the database is busy it tries
again at the next fetch.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from producers.schema import OUTBOX_TABLE

_COLUMNS = ("chain_id", "event_id", "recorded_at_us", "payload")
_INSERT = text(
    f"INSERT INTO {OUTBOX_TABLE} ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _COLUMNS)}) ON CONFLICT(event_id) DO NOTHING"
)
_FOLD_BUSY_MS = 200


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RejectionJournal:
    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-rejections.jsonl")
        self.lock_path = database.with_name(database.name + "-rejections.lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, row: dict[str, Any]) -> None:
        """Durably add one outbox row (returns only once it is on disk)."""
        line = json.dumps({c: row[c] for c in _COLUMNS}, separators=(",", ":")) + "\n"
        with self._locked():
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size:  # a writer killed mid-line left a torn tail: end it, never glue to it
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            line = "\n" + line
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def fold(self, engine: Engine) -> int:
        """Insert journaled rows into the outbox (idempotent); returns rows read.

        The file lock is not held while waiting for the database: a producer
        that holds the database's write lock may be appending here.
        """
        if not self.pending():
            return 0
        with self._locked():
            data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        rows = []
        for raw in complete.splitlines():
            try:
                row = json.loads(raw)
                rows.append({c: row[c] for c in _COLUMNS})
            except (ValueError, KeyError, TypeError):
                continue  # a torn line: its writer died before raising PolicyError
        if rows and not self._insert(engine, rows):
            return 0
        with self._locked():
            rest = self.path.read_bytes()[len(complete) :]
            temporary = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, rest)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            _fsync_dir(self.path.parent)
        return len(rows)

    @staticmethod
    def _insert(engine: Engine, rows: list[dict[str, Any]]) -> bool:
        from sqlalchemy.exc import OperationalError

        with engine.connect() as conn:
            driver = conn.connection.driver_connection  # a pragma outside any transaction
            driver.execute(f"PRAGMA busy_timeout = {_FOLD_BUSY_MS}")
            try:
                with conn.begin():
                    conn.execute(_INSERT, rows)
                return True
            except OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                return False  # a producer holds the write lock: fold at the next fetch
            finally:
                driver.execute("PRAGMA busy_timeout = 60000")


def journal_for(engine: Engine) -> RejectionJournal | None:
    """The journal beside a file-backed SQLite outbox; None elsewhere (PostgreSQL
    commits a rejection on a second connection at once)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return RejectionJournal(Path(database).absolute())
