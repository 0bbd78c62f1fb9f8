"""Outbox readers; ``open_outbox_source`` picks one from the engine's dialect."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producers.errors import ConfigError
from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource

if TYPE_CHECKING:
    from sqlalchemy import Engine


def open_outbox_source(engine: Engine, chain_id: str) -> OutboxSource:
    from producers.schema import ensure_schema

    ensure_schema(engine)
    if engine.dialect.name == "sqlite":
        from relay.outbox.sqlite import SQLiteOutboxSource

        return SQLiteOutboxSource(engine, chain_id)
    if engine.dialect.name == "postgresql":
        from relay.outbox.postgres import PostgresOutboxSource

        return PostgresOutboxSource(engine, chain_id)
    raise ConfigError(f"no outbox reader for {engine.dialect.name}")


__all__ = [
    "Backlog",
    "Checkpoint",
    "OutboxPosition",
    "OutboxRow",
    "OutboxSource",
    "open_outbox_source",
]
