"""Spent approval tokens: each approval ``jti`` approves one change, once.

The token's id is written in the caller's transaction, beside the change's
outbox row, so the approval is spent exactly when the change commits: a
rollback leaves it unspent, a second use (in this process, another process or
another host sharing the outbox database) finds the row and is refused. Two
concurrent uses race on the primary key; the loser waits for the winner's
transaction and then sees the conflict. Rows past ``expires_at_us`` prove
nothing more (the token itself is refused as expired) and may be purged.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import BigInteger, Column, Connection, String, Table, delete

from producers.schema import metadata

used_approvals = Table(
    "flagtrail_used_approvals",
    metadata,
    # sha256 of issuer NUL jti: fixed width whatever the provider's ids look like
    Column("token_key", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("used_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    sqlite_with_rowid=False,  # the key is the row: one B-tree, not a table and an index
)


def token_key(issuer: str, jti: str) -> str:
    return hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()


def spend_approval(
    conn: Connection, issuer: str, jti: str, event_id: str, used_at_us: int, expires_at_us: int
) -> bool:
    """Mark the approval used in the caller's transaction; False when it was used before."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = (
        dialect_insert(used_approvals)
        .values(
            token_key=token_key(issuer, jti),
            event_id=event_id,
            used_at_us=used_at_us,
            expires_at_us=expires_at_us,
        )
        .on_conflict_do_nothing(index_elements=["token_key"])
        .returning(used_approvals.c.token_key)
    )
    return conn.execute(statement).first() is not None


def unspend_approval(conn: Connection, issuer: str, jti: str) -> None:
    """Undo spend_approval in the caller's transaction (the change was not recorded)."""
    conn.execute(delete(used_approvals).where(used_approvals.c.token_key == token_key(issuer, jti)))


def purge_spent_approvals(conn: Connection, expired_before_us: int) -> int:
    """Forget approvals that expired before the given time (retention); returns rows.

    Pass now minus the policy's leeway_seconds: a token is accepted until
    exp + leeway, so its row must outlive that."""
    result = conn.execute(
        delete(used_approvals).where(used_approvals.c.expires_at_us < expired_before_us)
    )
    return result.rowcount or 0
