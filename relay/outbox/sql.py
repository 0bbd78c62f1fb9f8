"""What every SQL outbox shares: backlog, checkpoint, marking; a database module adds
its two ordered queries. Kept apart from base.py so that readers of positions and
entries (such as `flagtrail verify`) never import SQLAlchemy."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, TextClause, exc, text

from producers.errors import BackendUnavailable, ConfigError, FlagtrailError
from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource

# driver messages that no wait will fix: a person must change a setting or the database
_NOT_RETRIABLE = (
    "authentication failed",
    "password",
    "role ",
    "does not exist",
    "no such table",
    "no such column",
    "permission denied",
    "readonly database",
    "unable to open database file",
    "read-only transaction",
    "not a database",
    "malformed",
    "invalid dsn",
    "invalid connection option",
)

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


def translate(error: BaseException, where: str, doing: str) -> FlagtrailError:
    """A driver's error (SQLAlchemy over psycopg or sqlite3) at the outbox's edge, as one
    sentence: BackendUnavailable (retriable: refused, locked, timed out, dropped) or
    ConfigError (not retriable: bad URL, missing table, authentication)."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    reason = lines[0] if lines else type(original).__name__
    if isinstance(error, exc.ProgrammingError | exc.IntegrityError | exc.ArgumentError) or any(
        word in reason.lower() for word in _NOT_RETRIABLE
    ):
        return ConfigError(f"outbox {where} cannot be used ({doing}): {reason}")
    if isinstance(error, exc.DBAPIError | exc.DisconnectionError | exc.TimeoutError | OSError):
        return BackendUnavailable(f"outbox {where} is unavailable ({doing}): {reason}")
    return ConfigError(f"outbox {where} cannot be used ({doing}): {reason}")


def where(engine: Engine) -> str:
    """The outbox's URL with its password hidden."""
    return engine.url.render_as_string(hide_password=True)


@contextlib.contextmanager
def translated(engine: Engine, doing: str) -> Iterator[None]:
    try:
        yield
    except FlagtrailError:
        raise
    except (exc.SQLAlchemyError, OSError) as error:
        raise translate(error, where(engine), doing) from error


class SQLOutboxSource(OutboxSource):
    """What every SQL outbox shares; a database module supplies its two ordered queries."""

    fetch_query: TextClause
    mark_query: TextClause

    def __init__(self, engine: Engine, chain_id: str) -> None:
        from relay.logs.base import check_chain_id

        self.engine = engine
        self.chain_id = check_chain_id(chain_id)

    @abstractmethod
    def position_params(self, prefix: str, position: OutboxPosition | None) -> dict[str, Any]:
        """Bind parameters for a position in this database's queries."""

    @abstractmethod
    def row_position(self, row: Any) -> OutboxPosition: ...

    def fetch_pending(self, after: OutboxPosition | None, limit: int) -> list[OutboxRow]:
        params = {"chain": self.chain_id, "limit": limit, **self.position_params("after", after)}
        with translated(self.engine, "reading pending rows"), self.engine.connect() as conn:
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
        with translated(self.engine, "marking rows relayed"), self.engine.begin() as conn:
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
        with translated(self.engine, "counting the backlog"), self.engine.connect() as conn:
            count, oldest = conn.execute(_BACKLOG, {"chain": self.chain_id}).one()
        return Backlog(int(count), oldest)

    def checkpoint(self) -> Checkpoint | None:
        with translated(self.engine, "reading the checkpoint"), self.engine.connect() as conn:
            row = conn.execute(_CHECKPOINT, {"chain": self.chain_id}).first()
        if row is None:
            return None
        return Checkpoint(row.sequence, row.hash, OutboxPosition.decode(row.position))

    def close(self) -> None:
        self.engine.dispose()
