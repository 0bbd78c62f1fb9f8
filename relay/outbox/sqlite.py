"""SQLite outbox: one writer at a time, so id order is commit order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from relay.outbox.base import OutboxPosition
from relay.outbox.sql import SQLOutboxSource


class SQLiteOutboxSource(SQLOutboxSource):
    fetch_query = text(
        "SELECT id, recorded_at_us, payload FROM flagtrail_outbox "
        "WHERE chain_id = :chain AND relayed_at_us IS NULL AND id > :after_id "
        "ORDER BY id LIMIT :limit"
    )
    mark_query = text(
        "UPDATE flagtrail_outbox SET relayed_at_us = :now WHERE chain_id = :chain "
        "AND relayed_at_us IS NULL AND id > :after_id AND id <= :through_id"
    )

    def position_params(self, prefix: str, position: OutboxPosition | None) -> dict[str, Any]:
        return {f"{prefix}_id": position.id if position else 0}

    def row_position(self, row: Any) -> OutboxPosition:
        return OutboxPosition(0, row.id)
