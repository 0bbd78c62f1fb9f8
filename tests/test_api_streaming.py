"""CheckedStream: a pull never looks complete unless it is, and its receipt is chained."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from flagtrail.api.streaming import CheckedStream


def run(stream: CheckedStream) -> list[dict[str, Any]]:
    """Serve ``stream`` to a client that reads everything: the ASGI messages it got."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(stream({"type": "http"}, receive, send))
    return sent


def bodies(sent: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]


class Ends:
    def __init__(self, fail_complete: bool = False, log: list[str] | None = None) -> None:
        self.calls: list[tuple[bool, bool]] = []
        self.fail_complete = fail_complete
        self.log = log if log is not None else []

    def __call__(self, complete: bool, client_left: bool) -> None:
        self.calls.append((complete, client_left))
        self.log.append("receipt")
        if complete and self.fail_complete:
            raise OSError("database is locked")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_complete_stream_sends_every_chunk_and_ends_once(count: int) -> None:
    ends = Ends()
    sent = run(CheckedStream(iter([b"a%d" % n for n in range(count)]), "text/plain", ends))
    got = bodies(sent)
    assert b"".join(body for body, _ in got) == b"".join(b"a%d" % n for n in range(count))
    assert [more for _, more in got][-1] is False and all(more for _, more in got[:-1])
    assert ends.calls == [(True, False)]


def test_the_receipt_is_chained_before_the_last_chunk_goes_out() -> None:
    order: list[str] = []
    ends = Ends(log=order)

    def chunks() -> Iterator[bytes]:
        for n in range(3):
            order.append(f"chunk {n} read")
            yield b"x"

    stream = CheckedStream(chunks(), "text/plain", ends)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            order.append("last chunk sent")

    asyncio.run(stream({"type": "http"}, receive, send))
    assert order.index("receipt") < order.index("last chunk sent")


def test_a_receipt_that_cannot_be_chained_withholds_the_end_of_the_stream() -> None:
    """The client must see a truncated transfer, never a complete but unrecorded pull;
    the failed pull is then chained as unfinished."""
    ends = Ends(fail_complete=True)
    sent = run(CheckedStream(iter([b"first", b"last"]), "text/plain", ends))
    got = bodies(sent)
    assert got == [(b"first", True)]  # no last chunk, no end of body
    assert ends.calls == [(True, False), (False, False)]


def test_a_chunk_that_fails_its_check_ends_the_stream_unfinished() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"good"
        yield b"good"
        raise ValueError("record 3 fails its hash")

    ends = Ends()
    got = bodies(run(CheckedStream(chunks(), "text/plain", ends)))
    assert all(more for _, more in got)
    assert ends.calls == [(False, False)]


def test_a_pull_read_ahead_is_chained_once_even_if_its_client_has_left() -> None:
    """A one-chunk pull is read and chained while it is opened; a client gone by the
    time the response starts must not add a second, unfinished receipt."""
    ends = Ends()
    stream = CheckedStream(iter([b"all of it"]), "text/plain", ends)
    stream.read_ahead()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    asyncio.run(stream({"type": "http"}, receive, send))
    assert ends.calls == [(True, False)]


def test_a_failure_found_while_reading_ahead_ends_the_stream_unfinished() -> None:
    def chunks() -> Iterator[bytes]:
        raise ValueError("record 1 fails its hash")
        yield b""  # pragma: no cover

    ends = Ends()
    stream = CheckedStream(chunks(), "text/plain", ends)
    stream.read_ahead()
    assert bodies(run(stream)) == []
    assert ends.calls == [(False, False)]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_no_byte_leaves_before_a_receipt_of_the_pull_is_chained(count: int) -> None:
    """A pull longer than one chunk is chained as started before its first chunk goes
    out (a server killed mid-pull still leaves that); a one-chunk pull is chained
    complete before it goes out, and never as started."""
    order: list[str] = []
    ends = Ends(log=order)
    stream = CheckedStream(
        iter([b"x"] * count), "text/plain", ends, on_start=lambda: order.append("started")
    )

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            order.append("chunk sent")

    asyncio.run(stream({"type": "http"}, receive, send))
    first_receipt = "started" if count > 1 else "receipt"
    assert order[0] == first_receipt and order.count("chunk sent") == count
    assert order.count("started") == (count > 1) and ends.calls == [(True, False)]


def test_a_start_that_cannot_be_chained_sends_nothing() -> None:
    def refuse() -> None:
        raise OSError("database is locked")

    ends = Ends()
    got = bodies(run(CheckedStream(iter([b"a", b"b"]), "text/plain", ends, on_start=refuse)))
    assert got == []
    assert ends.calls == [(False, False)]
