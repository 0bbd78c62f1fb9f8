"""The outbox table, shared by the producers (writers) and the relay (reader).

Ordering differs by database (see relay/outbox/): SQLite has one writer at a
time, so id order is commit order; PostgreSQL stamps each row with its
transaction id (``xid8``) and the relay reads only below the oldest running
transaction, so a row that commits late is never skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.exc import OperationalError

metadata = MetaData()

OUTBOX_TABLE = "flagtrail_outbox"
NOTIFY_CHANNEL = "flagtrail_outbox"

outbox = Table(
    OUTBOX_TABLE,
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("chain_id", String(200), nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
    # microseconds since the epoch, producer's clock: the lag metric reads it
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    Column("relayed_at_us", BigInteger, nullable=True),
    Index(
        "ix_flagtrail_outbox_pending",
        "chain_id",
        "id",
        sqlite_where=text("relayed_at_us IS NULL"),
        postgresql_where=text("relayed_at_us IS NULL"),
    ),
    sqlite_autoincrement=True,
)

# The relay's checkpoint, written in the same transaction that marks rows relayed:
# the head it last committed. If the log is ever lost, the sentinel_rotation that
# starts the next epoch names this head.
relay_state = Table(
    "flagtrail_relay_state",
    metadata,
    Column("chain_id", String(200), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("position", String(64), nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

_POSTGRES_DDL = [
    # commit-order stamp: every row of a transaction gets the same xid8
    f"ALTER TABLE {OUTBOX_TABLE} ADD COLUMN IF NOT EXISTS tx_id xid8 NOT NULL "
    "DEFAULT pg_current_xact_id()",
    f"CREATE INDEX IF NOT EXISTS ix_flagtrail_outbox_pending_pg ON {OUTBOX_TABLE} "
    "(chain_id, tx_id, id) WHERE relayed_at_us IS NULL",
    f"""CREATE OR REPLACE FUNCTION flagtrail_outbox_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    f"""CREATE OR REPLACE TRIGGER flagtrail_outbox_notify AFTER INSERT ON {OUTBOX_TABLE}
FOR EACH STATEMENT EXECUTE FUNCTION flagtrail_outbox_notify()""",
]


def create_tables(
    engine: Engine, tables: MetaData, lock_id: int, postgres_ddl: Sequence[str] = ()
) -> None:
    """``tables.create_all`` that processes starting together cannot race (two relays
    of one chain, a relay and `flagtrail serve`): PostgreSQL serializes them on an
    advisory lock (CREATE TABLE IF NOT EXISTS races there); on SQLite a table made by
    another process between create_all's check and its CREATE is simply there."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            tables.create_all(conn)
            for statement in postgres_ddl:
                conn.execute(text(statement))
        return
    for attempt in range(CREATE_ATTEMPTS):
        try:
            tables.create_all(engine)
            return
        except OperationalError as exc:
            if "already exists" not in str(exc) or attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


CREATE_ATTEMPTS = 5
# advisory lock ids of create_tables, one per set of tables
OUTBOX_LOCK, TOKENS_LOCK, VAULT_LOCK, TREE_LOCK, COSIGNATURES_LOCK, STAMPS_LOCK = (
    4242001,
    4242002,
    4242009,
    4242010,
    4242011,
    4242012,
)
SOURCES_LOCK, FLAG_STORE_LOCK = 4242013, 4242014


def ensure_schema(engine: Engine) -> None:
    """Create the outbox (idempotent; safe to call from every process at start)."""
    create_tables(engine, metadata, OUTBOX_LOCK, _POSTGRES_DDL)
