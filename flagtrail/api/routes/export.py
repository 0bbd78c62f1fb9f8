"""``/v1/export``: the window's JSONL, streamed, byte for byte what `flagtrail export` writes.

GET takes query parameters; POST takes the form the seed's script sends
(``curl --data-urlencode start=… end=… controls=…``). ``controls`` names the controls
the pull is for (it is validated and chained in the receipt); the records are never
filtered by it, since a filtered file would break the hash chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from flagtrail.api.auth import require
from flagtrail.api.context import ApiContext, context_of
from flagtrail.api.params import Window, read_form, single_values, window
from flagtrail.api.problems import bad_request, problem_responses
from flagtrail.api.receipts import chain_receipt
from flagtrail.api.streaming import StreamAborted, stream_pull
from flagtrail.api.tokens import TokenInfo

router = APIRouter()
EXPORT_READ = Depends(require("export:read"))
ROUTE = "/v1/export"
PARAMETERS = {"start", "end", "controls"}
NDJSON = "application/x-ndjson"
START = Query(None, description="first day, YYYY-MM-DD (UTC)")
END = Query(None, description="last day, YYYY-MM-DD (UTC, included)")
CONTROLS = Query(None, description="controls the pull is for, e.g. CC6.1,CC6.6,CC8.1")
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the export JSONL, one record a line, in chain order",
        "content": {NDJSON: {"schema": {"type": "string"}}},
    },
    **problem_responses(400, 401, 403, 413, 415, 429, 503),
}
FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["start", "end"],
                    "properties": {
                        "start": {"type": "string", "description": "first day, YYYY-MM-DD"},
                        "end": {"type": "string", "description": "last day, YYYY-MM-DD"},
                        "controls": {"type": "string", "description": "e.g. CC6.1,CC8.1"},
                    },
                }
            }
        },
    }
}


class ExportPull:
    """One pull: the open log, the checked stream, and its receipt at the end."""

    media_type = NDJSON
    headers = None

    def __init__(self, ctx: ApiContext, token: TokenInfo, win: Window) -> None:
        from flagtrail.service import open_audit_log
        from relay.export import WindowStream

        self.ctx, self.token, self.win = ctx, token, win
        self.log = open_audit_log(ctx.config.settings)
        try:
            self.stream = WindowStream(self.log, win.start, win.end, ctx.config.chunk_bytes)
        except BaseException:
            self.log.close()
            raise

    def chunks(self) -> Iterator[bytes]:
        recheck = self.ctx.config.token_recheck_s
        checked = time.monotonic()
        for chunk in self.stream.chunks():
            if time.monotonic() - checked >= recheck:
                state = self.ctx.tokens.state(self.token.name, datetime.now(UTC))
                if state != "active":
                    raise StreamAborted(f"token {self.token.name!r} became {state} mid-stream")
                checked = time.monotonic()
            yield chunk

    def start(self) -> None:
        """Chained before the first chunk of a pull longer than one chunk."""
        chain_receipt(
            self.ctx, self.token.name, ROUTE, {**self.win.as_meta(), "outcome": "started"}
        )

    def end(self, complete: bool, client_left: bool) -> None:
        try:
            head = self.stream.head() if complete else None
        finally:
            self.log.close()
        facts = self.stream.facts
        self.ctx.metrics.records.inc(facts.count)
        tail = self.stream.tail
        chain_receipt(
            self.ctx,
            self.token.name,
            ROUTE,
            {
                **self.win.as_meta(),
                "record_count": facts.count,
                "head": head,
                "chain_head": {"sequence": tail.sequence, "hash": tail.record_hash}
                if tail
                else None,
                "outcome": "complete" if complete else "client_left" if client_left else "aborted",
            },
        )


async def _export(request: Request, token: TokenInfo, pairs: list[tuple[str, str]]) -> Any:
    ctx = context_of(request)
    win = window(single_values(pairs, PARAMETERS), ctx.config.max_window_days)
    return await stream_pull(ctx.stream_slot(), ExportPull, ctx, token, win)


@router.get(ROUTE, tags=["evidence"], summary="the window's export JSONL", responses=RESPONSES)
async def export_get(
    request: Request,
    start: str | None = START,
    end: str | None = END,
    controls: str | None = CONTROLS,
    token: TokenInfo = EXPORT_READ,
) -> Any:
    return await _export(request, token, request.query_params.multi_items())


@router.post(
    ROUTE,
    tags=["evidence"],
    summary="the window's export JSONL (the seed's curl --data-urlencode form)",
    responses=RESPONSES,
    openapi_extra=FORM_BODY,
)
async def export_post(request: Request, token: TokenInfo = EXPORT_READ) -> Any:
    if request.query_params:
        raise bad_request("unknown-parameter", "POST takes its parameters in the form body")
    return await _export(request, token, await read_form(request))
