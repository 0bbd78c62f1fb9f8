"""Outbox.record: the one call a flag control plane makes inside its write transaction."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select

from producers.controls import controls_for_change, controls_for_rejection
from producers.errors import DuplicateEvent, InvalidChange, PolicyError
from producers.events import FlagChange, canonical_json, change_record, event_record, utc_now
from producers.identity import FileIdentityDirectory, IdentityProvider
from producers.journal import journal_for
from producers.oidc.authenticate import identity_source
from producers.oidc.replay import spend_approval, unspend_approval
from producers.oidc.tokens import TokenVerifier
from producers.policy import Policy, Violation, evaluate, load_policy
from producers.privacy import Privacy
from producers.schema import ensure_schema, outbox
from producers.vault import ensure_vault_schema

DEFAULT_CHAIN = "flag-audit"
APPROVAL_REPLAYED = Violation(
    "oidc-approval-replayed",
    "CC6.6",
    "SOC2 CC6.6: approval token refused: it was already used for a change",
)
DEFAULT_IDENTITIES = "identities.toml"


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def outbox_row(chain_id: str, record: dict[str, Any], recorded_at: datetime) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "event_id": record["event_id"],
        "recorded_at_us": _epoch_us(recorded_at),
        "payload": canonical_json(record),
    }


_INSERT_NEW: dict[str, Any] = {}  # dialect name -> the statement, built once


def _insert_new(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert ``row`` unless its event_id exists; False for a duplicate.

    ON CONFLICT DO NOTHING (SQLite and PostgreSQL) reports the duplicate without
    an error, so the caller's transaction stays usable (PostgreSQL would abort it
    on a unique violation). A concurrent insert of the same id waits for the other
    transaction and then reports the duplicate. The statement is built once per
    dialect and the row passed as parameters: building it per row cost more than
    SQLite's insert itself.
    """
    dialect = conn.dialect.name
    statement = _INSERT_NEW.get(dialect)
    if statement is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = _INSERT_NEW[dialect] = (
            dialect_insert(outbox)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(outbox.c.id)  # rowcount is -1 with implicit RETURNING on PostgreSQL
        )
    return conn.execute(statement, row).first() is not None


