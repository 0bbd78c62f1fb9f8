"""Webhook receivers: /v1/sources/launchdarkly and /v1/sources/flagsmith.

No API token: a platform authenticates by signing the body with the webhook's secret
(FLAGTRAIL_LAUNCHDARKLY_WEBHOOK_SECRET, FLAGTRAIL_FLAGSMITH_WEBHOOK_SECRET; a platform
without one answers 404). The work
is producers.sources.webhooks.WebhookReceiver's; this route reads the body (bounded),
hands it over, and answers what the receiver says: 200 only once the change is
committed to the outbox.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from flagtrail.api.context import ApiContext, context_of
from flagtrail.api.problems import Problem, problem_response, problem_responses
from producers.sources.webhooks import MAX_BODY_BYTES, PLATFORMS, WebhookReceiver

router = APIRouter()


def _receiver(request: Request, platform: str) -> WebhookReceiver:
    """One receiver per platform and app, made on first use (its secret from settings)."""
    from flagtrail.settings import webhook_secret
    from producers.identity import FileIdentityDirectory
    from producers.policy import load_policy

    ctx: ApiContext = context_of(request)
    state = request.app.state
    if not hasattr(state, "webhook_receivers"):
        state.webhook_receivers = {}
    cache: dict[str, WebhookReceiver] = state.webhook_receivers
    if platform not in cache:
        secret = webhook_secret(platform)
        if not secret:
            raise Problem(
                404,
                "source-not-configured",
                f"the {platform} receiver has no secret: set "
                f"FLAGTRAIL_{platform.upper()}_WEBHOOK_SECRET",
            )
        s = ctx.config.settings
        cache[platform] = WebhookReceiver(
            ctx.engine,
            PLATFORMS[platform](),
            secret,
            chain_id=s.chain_id,
            policy=load_policy(),
            identities=FileIdentityDirectory(s.identities),
        )
    return cache[platform]


async def _bounded_body(request: Request) -> bytes | None:
    """The body, or None once it passes the limit (read no further than that)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive(request: Request, platform: str) -> Response:
    receiver = _receiver(request, platform)
    body = await _bounded_body(request)
    if body is None:
        raise Problem(413, "body-too-large", f"webhook body is over {MAX_BODY_BYTES} bytes")
    answer = await run_in_threadpool(receiver.receive, body, dict(request.headers))
    if answer.problem is not None:
        extra: dict[str, Any] = {k: v for k, v in answer.body.items() if k != "detail"}
        problem = Problem(answer.status, answer.problem, answer.body["detail"], **extra)
        return problem_response(problem, request.url.path)
    return JSONResponse(answer.body, status_code=answer.status)


_RESPONSES = {
    200: {"description": "recorded in the outbox (or a duplicate, or not a flag change)"},
    **problem_responses(400, 401, 404, 413),
}
# Left out of /openapi.json: that document describes the read-only evidence API an
# auditor calls (its tests pin it to reads); these routes are for the platforms, which
# authenticate by signature, not by token.
_HIDDEN = {"include_in_schema": False}


@router.post(
    "/v1/sources/launchdarkly",
    tags=["sources"],
    summary="LaunchDarkly audit-log webhook (X-LD-Signature)",
    responses=_RESPONSES,
    **_HIDDEN,
)
async def launchdarkly(request: Request) -> Response:
    return await _receive(request, "launchdarkly")


@router.post(
    "/v1/sources/flagsmith",
    tags=["sources"],
    summary="Flagsmith audit-log and environment webhooks (X-Flagsmith-Signature)",
    responses=_RESPONSES,
    **_HIDDEN,
)
async def flagsmith(request: Request) -> Response:
    return await _receive(request, "flagsmith")
