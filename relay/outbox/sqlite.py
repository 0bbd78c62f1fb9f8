"""SQLite outbox: one writer at a time, so id order is commit order.

Before each fetch the reader folds the rejection journal (producers/journal.py)
into the outbox: a ``rejected`` event made durable beside the database while a
producer held the write lock, whose process died before that transaction ended.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from producers.journal import journal_for
from relay.outbox.base import Backlog, OutboxPosition, OutboxRow
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

    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        self._fold_journal()
        return super().fetch_pending(after, limit)

    def backlog(self) -> Backlog:
        self._fold_journal()
        return super().backlog()

    def _fold_journal(self) -> None:
        journal = journal_for(self.engine)
        if journal is not None and journal.pending():
            journal.fold(self.engine)