class Outbox:
    """Writes audit events into the transactional outbox.

    ``record`` validates the change (InvalidChange, 400), runs the write-time
    policy and inserts one row in the caller's transaction, so the flag write and
    its audit event commit or roll back together. A blocked change raises
    PolicyError (403) after making its ``rejected`` event durable, on every
    backend. An event_id already in the outbox raises DuplicateEvent (409) and
    leaves the caller's transaction usable.
    """

    def __init__(
        self,
        engine: Engine,
        identities: IdentityProvider | str | None = None,
        chain_id: str = DEFAULT_CHAIN,
        create_schema: bool = True,
        clock: Callable[[], datetime] = utc_now,
        policy: Policy | str | None = None,
        token_verifier: TokenVerifier | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self.journal = journal_for(engine)
        self.chain_id = chain_id
        self.clock = clock
        if identities is None or isinstance(identities, str):
            # the library's own default, never the CLI's settings: callers that resolved
            # settings (flagtrail.settings.Settings) pass the path
            identities = FileIdentityDirectory(
                identities or os.environ.get("FLAGTRAIL_IDENTITIES") or DEFAULT_IDENTITIES
            )
        self.identities = identities
        # who acted and approved: the directory, or the policy's [oidc] provider's tokens
        self.identity_source = identity_source(
            self.policy.oidc, identities, self.policy.limits, token_verifier
        )
        if create_schema:
            ensure_schema(engine)
            ensure_vault_schema(engine)
        self.privacy = Privacy(self)

    def record(
        self,
        conn: Connection,
        change: FlagChange,
        *,
        actor_token: str | None = None,
        approval_token: str | None = None,
    ) -> str:
        """Record ``change`` in the caller's transaction; returns the event_id.

        ``actor_token`` and ``approval_token`` are the provider's JWTs when the
        policy has an ``[oidc]`` table (producers/oidc/authenticate.py)."""
        change.validate_shape(self.policy.limits)
        env_class = self.policy.class_of(change.environment)  # undeclared: InvalidChange
        established = self.identity_source.authenticate(
            change, env_class, actor_token, approval_token
        )
        if isinstance(established, Violation):
            self.reject(conn, change, established)
        change = established.change
        violation = evaluate(change, established.identities, self.policy)
        if violation is not None:
            self.reject(conn, change, violation)
        now = self.clock()
        approval = established.approval
        if approval is not None and not spend_approval(
            conn,
            approval.issuer,
            approval.claims["jti"],
            change.event_id,
            _epoch_us(now),
            int(approval.claims["exp"] * 1_000_000),
        ):
            self.reject(conn, change, APPROVAL_REPLAYED)
        # the verified identities, not the spelling typed (aliases resolve to one), judged
        # above and only now pseudonymised for storage (producers/privacy.py)
        directory = established.identities
        actor, approver, reason = self.privacy.protect(
            conn,
            directory.resolve(change.actor) or change.actor,
            (directory.resolve(change.approver) or change.approver) if change.approver else None,
            change.reason,
        )
        record = change_record(
            change,
            chain_id=self.chain_id,
            recorded_at=now,
            action=change.action,
            controls=controls_for_change(env_class.requires_approval, change.approver),
            actor=actor,
            approver=approver,
            reason=reason,
            environment_class=env_class.name,
        )
        record["auth"] = established.auth  # how each identity was established
        if not _insert_new(conn, outbox_row(self.chain_id, record, now)):
            if approval is not None:  # the caller's transaction stays usable: unspend it
                unspend_approval(conn, approval.issuer, approval.claims["jti"])
            raise DuplicateEvent(f"event {change.event_id} is already in the outbox")
        return change.event_id

    def record_meta(self, conn: Connection, record: dict[str, Any]) -> str:
        """Insert a signed operator meta-event (gap statement, operator rotation).

        Only what an operator may write passes (see producers.meta.check_public_meta):
        rejections, quarantines, automatic rotations and export receipts are the
        relay's and the library's own, never accepted from a caller.
        """
        from producers.controls import controls_for_meta
        from producers.meta import check_public_meta

        check_public_meta(self, conn, record)
        # rebuilt from the checked parts: nothing else the caller put in the dict
        # (a mistyped recorded_at, a sequence, another chain id) reaches the relay
        rebuilt = event_record(
            event_id=record["event_id"],
            chain_id=self.chain_id,
            recorded_at=self.clock(),
            action=record["action"],
            controls=controls_for_meta(),
            actor=record["actor"],
            reason=record["meta"]["reason"],
            meta=record["meta"],
        )
        return self._insert_meta(conn, rebuilt)

    def _insert_meta(self, conn: Connection, record: dict[str, Any]) -> str:
        if not _insert_new(conn, outbox_row(self.chain_id, record, self.clock())):
            raise DuplicateEvent(f"event {record['event_id']} is already in the outbox")
        return str(record["event_id"])

    def reject(
        self,
        conn: Connection,
        change: FlagChange,
        violation: Violation,
        attempted_action: str | None = None,
    ) -> None:
        """Make the attempt's ``rejected`` event durable, then raise PolicyError."""
        now = self.clock()
        try:
            production = self.policy.class_of(change.environment).requires_approval
        except InvalidChange:  # an operator action has no environment
            production = False
        record = change_record(
            change,
            chain_id=self.chain_id,
            recorded_at=now,
            action="rejected",
            controls=controls_for_rejection(production, change.approver, violation.control),
            meta={
                "attempted_action": attempted_action or change.action,
                "rule": violation.rule,
                "control": violation.control,
                "status": PolicyError.status,
                "message": violation.message,
            },
        )
        self.privacy.protect_rejection(conn, record)
        self._write_independently(conn, record, now)
        raise PolicyError(violation.message, violation.rule, violation.control)

    @staticmethod
    def _rename(record: dict[str, Any]) -> None:
        """A rejection whose change reused a recorded event_id keeps an id of its own
        and names the one it tried, so the attempt is never lost as a duplicate."""
        record["meta"]["attempted_event_id"] = record["event_id"]
        record["event_id"] = str(uuid.uuid4())

    def _write_independently(self, conn: Connection, record: dict[str, Any], now: datetime) -> None:
        """Make ``record`` durable whatever the caller's transaction does next."""
        taken = select(outbox.c.id).where(outbox.c.event_id == record["event_id"])
        if conn.execute(taken).first() is not None:
            # the caller's own (maybe uncommitted) row holds this event_id: a second
            # connection inserting it would wait on the caller, who waits on us
            self._rename(record)
        row = outbox_row(self.chain_id, record, now)

        def write() -> None:
            with self.engine.begin() as own:
                if not _insert_new(own, row):
                    self._rename(record)
                    own.execute(insert(outbox), outbox_row(self.chain_id, record, now))

        if not _sqlite_holds_write_lock(conn):
            write()
            return
        if self.journal is not None:
            # durable now, beside the database: survives a crash of this process
            # before the caller's transaction ends (producers/journal.py)
            self.journal.append(row)
        # SQLite allows one writer and the caller holds the lock, so a second
        # connection would wait forever, and a row put in the caller's transaction
        # could be undone by a savepoint rollback. Also write it when that transaction
        # ends: into its commit if it commits, on its own right after a rollback (the
        # journal copy then folds as a no-op). The listeners live on this Connection
        # object only and go with it; the flag makes them fire once.
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
        f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT(event_id) DO NOTHING",
        [row[c] for c in columns],
    )


def _sqlite_holds_write_lock(conn: Connection) -> bool:
    if conn.dialect.name != "sqlite":
        return False
    driver = conn.connection.driver_connection
    return bool(getattr(driver, "in_transaction", False))
