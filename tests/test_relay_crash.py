"""SIGKILL the embedded relay during a 20,000-change drain: nothing lost, nothing twice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import text

from flagtrail import settings
from relay.logs import open_log
from tests.conftest import run_cli
from tests.crash import check_chain, kill_repeatedly

pytestmark = pytest.mark.slow


def test_sigkill_during_drain_loses_and_repeats_nothing(workdir: Path) -> None:
    loaded = run_cli("loadgen", "--events", "20000", "--per-transaction", "500", cwd=workdir)
    assert loaded.returncode == 0, loaded.stderr
    engine = settings.make_engine("sqlite:///outbox.db")

    def relayed() -> int:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM flagtrail_outbox WHERE relayed_at_us IS NOT NULL")
            ).scalar()

    progress = kill_repeatedly(workdir, 6, random.Random(11), relayed, "--batch-size", "25")
    assert sum(1 for n in progress if n < 20000) >= 5, progress  # killed mid-drain
    finished = run_cli("relay", "--once", cwd=workdir)
    assert finished.returncode == 0, finished.stderr

    with engine.connect() as conn:
        outbox_ids = [
            r[0]
            for r in conn.execute(
                text("SELECT json_extract(payload, '$.event_id') FROM flagtrail_outbox ORDER BY id")
            )
        ]
        unmarked = conn.execute(
            text("SELECT count(*) FROM flagtrail_outbox WHERE relayed_at_us IS NULL")
        ).scalar()
    with open_log("sqlite:///log.db") as audit_log:
        records = check_chain(e.line for e in audit_log.read())
    assert len(outbox_ids) == 20000
    assert [r["event_id"] for r in records] == outbox_ids  # each once, in commit order
    assert [r["sequence"] for r in records] == list(range(1, 20001))
    assert unmarked == 0
