"""Reading the outbox in commit order: one interface, one module per database."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class OutboxPosition:
    """Where a row sits in commit order: (transaction stamp, id). SQLite uses tx=0."""

    tx: int
    id: int

    def encode(self) -> str:
        return f"{self.tx}:{self.id}"

    @classmethod
    def decode(cls, text: str) -> OutboxPosition:
        tx, _, row_id = text.partition(":")
        return cls(int(tx), int(row_id))


@dataclass(frozen=True)
class OutboxRow:
    position: OutboxPosition
    recorded_at_us: int
    payload: str


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_recorded_at_us: int | None


class OutboxSource(ABC):
    """What the relay needs from an outbox database."""

    @abstractmethod
    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        """Committed, unrelayed rows after ``after``, in commit order; never skips a late commit."""

    @abstractmethod
    def mark_through(
        self, position: OutboxPosition, relayed_at_us: int, after: OutboxPosition | None = None
    ) -> int:
        """Mark rows after ``after`` (a bound that keeps the scan short) up to ``position``
        relayed; returns how many were marked."""

    @abstractmethod
    def backlog(self) -> Backlog:
        """Rows not yet relayed and the producer time of the oldest (lag)."""

    def wait_for_rows(self, timeout: float) -> None:
        """Block until a row may have committed, or ``timeout`` seconds. Polls by default."""
        import time

        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
