"""SQLite outbox: one writer at a time, so id order is commit order."""

from __future__ import annotations

from sqlalchemy import Engine, text

from relay.outbox.base import Backlog, OutboxPosition, OutboxRow, OutboxSource

_FETCH = text(
    "SELECT id, recorded_at_us, payload FROM flagtrail_outbox "
    "WHERE chain_id = :chain AND relayed_at_us IS NULL AND id > :after "
    "ORDER BY id LIMIT :limit"
)
_MARK = text(
    "UPDATE flagtrail_outbox SET relayed_at_us = :now "
    "WHERE chain_id = :chain AND relayed_at_us IS NULL AND id > :after AND id <= :through"
)
_BACKLOG = text(
    "SELECT count(*), min(recorded_at_us) FROM flagtrail_outbox "
    "WHERE chain_id = :chain AND relayed_at_us IS NULL"
)


class SQLiteOutboxSource(OutboxSource):
    def __init__(self, engine: Engine, chain_id: str) -> None:
        self.engine = engine
        self.chain_id = chain_id

    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                _FETCH, {"chain": self.chain_id, "after": after.id if after else 0, "limit": limit}
            ).all()
        return [OutboxRow(OutboxPosition(0, r[0]), r[1], r[2]) for r in rows]

    def mark_through(
        self, position: OutboxPosition, relayed_at_us: int, after: OutboxPosition | None = None
    ) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                _MARK,
                {
                    "now": relayed_at_us,
                    "chain": self.chain_id,
                    "after": after.id if after else 0,
                    "through": position.id,
                },
            )
        return result.rowcount

    def backlog(self) -> Backlog:
        with self.engine.connect() as conn:
            count, oldest = conn.execute(_BACKLOG, {"chain": self.chain_id}).one()
        return Backlog(int(count), oldest)

    def close(self) -> None:
        self.engine.dispose()
