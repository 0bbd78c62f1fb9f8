"""The outbox table, shared by the producers (writers) and the relay (reader).

Ordering differs by database (see relay/outbox/): SQLite has one writer at a
time, so id order is commit order; PostgreSQL stamps each row with its
transaction id (``xid8``) and the relay reads only below the oldest running
transaction, so a row that commits late is never skipped.
"""

from __future__ import annotations

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


def ensure_schema(engine: Engine) -> None:
    """Create the outbox (idempotent; safe to call from every process at start)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # serialize concurrent first starts: CREATE TABLE IF NOT EXISTS races in PG
            conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
            metadata.create_all(conn)
            for statement in _POSTGRES_DDL:
                conn.execute(text(statement))
    else:
        metadata.create_all(engine)
