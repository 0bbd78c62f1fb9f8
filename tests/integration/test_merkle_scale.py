"""Issue 10 on the scale path: the tree of a Kafka log lives in PostgreSQL (the outbox's
database); the relay keeps it, the export proves from it, verify checks the proofs."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from flagtrail import settings
from relay.logs import open_log
from relay.tree import check_against_log, open_store
from relay.verify import render
from tests.test_merkle import Chain

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(pg_url: str) -> Engine:
    engine = settings.make_engine(pg_url)
    yield engine
    engine.dispose()


def test_a_kafka_chain_with_its_tree_in_postgresql(
    pg_engine: Engine, pg_url: str, kafka_url: str, workdir: Path, rsa_keys: Path
) -> None:
    chain = Chain(pg_engine, workdir, rsa_keys, log_url=kafka_url, tree_url=pg_url)
    assert settings.tree_url(kafka_url) == settings.outbox_url()  # the default: the outbox
    chain.record(300)
    old, _ = chain.export(date(2026, 3, 2), date(2026, 3, 20), "old")
    chain.record(100)
    new, _ = chain.export(date(2026, 3, 21), date(2026, 4, 20), "new", previous=old.manifest)
    report = chain.verify(new, previous=old.manifest)
    assert report.exit_code == 0, render(report)
    assert "extends the previous export's checkpoint (size 300)" in report.merkle
    store = open_store(pg_url, chain.chain, read_only=True)
    with open_log(kafka_url, chain.chain, read_only=True) as audit_log:
        assert "matches the log's 400 records" in check_against_log(audit_log, store)
    assert store.complete_size() == 256
    store.close()
