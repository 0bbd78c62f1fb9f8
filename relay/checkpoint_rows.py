"""What the stores kept beside signed checkpoints share (relay.tree,
relay.witness.cosignatures, relay.checkpoint_stamps): the key a checkpoint's rows
carry, SQLite triggers that make a table append-only, and how the tables are opened."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, inspect
from sqlalchemy.exc import SQLAlchemyError

from producers.errors import BackendUnavailable
from producers.schema import create_tables
from relay.proofs.checkpoint import parse_checkpoint, signed_time
from relay.proofs.note import split_note


def key_columns() -> list[Column]:
    """(chain_id, tree_size, signed_at): a chain's checkpoint; new Column objects per table."""
    return [
        Column("chain_id", String(64), primary_key=True),
        Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
        Column("signed_at", String(32), primary_key=True),
    ]


def note_key(note: bytes) -> tuple[int, str]:
    """The tree size and signing time of a signed checkpoint note, as its rows are keyed."""
    checkpoint = parse_checkpoint(split_note(note)[0])
    return checkpoint.size, signed_time(checkpoint) or ""


def append_only_triggers(tables: tuple[str, ...], what: str) -> list[str]:
    """SQLite triggers refusing UPDATE and DELETE; ``what`` begins the refusal message."""
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_refuses_{verb.lower()} BEFORE {verb} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'flagtrail {what} append-only: {verb} refused'); END"
        for table in tables
        for verb in ("UPDATE", "DELETE")
    ]


def open_tables(
    engine: Engine,
    metadata: MetaData,
    *,
    read_only: bool,
    what: str,
    lock_id: int,
    triggers: Sequence[str] = (),
) -> bool:
    """Whether the metadata's tables exist: read-only only looks (a reader never creates);
    otherwise creates them (create_tables: relays starting together cannot race), and on
    SQLite the triggers. One sentence if the database fails."""
    try:
        if read_only:
            return set(metadata.tables) <= set(inspect(engine).get_table_names())
        create_tables(engine, metadata, lock_id)
        if engine.dialect.name == "sqlite":
            with engine.begin() as conn:
                for statement in triggers:
                    conn.exec_driver_sql(statement)
        return True
    except SQLAlchemyError as exc:
        raise BackendUnavailable(f"the {what} cannot be opened: {exc}") from exc
