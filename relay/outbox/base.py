"""Reading the outbox in commit order: one interface, one module per database."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple


class OutboxPosition(NamedTuple):
    """Where a row sits in commit order: (transaction stamp, id). SQLite uses tx=0.

    Positions, rows and log entries are NamedTuples: the relay makes three per
    event, and a frozen dataclass costs several times more to build.
    """

    tx: int
    id: int

    def encode(self) -> str:
        return f"{self.tx}:{self.id}"

    @classmethod
    def decode(cls, text: str) -> OutboxPosition:
        tx, _, row_id = text.partition(":")
        return cls(int(tx), int(row_id))


class OutboxRow(NamedTuple):
    position: OutboxPosition
    recorded_at_us: int
    payload: str


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_recorded_at_us: int | None


@dataclass(frozen=True)
class Checkpoint:
    """The chain head a relay last committed and marked (kept in the outbox database)."""

    sequence: int
    record_hash: str
    position: OutboxPosition


class OutboxSource(ABC):
    """What the relay needs from an outbox database."""

    chain_id: str

    @abstractmethod
    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        """Committed, unrelayed rows after ``after``, in commit order; never skips a late commit."""

    @abstractmethod
    def mark_through(
        self,
        position: OutboxPosition,
        relayed_at_us: int,
        after: OutboxPosition | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> int:
        """Mark rows after ``after`` (a bound that keeps the scan short) up to ``position``
        relayed, saving ``checkpoint`` in the same transaction; returns rows marked."""

    @abstractmethod
    def backlog(self) -> Backlog:
        """Rows not yet relayed and the producer time of the oldest (lag)."""

    @abstractmethod
    def checkpoint(self) -> Checkpoint | None:
        """The last saved checkpoint, if any."""

    def wait_for_rows(self, timeout: float) -> None:
        """Block until a row may have committed, or ``timeout`` seconds. Polls by default."""
        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
