"""A streamed response that a reader can never mistake for complete when it is not.

When the source fails mid-stream (a record fails its hash, the log goes away, the
token is revoked), the response ends without its last chunk: the connection is
closed, so curl exits non-zero and a client sees a truncated transfer, never a
short but well-formed file.

And no byte of evidence leaves before the log holds a receipt of the pull: a pull that
fits one chunk is read whole and chained as complete before it is sent; a longer one is
chained as started before its first chunk, then as complete or unfinished at its end.
A server killed mid-pull (SIGKILL, the OOM killer) cannot chain the end, but the start
is in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

import anyio
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = structlog.get_logger("flagtrail.api")
T = TypeVar("T")


class Pull(Protocol):
    """One pull of evidence: what it streams, and what it chains when it ends."""

    media_type: str
    headers: dict[str, str] | None

    def chunks(self) -> Iterator[bytes]: ...

    def start(self) -> None: ...

    def end(self, complete: bool, client_left: bool) -> None: ...


async def stream_pull(
    slot: AbstractAsyncContextManager[None], build: Callable[..., Pull], *args: object
) -> CheckedStream:
    """Take a stream slot, then, in one thread hop, build the pull and read its first
    chunk ahead (a pull that fits one chunk is then read and chained: two hops in all,
    with the token check). The slot is given back at once if building fails; otherwise
    the stream holds it until it ends. Thread hops are what a small pull costs most."""
    await slot.__aenter__()
    opened: list[CheckedStream] = []
    try:
        return await in_thread(_open, slot, build, args, opened)
    except BaseException as exc:
        # cancelled (shutdown) while the thread opened it, maybe chaining it as started:
        # end it as unfinished, as a dropped client's
        if opened and not opened[0].chained:
            await opened[0].end_unfinished(client_left=False)
        await slot.__aexit__(type(exc), exc, exc.__traceback__)
        raise


async def in_thread(func: Callable[..., T], *args: object) -> T:
    """run_in_threadpool, except that a cancelled caller still waits for the thread.

    A cancelled task (uvicorn cancels the requests still running when its shutdown grace
    period ends) stops waiting for its thread, but the thread runs on: it may chain a
    receipt, or read the log that the cancelled pull then closes. Waiting it out keeps
    one truth about the pull: what the thread did is known before the pull is ended
    (the cancellation is then raised). ReceiptKeepingServer waits for such tasks."""
    job = asyncio.ensure_future(run_in_threadpool(func, *args))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(job)
            break
        except asyncio.CancelledError:
            if job.done():  # the job itself was cancelled (the loop is closing)
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _open(
    slot: AbstractAsyncContextManager[None],
    build: Callable[..., Pull],
    args: tuple[object, ...],
    opened: list[CheckedStream],
) -> CheckedStream:
    pull = build(*args)
    stream = CheckedStream(
        pull.chunks(), pull.media_type, pull.end, pull.headers, slot, on_start=pull.start
    )
    opened.append(stream)
    stream.read_ahead()
    return stream


class StreamAborted(Exception):
    """Stop the stream on purpose (the reason is logged, the connection dropped)."""


class ReceiptFailed(Exception):
    """A complete stream's receipt could not be chained: its last chunk is withheld."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class CheckedStream(Response):
    def __init__(
        self,
        chunks: Iterator[bytes],
        media_type: str,
        on_end: Callable[[bool, bool], None],
        headers: dict[str, str] | None = None,
        slot: AbstractAsyncContextManager[None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        # no body attribute: Response would announce content-length: 0
        self.status_code, self.media_type, self.background = 200, media_type, None
        self.init_headers(headers)
        self.chunks = chunks
        # (complete, client_left) -> None, run in a thread. For a complete stream it runs
        # before the last chunk goes out, so a pull whose receipt cannot be chained
        # fails at the client instead of succeeding unrecorded.
        self.on_end = on_end
        # () -> None, run in a thread before the first chunk of a stream longer than one
        self.on_start = on_start
        self.slot = slot  # held until the stream ends (taken before the source was opened)
        self._ahead: bytes | None = None  # the chunk read ahead of the one being sent
        self._first: tuple[bytes, bool] | Exception | None = None  # see read_ahead
        self._chained = False  # the receipt of a complete pull is in: never chain a second

    def read_ahead(self) -> None:
        """Take the first step now, in the thread that opened the source; its result (or
        its failure, which then ends the stream as any later failure would) is sent first."""
        try:
            self._first = self._advance()
        except Exception as exc:
            self._first = exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            if self.slot is not None:
                await self.slot.__aexit__(None, None, None)

    async def _stream(self, receive: Receive, send: Send) -> None:
        left = anyio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    left.set()
                    return

        complete = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect)
                try:
                    complete = await self._send_all(send, left)
                finally:
                    group.cancel_scope.cancel()
        finally:
            if not complete and not self._chained:  # shielded: chained even on shutdown
                await self.end_unfinished(left.is_set())
        # not complete: return without the final chunk; the server closes the connection

    async def _send_all(self, send: Send, left: anyio.Event) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        while not left.is_set():
            try:
                chunk, last = await self._step()
            except ReceiptFailed as exc:
                log.error("api.receipt_failed", reason=str(exc.__cause__), kind=exc.kind)
                return False
            except Exception as exc:  # a check failed or the log went away: one line, no traceback
                log.error("api.stream_aborted", reason=str(exc), kind=type(exc).__name__)
                return False
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return True
        return False

    async def _step(self) -> tuple[bytes, bool]:
        first, self._first = self._first, None
        if isinstance(first, Exception):
            raise first
        return first or await in_thread(self._advance)

    def _advance(self) -> tuple[bytes, bool]:
        """The next chunk and whether it is the last, reading one chunk ahead: a stream
        that is complete chains its receipt in this same thread hop, before its last
        chunk goes out (a small pull costs one hop, not three); a longer one chains its
        start before its first chunk goes out."""
        first = self._ahead is None  # nothing read ahead: only before the first chunk
        chunk = next(self.chunks, None) if self._ahead is None else self._ahead
        self._ahead = None if chunk is None else next(self.chunks, None)
        if self._ahead is not None:
            assert chunk is not None
            if first and self.on_start is not None:
                self._receipt(self.on_start)
            return chunk, False
        self._receipt(self.on_end, True, False)
        self._chained = True
        return chunk or b"", True

    @staticmethod
    def _receipt(chain: Callable[..., None], *args: bool) -> None:
        try:
            chain(*args)
        except Exception as exc:
            raise ReceiptFailed(type(exc).__name__) from exc

    @property
    def chained(self) -> bool:
        """The pull's end is chained (complete, or unfinished): never chain a second."""
        return self._chained

    async def end_unfinished(self, client_left: bool) -> None:
        """Chain the pull as unfinished (and let it close its source), once."""
        self._chained = True
        try:
            with anyio.CancelScope(shield=True):
                await in_thread(self.on_end, False, client_left)
        except Exception as exc:
            log.error("api.receipt_failed", reason=str(exc), kind=type(exc).__name__)
