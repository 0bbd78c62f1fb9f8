"""Rejections that survive a crash, and a reused event_id (issue 7, section 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from flagtrail import settings
from producers import Outbox, PolicyError
from producers.errors import EXIT_CONFLICT, DuplicateEvent
from producers.journal import journal_for
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.conftest import REPO
from tests.contracts import good_change

# A control plane that holds its write transaction open (on SQLite: the write lock),
# gets PolicyError for a blocked change, says so, and dies before the transaction ends.
CRASHING_CONTROL_PLANE = """
import sys, time
from flagtrail import settings
from producers import Outbox, PolicyError
from tests.contracts import good_change

engine = settings.make_engine(sys.argv[1])
outbox = Outbox(engine, sys.argv[2])
conn = engine.connect()
conn.begin()
outbox.record(conn, good_change(1))  # the caller's own write: it holds the lock now
try:
    outbox.record(conn, good_change(2, approver="alice@example.com"))
except PolicyError as exc:
    print("blocked:", exc, flush=True)
time.sleep(120)
"""


def payloads(engine: Engine, chain: str = "flag-audit") -> list[dict]:
    source = open_outbox_source(engine, chain)
    return [json.loads(r.payload) for r in source.fetch_pending(None, 1000)]


def kill_after_policy_error(url: str, workdir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONTROL_PLANE, url, str(workdir / "identities.toml")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("blocked: SOC2 CC8.1"), process.stderr.read()  # type: ignore[union-attr]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


class RejectionContract:
    """What every outbox database promises about rejections and reused event ids."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def engine(self, url: str) -> Engine:
        engine = settings.make_engine(url)
        yield engine
        engine.dispose()

    @pytest.fixture
    def outbox(self, engine: Engine, workdir: Path) -> Outbox:
        return Outbox(engine, str(workdir / "identities.toml"))

    def test_rejection_survives_a_crash_before_the_callers_transaction_ends(
        self, url: str, outbox: Outbox, workdir: Path
    ) -> None:
        kill_after_policy_error(url, workdir)
        (event,) = payloads(outbox.engine)  # the caller's own write died with it
        assert event["action"] == "rejected" and event["flag_key"] == "flag-2"
        assert event["meta"]["rule"] == "distinct-approver"
        with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
            relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), audit_log)
            relay.resume()
            assert relay.drain() == 1
            assert relay.drain() == 0  # folded once, relayed once

    def test_duplicate_event_id_is_409_and_the_transaction_stays_usable(
        self, outbox: Outbox
    ) -> None:
        first = good_change(1)
        with outbox.engine.begin() as conn:
            outbox.record(conn, first)
        with outbox.engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            with pytest.raises(DuplicateEvent) as raised:
                outbox.record(conn, good_change(2, event_id=first.event_id))
            assert raised.value.status == 409 and raised.value.exit_code == EXIT_CONFLICT
            assert first.event_id in str(raised.value)
            outbox.record(conn, good_change(3))  # still usable, then commits
        assert [e["flag_key"] for e in payloads(outbox.engine)] == ["flag-1", "flag-3"]

    def test_duplicate_inside_one_transaction(self, outbox: Outbox) -> None:
        change = good_change(1)
        with outbox.engine.begin() as conn:
            outbox.record(conn, change)
            with pytest.raises(DuplicateEvent):
                outbox.record(conn, change)
        assert len(payloads(outbox.engine)) == 1

    def test_a_blocked_change_reusing_an_event_id_is_still_recorded(self, outbox: Outbox) -> None:
        first = good_change(1)
        with outbox.engine.begin() as conn:
            outbox.record(conn, first)
        blocked = good_change(2, approver=None, event_id=first.event_id)
        with pytest.raises(PolicyError), outbox.engine.begin() as conn:
            outbox.record(conn, blocked)
        _, rejected = payloads(outbox.engine)
        assert rejected["action"] == "rejected" and rejected["event_id"] != first.event_id
        assert rejected["meta"]["attempted_event_id"] == first.event_id

    def test_a_blocked_change_reusing_an_id_written_in_the_same_transaction(
        self, outbox: Outbox
    ) -> None:
        """No self-deadlock: the caller's uncommitted row holds the id."""
        first = good_change(1)
        with outbox.engine.begin() as conn:
            outbox.record(conn, first)
            with pytest.raises(PolicyError):
                outbox.record(conn, good_change(2, approver=None, event_id=first.event_id))
        events = payloads(outbox.engine)
        assert sorted(e["action"] for e in events) == ["rejected", "update"]
        (rejected,) = [e for e in events if e["action"] == "rejected"]
        assert rejected["meta"]["attempted_event_id"] == first.event_id


class TestSQLiteRejections(RejectionContract):
    @pytest.fixture
    def url(self, workdir: Path) -> str:
        return f"sqlite:///{workdir / 'outbox.db'}"

    def test_the_rejection_is_on_disk_before_policy_error_is_raised(
        self, outbox: Outbox, workdir: Path
    ) -> None:
        journal = journal_for(outbox.engine)
        assert journal is not None
        with outbox.engine.begin() as conn:
            outbox.record(conn, good_change(1))  # holds the write lock
            with pytest.raises(PolicyError):
                outbox.record(conn, good_change(2, approver=None))
            (line,) = journal.path.read_text().splitlines()
            assert json.loads(json.loads(line)["payload"])["action"] == "rejected"
            # the relay's reader does not wait for the producer's lock to fold it
            started = time.monotonic()
            assert [e["flag_key"] for e in payloads(outbox.engine)] == []
            assert time.monotonic() - started < 5
        assert sorted(e["action"] for e in payloads(outbox.engine)) == ["rejected", "update"]
        assert not journal.pending()  # folded (a no-op: the commit hook wrote it too)
        assert oct(journal.path.stat().st_mode & 0o777) == "0o600"

    def test_a_torn_journal_line_is_skipped_and_never_glued_to_the_next(
        self, outbox: Outbox, workdir: Path
    ) -> None:
        kill_after_policy_error(f"sqlite:///{workdir / 'outbox.db'}", workdir)
        journal = journal_for(outbox.engine)
        assert journal is not None
        with journal.path.open("a") as f:  # a writer killed mid-line
            f.write('{"chain_id":"flag-audit","event_id":"torn","recor')
        kill_after_policy_error(f"sqlite:///{workdir / 'outbox.db'}", workdir)
        events = payloads(outbox.engine)
        assert [e["action"] for e in events] == ["rejected", "rejected"]
        assert len({e["event_id"] for e in events}) == 2
        assert payloads(outbox.engine) == events  # folding again changes nothing


@pytest.mark.integration
class TestPostgresRejections(RejectionContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url

    def test_the_rejection_is_committed_before_policy_error_is_raised(self, outbox: Outbox) -> None:
        query = text("SELECT payload FROM flagtrail_outbox")
        with outbox.engine.begin() as conn:
            outbox.record(conn, good_change(1))
            with pytest.raises(PolicyError):
                outbox.record(conn, good_change(2, approver=None))
            # seen from another connection while the caller's transaction is open
            # (the relay's reader waits for the horizon; a plain read does not)
            with outbox.engine.connect() as other:
                (payload,) = other.execute(query).scalars().all()
            assert json.loads(payload)["action"] == "rejected"
