"""Bearer tokens: who may call, with which scope, how often."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from flagtrail.api.context import context_of
from flagtrail.api.problems import Problem
from flagtrail.api.tokens import TokenInfo

# declared for the OpenAPI document; the header is read and judged below
bearer = HTTPBearer(auto_error=False, description="a token from `flagtrail token create`")
CHALLENGE = 'Bearer realm="flagtrail"'
TOUCH_EVERY_S = 60  # last use is written at most once a minute per token


def _unauthorized(reason: str, detail: str) -> Problem:
    # RFC 6750 3.1: a request without credentials gets the bare challenge, no error code
    challenge = CHALLENGE if reason == "missing" else f'{CHALLENGE}, error="invalid_token"'
    return Problem(401, f"token-{reason}", detail, headers={"WWW-Authenticate": challenge})


def _throttle_failures(request: Request, problem: Problem) -> Problem:
    """Guessing tokens costs a bucket per client address: 429 once it is empty."""
    ctx = context_of(request)
    client = request.client.host if request.client else "unknown"
    wait = ctx.limiter.take(f"unauthenticated:{client}")
    if not wait:
        return problem
    ctx.metrics.rate_limited.inc()
    seconds = max(1, math.ceil(wait))
    return Problem(
        429,
        "rate-limited",
        f"too many refused requests from this address; retry in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(request: Request, scope: str) -> TokenInfo:
    """The caller's token, if it is active, holds ``scope`` and is within its rate."""
    ctx = context_of(request)
    presented = _presented(request)
    if presented is None:
        ctx.metrics.auth_failures.labels("missing").inc()
        problem = _unauthorized("missing", "send a token: Authorization: Bearer <token>")
        raise _throttle_failures(request, problem)
    info = ctx.tokens.lookup(presented)
    now = datetime.now(UTC)
    state = "unknown" if info is None else info.state(now)
    if info is None or state != "active":
        ctx.metrics.auth_failures.labels(state).inc()
        raise _throttle_failures(request, _unauthorized(state, f"the token is {state}"))
    if scope not in info.scopes:
        ctx.metrics.auth_failures.labels("scope").inc()
        raise Problem(
            403,
            "insufficient-scope",
            f"token {info.name!r} lacks the {scope} scope",
            headers={
                "WWW-Authenticate": f'{CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            },
        )
    wait = ctx.limiter.take(info.name)
    if wait:
        ctx.metrics.rate_limited.inc()
        seconds = max(1, math.ceil(wait))
        raise Problem(
            429,
            "rate-limited",
            f"token {info.name!r} is over its rate limit; retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    if info.last_used_at is None or (now - info.last_used_at).total_seconds() > TOUCH_EVERY_S:
        ctx.tokens.touch(info.name, now)
    request.state.token = info.name
    return info


def require(scope: str) -> Callable[..., object]:
    """A dependency: ``Depends(require("export:read"))`` guards a route."""

    async def dependency(request: Request, _: object = Depends(bearer)) -> TokenInfo:
        return await run_in_threadpool(authenticate, request, scope)

    return dependency
