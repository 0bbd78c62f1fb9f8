"""What every SQL outbox shares: backlog, checkpoint, marking; a database module adds
its two ordered queries. Kept apart from base.py so that readers of positions and
entries (such as `flagtrail verify`) never import SQLAlchemy."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from sqlalchemy import Engine, TextClause, text

from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource

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
