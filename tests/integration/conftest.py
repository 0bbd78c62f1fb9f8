"""The test brokers (deploy/local's and testcontainers') are single nodes: the
durability minimum is 1 and 1 there, as deploy/local/up exports for development."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_broker_durability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGTRAIL_KAFKA_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS", "1")
