"""What the tables kept beside signed checkpoints share (relay.tree's checkpoints,
relay.witness.cosignatures, relay.checkpoint_stamps): the key a checkpoint's rows
carry, and SQLite triggers that make a table append-only."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, MetaData, String

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


def create_append_only(engine: Engine, metadata: MetaData, triggers: list[str]) -> None:
    """Create the tables, and on SQLite the triggers."""
    metadata.create_all(engine)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            for statement in triggers:
                conn.exec_driver_sql(statement)
