"""Outbox readers; ``open_outbox_source`` picks one from the engine's dialect."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producers.errors import ConfigError
from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource

if TYPE_CHECKING:
    from sqlalchemy import Engine


def open_outbox_source(engine: Engine, chain_id: str, read_only: bool = False) -> OutboxSource:
    """The relay's reader of ``chain_id``'s rows. It creates the outbox tables when
    missing, unless ``read_only`` (a reader that must never create or change a
    database): then a database without the outbox is a ConfigError."""
    from sqlalchemy import inspect

    from producers.schema import ensure_schema
    from relay.logs.base import check_chain_id
    from relay.outbox.sql import translated, where

    check_chain_id(chain_id)
    with translated(engine, "opening"):
        if not read_only:
            ensure_schema(engine)
        elif not inspect(engine).has_table("flagtrail_outbox"):
            raise ConfigError(f"outbox {where(engine)} holds no flagtrail outbox")
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
