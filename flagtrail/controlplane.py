"""A minimal flag store standing in for a control plane in the demo and load generator.

It shows the producer contract: the flag write and ``Outbox.record`` share one
transaction, so the audit event exists exactly when the flag change does.
"""

from __future__ import annotations

import json

from sqlalchemy import Column, Connection, MetaData, String, Table, Text, select, update

from producers import FlagChange, Outbox
from producers.schema import FLAG_STORE_LOCK, create_tables

_metadata = MetaData()
flags = Table(
    "demo_flags",
    _metadata,
    Column("flag_key", String(200), primary_key=True),
    Column("environment", String(100), primary_key=True),
    Column("state", Text, nullable=False),
)


def ensure_flag_store(outbox: Outbox) -> None:
    create_tables(outbox.engine, _metadata, FLAG_STORE_LOCK)


def current_state(conn: Connection, flag_key: str, environment: str) -> object:
    row = conn.execute(
        select(flags.c.state).where(
            flags.c.flag_key == flag_key, flags.c.environment == environment
        )
    ).first()
    return json.loads(row[0]) if row else None


def apply_change(conn: Connection, outbox: Outbox, change: FlagChange, **tokens: str | None) -> str:
    """Audit first (the policy runs before any write), then write the flag.

    ``tokens``: actor_token / approval_token for an [oidc] policy (Outbox.record)."""
    event_id = outbox.record(conn, change, **tokens)
    where = (flags.c.flag_key == change.flag_key, flags.c.environment == change.environment)
    if change.action == "delete":
        conn.execute(flags.delete().where(*where))
    elif (
        conn.execute(update(flags).where(*where).values(state=json.dumps(change.after))).rowcount
        == 0
    ):
        conn.execute(
            flags.insert().values(
                flag_key=change.flag_key,
                environment=change.environment,
                state=json.dumps(change.after),
            )
        )
    return event_id
