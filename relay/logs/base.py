"""The immutable audit log: one small interface, one module per backend."""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from producers.errors import BackendUnavailable, ConfigError
from relay.outbox.base import OutboxPosition

# a chain id becomes part of a file name, a Kafka topic, a transactional id and a lock
# key: only lower-case ASCII letters, digits and . _ - (never a path separator or "..")
CHAIN_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_chain_id(chain_id: object) -> str:
    """``chain_id`` when it is a valid chain id; ConfigError otherwise."""
    if not isinstance(chain_id, str) or CHAIN_ID.fullmatch(chain_id) is None:
        raise ConfigError(
            f"chain id {chain_id!r} is not valid: use 1 to 64 characters from a-z, 0-9, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return chain_id


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 unless it exists. SQLite gives the -wal and
    -shm files the database file's mode, so they stay private as well."""
    try:
        os.close(os.open(Path(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc


def foreign_chain(line: str, chain_id: str) -> bool:
    """True when a record's line names another chain (a canonical line spells the
    field ``"chain_id":"…"``; records without the field belong to the log's chain)."""
    return '"chain_id":' in line and f'"chain_id":"{chain_id}"' not in line


class LogEntry(NamedTuple):
    """One appended record: its framed JSON line plus what the log indexes it by."""

    sequence: int
    timestamp_utc: str
    record_hash: str
    line: str
    position: OutboxPosition | None


class LogUnavailable(BackendUnavailable):
    """The log cannot be reached right now; the relay retries with backoff."""


class ChainConflict(BackendUnavailable):
    """Another writer appended to the chain since this relay read the tail (re-read it)."""


class AuditLog(ABC):
    """Append-only storage of one chain, read back in chain order."""

    url: str
    chain_id: str

    def claim(self) -> None:  # noqa: B027 - optional hook
        """Become the chain's single writer (fence older writers) before reading the tail."""

    @abstractmethod
    def tail(self) -> LogEntry | None:
        """The last committed entry, or None for an empty log."""

    @abstractmethod
    def append(self, entries: Sequence[LogEntry], after_sequence: int) -> None:
        """Append atomically, refusing (ChainConflict) unless the tail is ``after_sequence``."""

    @abstractmethod
    def read(self, since: str | None = None, until: str | None = None) -> Iterator[LogEntry]:
        """Entries with since <= timestamp_utc < until (RFC 3339 strings), in chain order."""

    def entry_at(self, sequence: int) -> LogEntry | None:
        """The entry with this sequence, or None. Backends override this scan with a lookup."""
        for entry in self.read():
            if entry.sequence == sequence:
                return entry
            if entry.sequence > sequence:
                return None
        return None

    def ping(self) -> None:  # noqa: B027 - optional hook
        """Cheap health probe for an idle writer: raise LogUnavailable when the log is
        known to be unreachable (the relay calls it between polls so that an outage
        shows while no rows flow). Does nothing by default."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
