"""Outbox.record: the one call a flag control plane makes inside its write transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, event, insert

from producers.controls import controls_for_change, controls_for_rejection
from producers.errors import PolicyError
from producers.events import FlagChange, canonical_json, event_record, utc_now
from producers.identity import FileIdentityDirectory, IdentityProvider
from producers.policy import Violation, evaluate
from producers.schema import ensure_schema, outbox

DEFAULT_CHAIN = "flag-audit"


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def outbox_row(chain_id: str, record: dict[str, Any], recorded_at: datetime) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "event_id": record["event_id"],
        "recorded_at_us": _epoch_us(recorded_at),
        "payload": canonical_json(record),
    }


class Outbox:
    """Writes audit events into the transactional outbox.

    ``record`` runs the write-time policy and inserts one row in the caller's
    transaction, so the flag write and its audit event commit or roll back
    together. A blocked change raises PolicyError after making its ``rejected``
    event durable in a transaction of its own.
    """

    def __init__(
        self,
        engine: Engine,
        identities: IdentityProvider | str | None = None,
        chain_id: str = DEFAULT_CHAIN,
        create_schema: bool = True,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.clock = clock
        if identities is None or isinstance(identities, str):
            from flagtrail.settings import identities_path

            identities = FileIdentityDirectory(identities or identities_path())
        self.identities = identities
        if create_schema:
            ensure_schema(engine)

    def record(self, conn: Connection, change: FlagChange) -> str:
        """Record ``change`` in the caller's transaction; returns the event_id."""
        change.validate_shape()
        violation = evaluate(change, self.identities)
        if violation is not None:
            self._reject(conn, change, violation)
        now = self.clock()
        record = event_record(
            event_id=change.event_id,
            chain_id=self.chain_id,
            recorded_at=now,
            action=change.action,
            controls=controls_for_change(change.environment, change.approver),
            actor=change.actor,
            approver=change.approver,
            role=change.role,
            flag_key=change.flag_key,
            environment=change.environment,
            before=change.before,
            after=change.after,
            reason=change.reason,
            change_ref=change.change_ref,
        )
        conn.execute(insert(outbox), outbox_row(self.chain_id, record, now))
        return change.event_id

    def record_meta(self, conn: Connection, record: dict[str, Any]) -> str:
        """Insert an already-built meta-event record (gap documentation, rotation)."""
        conn.execute(insert(outbox), outbox_row(self.chain_id, record, self.clock()))
        return str(record["event_id"])

    def _reject(self, conn: Connection, change: FlagChange, violation: Violation) -> None:
        now = self.clock()
        record = event_record(
            event_id=change.event_id,
            chain_id=self.chain_id,
            recorded_at=now,
            action="rejected",
            controls=controls_for_rejection(change.environment, change.approver, violation.control),
            actor=change.actor,
            approver=change.approver,
            role=change.role,
            flag_key=change.flag_key,
            environment=change.environment,
            before=change.before,
            after=change.after,
            reason=change.reason,
            change_ref=change.change_ref,
            meta={
                "attempted_action": change.action,
                "rule": violation.rule,
                "control": violation.control,
                "status": PolicyError.status,
                "message": violation.message,
            },
        )
        row = outbox_row(self.chain_id, record, now)
        self._write_independently(conn, row)
        raise PolicyError(violation.message, violation.rule, violation.control)

    def _write_independently(self, conn: Connection, row: dict[str, Any]) -> None:
        """Make ``row`` durable whatever the caller's failing transaction does."""

        def write() -> None:
            with self.engine.begin() as own:
                own.execute(insert(outbox), row)

        if not _sqlite_holds_write_lock(conn):
            write()
            return

        # SQLite allows one writer and the caller holds the lock, so a second
        # connection would wait forever, and a row put in the caller's transaction
        # could be undone by a savepoint rollback. Write it when that transaction
        # ends: into its commit if it commits, on its own right after a rollback.
        # The listeners live on this Connection object only and go with it; the
        # flag makes them fire once, for whichever end comes first.
        pending = [row]

        def on_commit(committing: Connection) -> None:
            if pending:
                _raw_sqlite_insert(committing, pending.pop())

        def on_rollback(rolled_back: Connection) -> None:
            if pending:
                pending.pop()
                rolled_back.connection.driver_connection.rollback()
                write()

        event.listen(conn, "rollback", on_rollback)
        event.listen(conn, "commit", on_commit)


def _raw_sqlite_insert(conn: Connection, row: dict[str, Any]) -> None:
    """Insert on the DBAPI connection (inside a commit hook, SQLAlchemy is mid-commit)."""
    columns = list(row)
    conn.connection.driver_connection.execute(
        f"INSERT INTO {outbox.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})",
        [row[c] for c in columns],
    )


def _sqlite_holds_write_lock(conn: Connection) -> bool:
    if conn.dialect.name != "sqlite":
        return False
    driver = conn.connection.driver_connection
    return bool(getattr(driver, "in_transaction", False))
