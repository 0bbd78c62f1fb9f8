"""Reusable contract test cases, run against every backend (the eventsourcing way).

A backend's test module subclasses a contract and provides one fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from producers import FlagChange, Outbox, PolicyError
from relay.canonical import GENESIS, seal
from relay.logs.base import AuditLog, ChainConflict, LogEntry
from relay.outbox import open_outbox_source
from relay.outbox.base import OutboxPosition
from relay.relay import Relay


def good_change(n: int = 0, **overrides: object) -> FlagChange:
    fields = dict(
        actor="alice@example.com",
        approver="bob@example.com",
        role="release-manager",
        flag_key=f"flag-{n}",
        environment="production",
        action="update",
        before={"rollout": n},
        after={"rollout": n + 1},
        reason="Rollout",
        change_ref=f"CHG-{n}",
    )
    fields.update(overrides)
    return FlagChange(**fields)  # type: ignore[arg-type]


class OutboxContract:
    """What the producer library and the relay's reader promise on any database."""

    @pytest.fixture
    def engine(self) -> Engine:
        raise NotImplementedError

    @pytest.fixture
    def outbox(self, engine: Engine, workdir: Path) -> Outbox:
        return Outbox(engine, str(workdir / "identities.toml"))

    def pending(self, outbox: Outbox) -> list[dict]:
        source = open_outbox_source(outbox.engine, outbox.chain_id)
        return [json.loads(r.payload) for r in source.fetch_pending(None, 10_000)]

    def test_committed_change_is_pending_in_order(self, outbox: Outbox) -> None:
        ids = []
        for n in range(3):
            with outbox.engine.begin() as conn:
                ids.append(outbox.record(conn, good_change(n)))
        assert [r["event_id"] for r in self.pending(outbox)] == ids

    def test_rolled_back_write_leaves_no_event(self, outbox: Outbox) -> None:
        with pytest.raises(RuntimeError), outbox.engine.begin() as conn:
            outbox.record(conn, good_change())
            raise RuntimeError("the flag write failed")
        assert self.pending(outbox) == []

    def test_blocked_change_is_durable_even_though_the_write_rolls_back(
        self, outbox: Outbox
    ) -> None:
        with pytest.raises(PolicyError) as raised, outbox.engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            outbox.record(conn, good_change(approver="alice@example.com"))
        assert raised.value.status == 403
        assert str(raised.value) == (
            "SOC2 CC8.1: production flag change requires a distinct approver"
        )
        (event,) = self.pending(outbox)
        assert event["action"] == "rejected"
        assert event["meta"]["rule"] == "distinct-approver"
        assert "CC7.2" in event["soc2_controls"] and "CC8.1" in event["soc2_controls"]

    def test_blocked_change_after_an_earlier_write_in_the_same_transaction(
        self, outbox: Outbox
    ) -> None:
        """The caller already wrote (on SQLite it holds the lock): still durable."""
        with pytest.raises(PolicyError), outbox.engine.begin() as conn:
            outbox.record(conn, good_change(1))
            outbox.record(conn, good_change(2, actor="carol@example.com", role="engineer"))
        (event,) = self.pending(outbox)
        assert event["action"] == "rejected" and event["flag_key"] == "flag-2"

    def test_blocked_change_inside_a_savepoint_of_a_committing_transaction(
        self, outbox: Outbox
    ) -> None:
        with outbox.engine.begin() as conn:
            outbox.record(conn, good_change(1))
            with pytest.raises(PolicyError), conn.begin_nested():
                outbox.record(conn, good_change(2, approver=None))
        actions = [e["action"] for e in self.pending(outbox)]
        assert sorted(actions) == ["rejected", "update"]

    def test_mark_through_and_backlog(self, outbox: Outbox) -> None:
        for n in range(5):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
        source = open_outbox_source(outbox.engine, outbox.chain_id)
        rows = source.fetch_pending(None, 100)
        assert source.backlog().pending == 5
        assert source.mark_through(rows[2].position, 1) == 3
        assert source.backlog().pending == 2
        assert [r.position for r in source.fetch_pending(None, 100)] == [
            r.position for r in rows[3:]
        ]
        assert source.fetch_pending(rows[3].position, 100)[0].position == rows[4].position
        # the lower bound only narrows the scan: row 3 stays pending
        assert source.mark_through(rows[4].position, 2, after=rows[3].position) == 1
        assert [r.position for r in source.fetch_pending(None, 100)] == [rows[3].position]

    def test_rows_are_marked_relayed_only_in_their_own_chain(
        self, outbox: Outbox, workdir: Path
    ) -> None:
        other = Outbox(outbox.engine, str(workdir / "identities.toml"), chain_id="other")
        for n in range(3):
            with outbox.engine.begin() as conn:
                other.record(conn, good_change(n))
                outbox.record(conn, good_change(n))
        source = open_outbox_source(outbox.engine, outbox.chain_id)
        last = source.fetch_pending(None, 100)[-1].position
        assert source.mark_through(last, 1) == 3  # other's rows sit before ``last`` too
        assert open_outbox_source(outbox.engine, "other").backlog().pending == 3

    def test_other_chains_rows_are_not_read(self, outbox: Outbox, workdir: Path) -> None:
        other = Outbox(outbox.engine, str(workdir / "identities.toml"), chain_id="other")
        with outbox.engine.begin() as conn:
            other.record(conn, good_change())
        assert self.pending(outbox) == []


