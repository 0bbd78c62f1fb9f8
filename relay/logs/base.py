"""The immutable audit log: one small interface, one module per backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from relay.outbox.base import OutboxPosition


class LogEntry(NamedTuple):
    """One appended record: its framed JSON line plus what the log indexes it by."""

    sequence: int
    timestamp_utc: str
    record_hash: str
    line: str
    position: OutboxPosition | None


class ChainConflict(Exception):
    """Another writer appended to the chain since this relay read the tail."""


class LogUnavailable(Exception):
    """The log cannot be reached right now; the relay retries with backoff."""


class AuditLog(ABC):
    """Append-only storage of one chain, read back in chain order."""

    url: str

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
        """The entry with this sequence, or None (a scan; backends may index it)."""
        for entry in self.read():
            if entry.sequence == sequence:
                return entry
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
