"""Attacks on the receipts of pulls: a receipt the pull was told had failed must never be
chained later (its pull then chains "aborted": two receipts, one of them "complete" for a
client that never got the last chunk), and an outbox locked by another process must not
make a round retry every receipt one by one, each waiting out the lock again."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event

from flagtrail.api import receipts
from flagtrail.api.receipts import ReceiptWriter
from producers.identity import SAMPLE_DIRECTORY
from producers.outbox import Outbox
from tests.test_api_receipts import write_all


def chained_tokens(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM flagtrail_outbox ORDER BY id").fetchall()
    return [json.loads(p)["meta"]["token"] for (p,) in rows]


def outbox_at(tmp_path: Path, busy_timeout_s: float = 60) -> Outbox:
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    engine = create_engine(
        f"sqlite:///{tmp_path / 'outbox.db'}", connect_args={"timeout": busy_timeout_s}
    )
    return Outbox(engine, str(tmp_path / "identities.toml"))


def test_a_receipt_that_timed_out_is_never_chained_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker holds the turn for longer than a pull waits for its receipt: the
    pull is told its receipt failed (its stream withholds the last chunk and chains
    "aborted"). The receipt it gave up on must not be committed by a later round."""
    monkeypatch.setattr(receipts, "WAIT_S", 0.5)
    turns = tmp_path / "receipt-turns"
    writer = ReceiptWriter(outbox_at(tmp_path), turns)
    other_worker = os.open(turns, os.O_RDWR)
    fcntl.flock(other_worker, fcntl.LOCK_EX)  # another worker's commit takes its time
    results: dict[str, str | Exception] = {}

    def write(token: str) -> None:
        try:
            results[token] = writer.write(token, "/v1/export", {"outcome": "complete"})
        except Exception as exc:
            results[token] = exc

    leader = threading.Thread(target=write, args=("leader",))
    leader.start()
    leader.join(0.2)  # leads a round, waiting for its turn
    follower = threading.Thread(target=write, args=("gave-up",))
    follower.start()
    follower.join(10)
    assert isinstance(results["gave-up"], TimeoutError), results
    fcntl.flock(other_worker, fcntl.LOCK_UN)
    os.close(other_worker)
    leader.join(10)
    assert isinstance(results["leader"], str), results
    writer.write("later", "/v1/export", {"outcome": "complete"})  # the next round
    assert "gave-up" not in chained_tokens(tmp_path / "outbox.db"), (
        "a receipt its pull was told had failed was chained afterwards"
    )


def test_a_locked_outbox_fails_a_round_once_not_once_per_receipt(tmp_path: Path) -> None:
    """Another process holds the outbox's write lock: a round fails after one wait for
    it, not one wait per receipt (256 receipts x SQLite's 60 s is four hours)."""
    outbox = outbox_at(tmp_path, busy_timeout_s=0.2)
    writer = ReceiptWriter(outbox)
    writer.write("warm", "/v1/export", {})
    attempts = []
    event.listen(outbox.engine, "begin", lambda conn: attempts.append(1))
    other = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    tokens = [f"ci-{n}" for n in range(24)]
    results = write_all(writer, tokens)
    other.execute("ROLLBACK")
    other.close()
    assert all(isinstance(results[t], Exception) for t in tokens), results
    assert len(attempts) < len(tokens) // 2, f"{len(attempts)} transactions for one lock"
    assert isinstance(writer.write("after", "/v1/export", {}), str)
    assert chained_tokens(tmp_path / "outbox.db") == ["warm", "after"]


class SlowPull:
    """A pull whose opening takes a while (a big package being built) and that is longer
    than one chunk: it is chained as started before stream_pull returns."""

    media_type = "application/gzip"
    headers = None

    def __init__(self, opened: threading.Event, release: threading.Event) -> None:
        opened.set()
        release.wait(10)
        self.receipts: list[str] = []
        SlowPull.last = self

    def chunks(self) -> Iterator[bytes]:
        yield from [b"a" * 10, b"b" * 10]

    def start(self) -> None:
        self.receipts.append("started")

    def end(self, complete: bool, client_left: bool) -> None:
        # the real pulls close their log and delete their package folder here
        self.receipts.append("complete" if complete else "aborted")


def test_a_pull_cancelled_while_it_opens_is_chained_as_unfinished() -> None:
    """SIGTERM's grace period runs out while a pull is being opened: the request is
    cancelled, but the thread opening it runs on and chains it as started. The pull must
    then be ended (chained as aborted, its log closed, its package folder deleted), not
    dropped with a started receipt and nothing after it, as if the server had been killed."""
    from flagtrail.api.streaming import stream_pull

    opened, release = threading.Event(), threading.Event()
    slots = asyncio.Semaphore(1)

    @asynccontextmanager
    async def slot() -> AsyncIterator[None]:
        async with slots:
            yield

    async def main() -> None:
        task = asyncio.create_task(stream_pull(slot(), SlowPull, opened, release))
        while not opened.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not slots.locked(), "the stream slot is given back"

    asyncio.run(main())
    for _ in range(100):  # on whatever thread still runs: give it its time
        if len(getattr(SlowPull, "last", SlowPull).__dict__.get("receipts", [])) >= 2:
            break
        time.sleep(0.02)
    assert SlowPull.last.receipts == ["started", "aborted"]


def test_a_stream_cancelled_while_it_reads_its_last_chunk_is_chained_once() -> None:
    """SIGTERM's grace period runs out (uvicorn cancels the task) while the thread reads
    the last chunk and chains the pull complete. The thread runs on; the stream must not
    also chain it as aborted, nor end the pull (close its log) while the thread reads."""
    from flagtrail.api.streaming import CheckedStream

    reading, release = threading.Event(), threading.Event()
    calls: list[tuple[bool, bool]] = []
    ended = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"first"
        yield b"last"
        reading.set()  # is there more? (the last chunk is known as last only then)
        release.wait(10)

    def on_end(complete: bool, client_left: bool) -> None:
        calls.append((complete, client_left))
        ended.set()

    stream = CheckedStream(chunks(), "text/plain", on_end, on_start=lambda: None)

    async def receive() -> dict[str, str]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        task = asyncio.create_task(stream({"type": "http"}, receive, send))
        while not reading.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.1)
        release.set()
        with suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # whatever still runs in a thread

    asyncio.run(main())
    ended.wait(5)
    assert len(calls) == 1, f"the pull was chained {calls}"


def test_workers_keep_taking_turns_after_the_turns_file_is_replaced(tmp_path: Path) -> None:
    """A cleaner of temporary files deletes the turns file (it is never written, so it
    looks unused), and a worker restarted afterwards creates a new one: the workers
    already running must take turns through that one too, not through the deleted file
    (they would meet on SQLite's write lock again, whose busy wait sleeps up to 100 ms)."""
    outbox = outbox_at(tmp_path)
    turns = tmp_path / "receipt-turns"
    running = ReceiptWriter(outbox, turns)
    running.write("before", "/v1/export", {})
    turns.unlink()
    ReceiptWriter(outbox, turns)  # a worker restarted since: it creates the file anew
    restarted_worker = os.open(turns, os.O_RDWR)
    fcntl.flock(restarted_worker, fcntl.LOCK_EX)  # ...and is committing
    done: list[str] = []
    waiting = threading.Thread(target=lambda: done.append(running.write("a", "/v1/export", {})))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and done == [], "it did not wait for its turn"
    fcntl.flock(restarted_worker, fcntl.LOCK_UN)
    os.close(restarted_worker)
    waiting.join(10)
    assert len(done) == 1
