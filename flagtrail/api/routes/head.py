"""The chain head now: what the next export will continue from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from flagtrail.api.auth import require
from flagtrail.api.context import context_of
from flagtrail.api.problems import problem_responses
from flagtrail.service import chain_head

router = APIRouter()
EXPORT_READ = Depends(require("export:read"))

HEAD_SCHEMA = {
    "type": "object",
    "required": ["chain_id", "sequence", "hash", "timestamp_utc"],
    "properties": {
        "chain_id": {"type": "string"},
        "sequence": {"type": "integer"},
        "hash": {"type": "string"},
        "timestamp_utc": {"type": ["string", "null"]},
    },
}


@router.get(
    "/v1/head",
    tags=["evidence"],
    summary="the chain head now (sequence, hash, time of the last record)",
    responses={
        200: {"content": {"application/json": {"schema": HEAD_SCHEMA}}},
        **problem_responses(400, 401, 403, 429, 503),
    },
)
async def head(request: Request, _: object = EXPORT_READ) -> dict[str, Any]:
    return await run_in_threadpool(chain_head, context_of(request).config.settings)
