"""Attacks on the receipts' outbox on a real PostgreSQL: one cached insert statement per
dialect serves a SQLite and a PostgreSQL outbox in one process, from threads that all
use it first at once; and an outbox another session holds locked must fail a pull's
receipt in bounded time, never hang the pull (and every pull queued behind it)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from flagtrail.api import receipts
from flagtrail.api.receipts import ReceiptWriter
from flagtrail.settings import make_engine
from producers import outbox as outbox_module
from producers.events import event_record, utc_now
from producers.identity import SAMPLE_DIRECTORY
from producers.outbox import Outbox, outbox_row

pytestmark = pytest.mark.integration


def outboxes(tmp_path: Path, pg_url: str) -> list[Outbox]:
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    ids = str(tmp_path / "identities.toml")
    return [
        Outbox(make_engine(f"sqlite:///{tmp_path / 'outbox.db'}"), ids),
        Outbox(make_engine(pg_url), ids),
    ]


def test_one_cached_insert_serves_sqlite_and_postgresql_from_racing_threads(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "_INSERT_NEW", {})  # first use happens in the race
    boxes = outboxes(tmp_path, pg_url)
    records = [
        event_record(
            event_id=str(uuid.uuid4()),
            chain_id=boxes[0].chain_id,
            recorded_at=utc_now(),
            action="evidence_exported",
            controls=["CC7.2"],
            actor="api-token:race",
            reason="race",
            meta={"n": n},
        )
        for n in range(8)
    ]
    start = threading.Barrier(16)
    inserted: list[tuple[int, int, bool]] = []

    def insert(box: int, n: int) -> None:
        start.wait()
        with boxes[box].engine.begin() as conn:
            row = outbox_row(boxes[box].chain_id, records[n], utc_now())
            inserted.append((box, n, outbox_module._insert_new(conn, row)))

    threads = [threading.Thread(target=insert, args=(b, n)) for b in (0, 1) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(inserted) == [(b, n, True) for b in (0, 1) for n in range(8)]
    for box in boxes:  # each row once, in its own database; a second insert is refused
        with box.engine.begin() as conn:
            count = conn.execute(text("SELECT count(*) FROM flagtrail_outbox")).scalar()
            again = outbox_module._insert_new(conn, outbox_row(box.chain_id, records[0], utc_now()))
        assert (count, again) == (8, False)


def test_a_receipt_on_a_locked_postgresql_outbox_fails_in_bounded_time(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receipts, "LOCK_WAIT_S", 1, raising=False)
    writer = ReceiptWriter(outboxes(tmp_path, pg_url)[1])
    writer.write("warm", "/v1/export", {})
    other = create_engine(pg_url).connect()
    lock = other.begin()
    other.execute(text("LOCK TABLE flagtrail_outbox IN ACCESS EXCLUSIVE MODE"))
    result: list[object] = []

    def pull() -> None:
        try:
            result.append(writer.write("blocked", "/v1/export", {"outcome": "complete"}))
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=pull)
    thread.start()
    thread.join(15)
    hung = thread.is_alive()
    lock.rollback()
    other.close()
    thread.join(30)
    assert not hung, "the receipt waited on the lock for as long as it was held"
    assert isinstance(result[0], Exception), result
    assert isinstance(writer.write("after", "/v1/export", {}), str)
