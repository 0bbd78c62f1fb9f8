"""PostgreSQL outbox: parallel writers, read in (transaction id, id) order below the horizon.

Every row carries the ``xid8`` of the transaction that inserted it. The relay
reads only rows whose transaction id is below ``pg_snapshot_xmin`` of its own
snapshot: every transaction below that horizon has finished, so no row can
still commit there later. A transaction that inserted first but commits last
holds the horizon back until it ends, so its row is read before any row of a
younger transaction and is never skipped. Writers never wait on each other
(unlike a table lock held to commit); the price is that one long-running
write transaction anywhere in the cluster delays the relay, which the lag
metric shows.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from sqlalchemy import Engine, text

from producers.schema import NOTIFY_CHANNEL
from relay.outbox.base import OutboxPosition
from relay.outbox.sql import SQLOutboxSource

_POSITION = "(CAST(CAST(:{0}_tx AS text) AS xid8), :{0}_id)"


class PostgresOutboxSource(SQLOutboxSource):
    fetch_query = text(
        "SELECT tx_id::text::bigint AS tx, id, recorded_at_us, payload FROM flagtrail_outbox "
        "WHERE chain_id = :chain AND relayed_at_us IS NULL "
        f"AND (tx_id, id) > {_POSITION.format('after')} "
        "AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) "
        # qualified names: the index order, not the bigint output column
        "ORDER BY flagtrail_outbox.tx_id, flagtrail_outbox.id LIMIT :limit"
    )
    mark_query = text(
        "UPDATE flagtrail_outbox SET relayed_at_us = :now "
        "WHERE chain_id = :chain AND relayed_at_us IS NULL "
        f"AND (tx_id, id) > {_POSITION.format('after')} "
        f"AND (tx_id, id) <= {_POSITION.format('through')}"
    )

    def __init__(self, engine: Engine, chain_id: str) -> None:
        super().__init__(engine, chain_id)
        self._listener: psycopg.Connection | None = None

    def position_params(self, prefix: str, position: OutboxPosition | None) -> dict[str, Any]:
        position = position or OutboxPosition(0, 0)
        return {f"{prefix}_tx": position.tx, f"{prefix}_id": position.id}

    def row_position(self, row: Any) -> OutboxPosition:
        return OutboxPosition(row.tx, row.id)

    def wait_for_rows(self, timeout: float) -> None:
        """LISTEN/NOTIFY wake-up on commit; the timeout is the polling fallback."""
        try:
            listener = self._listen()
            if select.select([listener.fileno()], [], [], timeout)[0]:
                # drain every queued notification: one wake-up is enough
                for _ in listener.notifies(timeout=0, stop_after=1_000):
                    pass
        except Exception:
            self._drop_listener()
            time.sleep(min(timeout, 0.5))

    def _listen(self) -> psycopg.Connection:
        if self._listener is None or self._listener.closed:
            url = self.engine.url.set(drivername="postgresql")
            conninfo = url.render_as_string(hide_password=False)
            self._listener = psycopg.connect(conninfo, autocommit=True)
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None

    def close(self) -> None:
        self._drop_listener()
        super().close()
