"""Reading the outbox in commit order: one interface, one module per database."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, TextClause, text


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


_BACKLOG = text(
    "SELECT count(*), min(recorded_at_us) FROM flagtrail_outbox "
    "WHERE chain_id = :chain AND relayed_at_us IS NULL"
)
_CHECKPOINT = text(
    "SELECT sequence, hash, position FROM flagtrail_relay_state WHERE chain_id = :chain"
)
_SAVE_CHECKPOINT = text(
    "UPDATE flagtrail_relay_state SET sequence = :sequence, hash = :hash, "
    "position = :position, updated_at_us = :now WHERE chain_id = :chain"
)
_FIRST_CHECKPOINT = text(
    "INSERT INTO flagtrail_relay_state (chain_id, sequence, hash, position, updated_at_us) "
    "VALUES (:chain, :sequence, :hash, :position, :now)"
)


class SQLOutboxSource(OutboxSource):
    """What every SQL outbox shares; a database module supplies its two ordered queries."""

    fetch_query: TextClause
    mark_query: TextClause

    def __init__(self, engine: Engine, chain_id: str) -> None:
        self.engine = engine
        self.chain_id = chain_id

    @abstractmethod
    def position_params(self, prefix: str, position: OutboxPosition | None) -> dict[str, Any]:
        """Bind parameters for a position in this database's queries."""

    @abstractmethod
    def row_position(self, row: Any) -> OutboxPosition: ...

    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        params = {"chain": self.chain_id, "limit": limit, **self.position_params("after", after)}
        with self.engine.connect() as conn:
            rows = conn.execute(self.fetch_query, params).all()
        return [OutboxRow(self.row_position(r), r.recorded_at_us, r.payload) for r in rows]

    def mark_through(
        self,
        position: OutboxPosition,
        relayed_at_us: int,
        after: OutboxPosition | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> int:
        params = {
            "now": relayed_at_us,
            "chain": self.chain_id,
            **self.position_params("after", after),
            **self.position_params("through", position),
        }
        with self.engine.begin() as conn:
            marked = conn.execute(self.mark_query, params).rowcount
            if checkpoint is not None:
                saved = {
                    "chain": self.chain_id,
                    "sequence": checkpoint.sequence,
                    "hash": checkpoint.record_hash,
                    "position": checkpoint.position.encode(),
                    "now": relayed_at_us,
                }
                if conn.execute(_SAVE_CHECKPOINT, saved).rowcount == 0:
                    conn.execute(_FIRST_CHECKPOINT, saved)
        return marked

    def backlog(self) -> Backlog:
        with self.engine.connect() as conn:
            count, oldest = conn.execute(_BACKLOG, {"chain": self.chain_id}).one()
        return Backlog(int(count), oldest)

    def checkpoint(self) -> Checkpoint | None:
        with self.engine.connect() as conn:
            row = conn.execute(_CHECKPOINT, {"chain": self.chain_id}).first()
        if row is None:
            return None
        return Checkpoint(row.sequence, row.hash, OutboxPosition.decode(row.position))

    def close(self) -> None:
        self.engine.dispose()
