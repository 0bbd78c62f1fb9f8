"""Receipts of pulls: committed in groups, each pull told of its own, none lost."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from flagtrail.api.receipts import ReceiptWriter
from flagtrail.settings import make_engine
from producers.identity import SAMPLE_DIRECTORY
from producers.outbox import Outbox


@pytest.fixture
def writer(tmp_path: Path) -> ReceiptWriter:
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    return ReceiptWriter(Outbox(engine, str(tmp_path / "identities.toml")))


def chained(tmp_path: Path) -> list[dict]:
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        rows = db.execute("SELECT payload FROM flagtrail_outbox ORDER BY id").fetchall()
    return [json.loads(p) for (p,) in rows]


def write_all(writer: ReceiptWriter, tokens: list[str]) -> dict[str, str | Exception]:
    results: dict[str, str | Exception] = {}
    start = threading.Barrier(len(tokens))

    def one(token: str) -> None:
        start.wait()
        try:
            results[token] = writer.write(token, "/v1/export", {"outcome": "complete"})
        except Exception as exc:
            results[token] = exc

    threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_pulls_share_commits_and_each_gets_its_own_receipt(
    writer: ReceiptWriter, tmp_path: Path
) -> None:
    commits = []
    event.listen(writer.outbox.engine, "commit", lambda conn: commits.append(1))
    tokens = [f"ci-{n}" for n in range(40)]
    results = write_all(writer, tokens)
    assert all(isinstance(results[t], str) for t in tokens), results
    rows = {r["event_id"]: r for r in chained(tmp_path)}
    assert {rows[results[t]]["meta"]["token"] for t in tokens} == set(tokens)  # type: ignore[index]
    assert len(commits) < len(tokens), "grouped, not one commit per pull"


def test_a_receipt_that_cannot_be_chained_fails_alone(
    writer: ReceiptWriter, tmp_path: Path
) -> None:
    tokens = [f"ci-{n}" for n in range(12)] + ["nul\x00byte"]
    results = write_all(writer, tokens)
    assert isinstance(results["nul\x00byte"], Exception)
    assert all(isinstance(results[t], str) for t in tokens[:-1]), results
    assert len(chained(tmp_path)) == 12
    # the writer is not left waiting on a round that is over
    assert isinstance(writer.write("later", "/v1/export", {}), str)


def test_an_outbox_that_is_gone_fails_the_pull_and_the_next_one_still_writes(
    writer: ReceiptWriter, tmp_path: Path
) -> None:
    writer.write("first", "/v1/export", {})
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute("ALTER TABLE flagtrail_outbox RENAME TO moved_away")
    with pytest.raises(Exception, match="flagtrail_outbox"):
        writer.write("second", "/v1/export", {})
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute("ALTER TABLE moved_away RENAME TO flagtrail_outbox")
    assert isinstance(writer.write("third", "/v1/export", {}), str)
    assert [r["meta"]["token"] for r in chained(tmp_path)] == ["first", "third"]


def test_workers_take_turns_committing_through_their_shared_lock(tmp_path: Path) -> None:
    """Two workers' receipts must not meet on SQLite's write lock (its busy wait sleeps
    up to 100 ms at a time): a writer holding the turns waits for it, then commits."""
    import fcntl
    import os

    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    turns = tmp_path / "receipt-turns"
    writers = [
        ReceiptWriter(
            Outbox(
                make_engine(f"sqlite:///{tmp_path / 'outbox.db'}"),
                str(tmp_path / "identities.toml"),
            ),
            turns,
        )
        for _ in range(2)
    ]
    other_worker = os.open(turns, os.O_RDWR)
    fcntl.flock(other_worker, fcntl.LOCK_EX)  # another worker is committing
    done: list[str] = []
    waiting = threading.Thread(target=lambda: done.append(writers[0].write("a", "/v1/export", {})))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and done == [], "it waits for its turn"
    fcntl.flock(other_worker, fcntl.LOCK_UN)
    waiting.join(10)
    assert len(done) == 1
    assert isinstance(writers[1].write("b", "/v1/export", {}), str)
    assert [r["meta"]["token"] for r in chained(tmp_path)] == ["a", "b"]
    os.close(other_worker)
