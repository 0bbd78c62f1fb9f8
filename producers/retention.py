"""Retention: keep the evidence 24 months or more, and everything else no longer than needed.

- Outbox rows are a relay buffer, not evidence: a row relayed (and recorded) more
  than ``FLAGTRAIL_OUTBOX_RETENTION_DAYS`` ago (default 30) is deleted. A row not
  yet relayed is never deleted, however old: it is evidence the log does not
  hold yet (it is counted, since an old one means a stuck relay).
- Vault entries whose subject no record has named for
  ``FLAGTRAIL_VAULT_RETENTION_DAYS`` (default 730, 24 months) are crypto-shredded
  as an erasure would: their records stay valid, their names are gone.
- The log must keep at least 24 months: a Kafka topic's ``retention.ms`` is read
  through the admin client (``-1`` or 24 months and more pass); an SQLite log
  refuses DELETE and never purges. A shorter topic retention refuses the run.

A run (not ``--dry-run``) is chained as a ``retention_applied`` meta-event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, select

from producers import vault
from producers.errors import ConfigError
from producers.events import format_timestamp
from producers.schema import outbox as outbox_table

if TYPE_CHECKING:
    from producers.outbox import Outbox


@dataclass
class RetentionReport:
    dry_run: bool
    outbox_cutoff: str
    vault_cutoff: str
    log: str
    outbox_rows_purged: int = 0
    old_unrelayed_rows_kept: int = 0
    subjects_shredded: list[str] = field(default_factory=list)
    event_id: str | None = None

    def as_meta(self) -> dict[str, Any]:
        return {
            "outbox_cutoff": self.outbox_cutoff,
            "outbox_rows_purged": self.outbox_rows_purged,
            "old_unrelayed_rows_kept": self.old_unrelayed_rows_kept,
            "vault_cutoff": self.vault_cutoff,
            "subjects_shredded": self.subjects_shredded,
            "log": self.log,
        }


MAX_DAYS = 36_500  # a century: longer is a typo, and timedelta ends at 999,999,999 days


def days_setting(name: str, given: int | None) -> int:
    from flagtrail.settings import setting

    text = str(given) if given is not None else setting(name)
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:  # past it, timedelta overflows (a traceback)
        raise ConfigError(f"{name}={text!r}: give a whole number of days, 1 to {MAX_DAYS}")
    return days


def check_log_retention(log_url: str, chain_id: str) -> str:
    """One sentence on how long the log keeps records; ConfigError when under 24 months."""
    from relay.logs import open_log

    if log_url.startswith("sqlite:///"):
        return f"SQLite log {log_url}: append-only table (UPDATE and DELETE refused), never purged"
    log = open_log(log_url, chain_id, read_only=True)
    log.ensure_topic()  # type: ignore[attr-defined]  # refuses retention under 24 months
    retention = _kafka_retention_ms(log)
    kept = "forever" if retention == -1 else f"{retention // 86_400_000} days"
    return f"Kafka topic {log.topic}: retention.ms={retention} ({kept}), at least 24 months"  # type: ignore[attr-defined]


def _kafka_retention_ms(log: Any) -> int:
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = log._admin()
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, log.topic)], config_filter="all"
        )["topic"][log.topic]
    finally:
        admin.close()
    return int(configs["retention.ms"]["value"])


def apply_retention(
    outbox: Outbox,
    log_url: str,
    operator: str | None,
    *,
    dry_run: bool,
    outbox_days: int | None = None,
    vault_days: int | None = None,
    now: datetime | None = None,
) -> RetentionReport:
    from producers.identity_ops import write_event
    from producers.meta import require_operator

    moment = now or datetime.now(UTC)
    outbox_cut = moment - timedelta(
        days=days_setting("FLAGTRAIL_OUTBOX_RETENTION_DAYS", outbox_days)
    )
    vault_cut = moment - timedelta(days=days_setting("FLAGTRAIL_VAULT_RETENTION_DAYS", vault_days))
    report = RetentionReport(
        dry_run,
        format_timestamp(outbox_cut),
        format_timestamp(vault_cut),
        check_log_retention(log_url, outbox.chain_id),
    )
    if not dry_run and not operator:
        raise ConfigError("retention apply needs --actor (an operator role); --dry-run does not")
    outbox_us, vault_us = _us(outbox_cut), _us(vault_cut)
    chain = outbox_table.c.chain_id == outbox.chain_id
    old = and_(chain, outbox_table.c.recorded_at_us < outbox_us)
    relayed_old = and_(
        old,
        outbox_table.c.relayed_at_us.is_not(None),
        outbox_table.c.relayed_at_us < outbox_us,
    )
    with outbox.engine.begin() as conn:
        if operator and not dry_run:
            require_operator(outbox, conn, operator, "retention_applied")
        count = select(func.count()).select_from(outbox_table)
        report.old_unrelayed_rows_kept = conn.execute(
            count.where(old, outbox_table.c.relayed_at_us.is_(None))
        ).scalar_one()
        report.subjects_shredded = vault.stale_subjects(conn, vault_us)
        if dry_run:
            report.outbox_rows_purged = conn.execute(count.where(relayed_old)).scalar_one()
            return report
        report.outbox_rows_purged = conn.execute(delete(outbox_table).where(relayed_old)).rowcount
        report.event_id = str(uuid.uuid4())
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        at = vault.now_us()
        for subject in report.subjects_shredded:
            vault.shred(conn, subject, report.event_id, at)
        write_event(
            outbox,
            conn,
            "retention_applied",
            operator or "",
            "retention applied",
            report.as_meta(),
            report.event_id,
        )
    return report


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