def entry(sequence: int, prev: str, ts: str, pos: int) -> LogEntry:
    record = {"sequence": sequence, "timestamp_utc": ts, "action": "update"}
    digest, line = seal(record, prev)
    return LogEntry(sequence, ts, digest, line, OutboxPosition(0, pos))


def chain_of(count: int, start_day: int = 1) -> list[LogEntry]:
    entries, prev = [], GENESIS
    for i in range(1, count + 1):
        day = start_day + (i - 1) // 3
        e = entry(i, prev, f"2026-01-{day:02d}T10:00:0{i % 3}.000000Z", i)
        entries.append(e)
        prev = e.record_hash
    return entries


class AuditLogContract:
    """What every immutable log backend promises."""

    @pytest.fixture
    def audit_log(self) -> AuditLog:
        raise NotImplementedError

    def test_empty_log_has_no_tail(self, audit_log: AuditLog) -> None:
        audit_log.claim()
        assert audit_log.tail() is None
        assert list(audit_log.read()) == []

    def test_appended_entries_read_back_in_order_with_their_positions(
        self, audit_log: AuditLog
    ) -> None:
        audit_log.claim()
        entries = chain_of(7)
        audit_log.append(entries[:4], after_sequence=0)
        audit_log.append(entries[4:], after_sequence=4)
        assert list(audit_log.read()) == entries
        assert audit_log.tail() == entries[-1]

    def test_read_window_by_time(self, audit_log: AuditLog) -> None:
        audit_log.claim()
        entries = chain_of(9)  # three entries a day, Jan 1-3
        audit_log.append(entries, after_sequence=0)
        window = list(audit_log.read("2026-01-02T00:00:00.000000Z", "2026-01-03T00:00:00.000000Z"))
        assert [e.sequence for e in window] == [4, 5, 6]
        assert list(audit_log.read("2026-02-01T00:00:00.000000Z", None)) == []

    def test_entry_at_finds_each_sequence(self, audit_log: AuditLog) -> None:
        audit_log.claim()
        entries = chain_of(9)
        for start in range(0, 9, 2):  # several transactions: markers between records
            audit_log.append(entries[start : start + 2], after_sequence=start)
        assert [audit_log.entry_at(e.sequence) for e in entries] == entries
        assert audit_log.entry_at(0) is None and audit_log.entry_at(10) is None

    def test_append_on_a_stale_tail_is_refused(self, audit_log: AuditLog) -> None:
        audit_log.claim()
        entries = chain_of(3)
        audit_log.append(entries[:2], after_sequence=0)
        with pytest.raises(ChainConflict):
            audit_log.append(entries[2:], after_sequence=0)
        assert [e.sequence for e in audit_log.read()] == [1, 2]


class RelayContract:
    """The relay over a given outbox and log: every row once, in order, chained."""

    @pytest.fixture
    def outbox(self) -> Outbox:
        raise NotImplementedError

    @pytest.fixture
    def audit_log(self) -> AuditLog:
        raise NotImplementedError

    def test_relay_chains_every_row_once_and_resumes_from_the_tail(
        self, outbox: Outbox, audit_log: AuditLog
    ) -> None:
        for n in range(25):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
        relay = Relay(open_outbox_source(outbox.engine, outbox.chain_id), audit_log, batch_size=10)
        relay.resume()
        assert relay.drain() == 25
        for n in range(25, 30):
            with outbox.engine.begin() as conn:
                outbox.record(conn, good_change(n))
        again = Relay(open_outbox_source(outbox.engine, outbox.chain_id), audit_log)
        again.resume()
        assert again.head.sequence == 25
        assert again.drain() == 5
        lines = [e.line for e in audit_log.read()]
        records = [json.loads(line) for line in lines]
        assert [r["sequence"] for r in records] == list(range(1, 31))
        assert [r["flag_key"] for r in records] == [f"flag-{n}" for n in range(30)]
        prev = GENESIS
        for r in records:
            assert r["prev_hash"] == prev
            prev = r["hash"]
        stamps = [r["timestamp_utc"] for r in records]
        assert stamps == sorted(stamps)
