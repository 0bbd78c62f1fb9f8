"""Pseudonyms, the vault and retention on the real PostgreSQL server and Kafka broker."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import Engine, select, text, update

from flagtrail import settings
from producers import Outbox, PolicyError
from producers.errors import ConfigError, EvidenceError
from producers.identity_ops import erase, resolve
from producers.retention import apply_retention
from producers.schema import outbox as outbox_table
from producers.vault import vault
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.contracts import good_change
from tests.pseudonymised import alias

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(pg_url: str) -> Engine:
    engine = settings.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(pg_engine: Engine, workdir: Path) -> Outbox:
    return Outbox(pg_engine, str(workdir / "identities.toml"))


def payloads(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        found = conn.execute(select(outbox_table.c.payload).order_by(outbox_table.c.id))
        return [json.loads(r.payload) for r in found]


def test_pseudonyms_vault_and_erasure_on_postgresql(
    outbox: Outbox, pg_engine: Engine, workdir: Path
) -> None:
    with pg_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    # a rejected newcomer whose caller rolls back still resolves (its own transaction)
    with pytest.raises(PolicyError), pg_engine.begin() as conn:
        outbox.record(conn, good_change(2, actor="newcomer@evil.test"))
    change, rejected = payloads(pg_engine)
    assert change["actor"] == alias(workdir, "alice@example.com")
    found = resolve(outbox, "bob", [change["actor"], rejected["actor"]])
    assert found[rejected["actor"]].identity == "newcomer@evil.test"
    alice, bob = alias(workdir, "alice@example.com"), alias(workdir, "bob@example.com")
    with pg_engine.begin() as conn:
        swapped = {r.pseudonym: r for r in conn.execute(select(vault))}
        conn.execute(
            update(vault)
            .where(vault.c.pseudonym == bob)
            .values(wrapped_key=swapped[alice].wrapped_key, ciphertext=swapped[alice].ciphertext)
        )
    with pytest.raises(EvidenceError):
        resolve(outbox, "bob", [bob])
    with pg_engine.begin() as conn:
        conn.execute(
            update(vault)
            .where(vault.c.pseudonym == bob)
            .values(wrapped_key=swapped[bob].wrapped_key, ciphertext=swapped[bob].ciphertext)
        )
    done = erase(outbox, "bob", "alice@example.com", "DSR-7")
    assert not done.already and erase(outbox, "bob", alice, "DSR-7").already
    assert resolve(outbox, "bob", [alice])[alice].erased_at == done.erased_at
    actions = [r["action"] for r in payloads(pg_engine)]
    assert actions.count("identity_erased") == 1 and "identity_resolved" in actions


def test_concurrent_first_sight_of_one_subject(pg_engine: Engine, workdir: Path) -> None:
    outboxes = [Outbox(pg_engine, str(workdir / "identities.toml")) for _ in range(4)]
    with pg_engine.begin() as conn:  # decide the chain's mode and make the keys once
        outboxes[0].record(
            conn, good_change(0, actor="carol@example.com", role="engineer", environment="staging")
        )
    errors: list[BaseException] = []

    def write(slot: int) -> None:
        try:
            with pg_engine.begin() as conn:
                outboxes[slot].record(conn, good_change(slot + 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with pg_engine.connect() as conn:
        subjects = conn.execute(select(vault.c.pseudonym)).scalars().all()
    people = ("alice@example.com", "bob@example.com", "carol@example.com")
    assert sorted(subjects) == sorted(alias(workdir, who) for who in people)


def test_retention_reads_the_kafka_topic_and_refuses_a_short_one(
    outbox: Outbox, pg_engine: Engine, kafka_url: str, services
) -> None:
    with pg_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    with open_log(kafka_url) as audit_log:
        relay = Relay(open_outbox_source(pg_engine, outbox.chain_id), audit_log)
        relay.resume()
        relay.drain()
    report = apply_retention(outbox, kafka_url, None, dry_run=True)
    assert "retention.ms=-1 (forever)" in report.log
    short = f"short-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_servers.split(","))
    try:
        admin.create_topics(
            [NewTopic(short, 1, 1, topic_configs={"retention.ms": str(7 * 86_400_000)})]
        )
    finally:
        admin.close()
    short_url = f"kafka://{services.kafka_servers}/{short}"
    with pytest.raises(ConfigError, match="at least 24 months"):
        apply_retention(outbox, short_url, "bob", dry_run=False, outbox_days=1)
    with pg_engine.connect() as conn:  # refused before anything was purged or chained
        assert conn.execute(text("SELECT count(*) FROM flagtrail_outbox")).scalar_one() == 1
