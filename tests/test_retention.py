"""flagtrail retention apply: relayed rows go, unrelayed rows stay, stale names are shredded.

Attackers and accidents written down here: a relay stuck for months (its old,
unrelayed rows are evidence and must survive any purge); a dry run that must
change nothing; a purge run by someone without an operator role.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from producers import Outbox, PolicyError
from producers.errors import ConfigError
from producers.identity_ops import resolve
from producers.retention import apply_retention
from producers.schema import outbox as outbox_table
from producers.vault import vault
from relay.verify import verify_export
from tests.conftest import run_cli
from tests.contracts import good_change
from tests.pseudonymised import alias
from tests.test_operations import export_today, log_records, relay_once, seed_snippet

DAY_US = 86_400_000_000


@pytest.fixture
def outbox(sqlite_engine: Engine, workdir: Path) -> Outbox:
    return Outbox(sqlite_engine, str(workdir / "identities.toml"))


def rows(engine: Engine) -> list[tuple[str, bool]]:
    """(flag_key, relayed?) of every outbox row, in id order."""
    with engine.connect() as conn:
        found = conn.execute(
            select(outbox_table.c.payload, outbox_table.c.relayed_at_us).order_by(outbox_table.c.id)
        )
        return [(json.loads(r.payload)["flag_key"], r.relayed_at_us is not None) for r in found]


def age(engine: Engine, flag_keys: list[str], days: int) -> None:
    """Move rows ``days`` into the past (recorded and, when relayed, relayed)."""
    shift = days * DAY_US
    with engine.begin() as conn:
        for row in conn.execute(select(outbox_table.c.id, outbox_table.c.payload)).all():
            if json.loads(row.payload)["flag_key"] in flag_keys:
                conn.execute(
                    update(outbox_table)
                    .where(outbox_table.c.id == row.id)
                    .values(
                        recorded_at_us=outbox_table.c.recorded_at_us - shift,
                        relayed_at_us=outbox_table.c.relayed_at_us - shift,
                    )
                )


def test_relayed_old_rows_go_and_unrelayed_old_rows_stay(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    for n in range(3):
        with sqlite_engine.begin() as conn:
            outbox.record(conn, good_change(n))
    relay_once(workdir)
    with sqlite_engine.begin() as conn:  # recorded while the relay was stuck
        outbox.record(conn, good_change(3))
    age(sqlite_engine, ["flag-0", "flag-1", "flag-3"], days=45)
    dry = run_cli("retention", "apply", "--dry-run", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    assert "would purge 2 relayed rows" in dry.stdout and "kept 1 older rows" in dry.stdout
    assert "SQLite log" in dry.stdout and "never purged" in dry.stdout
    assert len(rows(sqlite_engine)) == 4  # the dry run changed nothing
    done = run_cli("retention", "apply", "--actor", "bob", cwd=workdir)
    assert done.returncode == 0 and "purged 2 relayed rows" in done.stdout, done.stderr
    left = rows(sqlite_engine)
    assert ("flag-2", True) in left and ("flag-3", False) in left  # recent; unrelayed
    assert not any(key in ("flag-0", "flag-1") for key, _ in left)
    relay_once(workdir)  # the stuck row and the retention event reach the chain
    records = log_records()
    assert [r["flag_key"] for r in records[:4]] == ["flag-0", "flag-1", "flag-2", "flag-3"]
    applied = records[-1]
    assert applied["action"] == "retention_applied"
    assert applied["actor"] == alias(workdir, "bob@example.com")
    assert applied["meta"]["outbox_rows_purged"] == 2
    assert applied["meta"]["old_unrelayed_rows_kept"] == 1
    paths, _ = export_today(workdir, rsa_keys)
    assert verify_export(paths.jsonl, rsa_keys / "audit-public.pem").ok
    assert "Chain intact" in seed_snippet(paths.jsonl)


def test_retention_needs_an_operator_and_an_actor(outbox: Outbox, workdir: Path) -> None:
    with outbox.engine.begin() as conn:
        outbox.record(conn, good_change(1))
    missing = run_cli("retention", "apply", cwd=workdir)
    assert missing.returncode == 2 and "--actor" in missing.stderr
    with pytest.raises(PolicyError, match="operator role"):
        apply_retention(outbox, "sqlite:///log.db", "carol@example.com", dry_run=False)
    bad = run_cli("retention", "apply", "--dry-run", "--outbox-days", "0", cwd=workdir)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    with pytest.raises(ConfigError, match="whole number of days"):
        apply_retention(outbox, "sqlite:///log.db", None, dry_run=True, vault_days=-3)


def test_subjects_unused_past_the_vault_retention_are_shredded(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1, approver="bob@example.com"))
    later = datetime.now(UTC) + timedelta(days=800)
    with sqlite_engine.begin() as conn:  # bob keeps working; alice left long ago
        conn.execute(
            update(vault)
            .where(vault.c.pseudonym == alias(workdir, "bob@example.com"))
            .values(last_seen_us=int(later.timestamp() * 1_000_000))
        )
    report = apply_retention(outbox, "sqlite:///log.db", "bob", dry_run=False, now=later)
    assert report.subjects_shredded == [alias(workdir, "alice@example.com")]
    found = resolve(outbox, "bob", [alias(workdir, "alice@example.com")])
    assert found[alias(workdir, "alice@example.com")].erased_at is not None
    with sqlite_engine.connect() as conn:
        erased = conn.execute(
            select(func.count()).select_from(vault).where(vault.c.erased_at_us.is_not(None))
        ).scalar_one()
    assert erased == 1  # bob still resolves
    assert resolve(outbox, "bob", [alias(workdir, "bob@example.com")])


def test_retention_touches_only_its_own_chain(sqlite_engine: Engine, workdir: Path) -> None:
    mine = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    other = Outbox(sqlite_engine, str(workdir / "identities.toml"), chain_id="other")
    for box in (mine, other):
        with sqlite_engine.begin() as conn:
            box.record(conn, good_change(0))
    with sqlite_engine.begin() as conn:  # both relayed long ago
        conn.execute(
            update(outbox_table).values(
                recorded_at_us=outbox_table.c.recorded_at_us - 90 * DAY_US,
                relayed_at_us=outbox_table.c.recorded_at_us - 90 * DAY_US,
            )
        )
    report = apply_retention(mine, "sqlite:///log.db", "bob", dry_run=False)
    assert report.outbox_rows_purged == 1
    with sqlite_engine.connect() as conn:
        chains = conn.execute(select(outbox_table.c.chain_id)).scalars().all()
    assert sorted(chains) == ["flag-audit", "other"]  # other's row, and mine's event
