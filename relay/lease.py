"""Who may write a chain: a lease held for as long as the relay lives.

Exactly one relay per chain writes; standbys wait for the lease and take over
when its holder dies (its session or file lock goes with the process). The
lease keeps standbys quiet; it is not what prevents a fork: the log itself
fences (Kafka's transactional id, SQLite's tail check), so even two relays
that both believe they lead cannot interleave two chains.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from producers.errors import ConfigError
from relay.logs.base import check_chain_id
from relay.outbox.sql import translated


def _lock_key(chain_id: str) -> int:
    """A stable signed 64-bit advisory-lock key for a chain."""
    check_chain_id(chain_id)
    digest = hashlib.sha256(f"flagtrail-relay:{chain_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Lease(ABC):
    @abstractmethod
    def try_acquire(self) -> bool:
        """Take the lease if free; True while this process holds it."""

    @abstractmethod
    def still_held(self) -> bool:
        """False once the lease is lost (connection gone): stop writing."""

    @abstractmethod
    def release(self) -> None: ...


class PostgresLease(Lease):
    """A session-level advisory lock on a connection of its own."""

    def __init__(self, engine: Engine, chain_id: str) -> None:
        self.engine = engine
        self.key = _lock_key(chain_id)
        self._conn: Any = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_held()
        with translated(self.engine, "taking the relay lease"):
            conn = self.engine.connect()
            try:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
                ).scalar()
                conn.commit()
            except Exception:
                conn.invalidate()
                raise
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def still_held(self) -> bool:
        """A session-level lock lives as long as its session: check the session."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
            finally:
                self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.close()
            except Exception:
                pass
            self._conn = None


class FileLease(Lease):
    """flock on a file beside the embedded outbox; the kernel drops it with the process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the relay lease {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lease_for(engine: Engine, chain_id: str) -> Lease:
    if engine.dialect.name == "postgresql":
        return PostgresLease(engine, chain_id)
    check_chain_id(chain_id)  # it becomes part of a file name
    database = engine.url.database or "outbox.db"
    return FileLease(Path(f"{database}.{chain_id}.relay.lock"))
