"""The evidence API: ``create_app(config)`` builds the ASGI app `flagtrail serve` runs.

FastAPI over Starlette on uvicorn: FastAPI writes the OpenAPI document (/openapi.json)
from the routes themselves, which the schemathesis fuzz test reads, and dependencies
put the token check on each route in one line. Every route reads; none can record or
alter a flag change (the only write is the evidence_exported receipt of a pull).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flagtrail import __version__
from flagtrail.api.config import ApiConfig
from flagtrail.api.context import ApiContext
from flagtrail.api.problems import Problem, problem_response
from flagtrail.api.routes import ROUTE_MODULES
from producers.errors import BackendUnavailable, EvidenceError, FlagtrailError, InvalidChange

log = structlog.get_logger("flagtrail.api")


def _problem_of(exc: FlagtrailError) -> Problem:
    if isinstance(exc, BackendUnavailable):
        return Problem(503, "backend-unavailable", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, EvidenceError):
        return Problem(500, "evidence-check-failed", str(exc))
    if isinstance(exc, InvalidChange):
        return Problem(400, "invalid-request", str(exc))
    # a ConfigError here is the server's (a missing log, no signing key), not the caller's
    return Problem(503, "server-not-ready", str(exc))


def _allowed_methods(request: Request) -> str:
    """The methods of every route on the request's path (a path with a GET and a POST
    route is two routes: the one that refused names only its own)."""
    methods: set[str] = set()
    for route in request.app.state.own_routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request.url.path)

    async def on_flagtrail(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FlagtrailError)
        log.warning("api.refused", path=request.url.path, reason=str(exc))
        return problem_response(_problem_of(exc), request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 15.5.6: every method the path takes
            headers["Allow"] = _allowed_methods(request)
        problem = Problem(exc.status_code, kind, str(exc.detail), headers=headers)
        return problem_response(problem, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid')}"[:300]
        return problem_response(Problem(400, "invalid-request", detail), request.url.path)

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception("api.internal_error", path=request.url.path)
        return problem_response(
            Problem(500, "internal-error", "the server failed; see its log"), request.url.path
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(FlagtrailError, on_flagtrail)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_bug)


class AccessLog:
    """One log line and the metrics per request, naming the client. The query string is
    never logged (a token pasted into a URL must not end up in the logs)."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            elapsed = time.perf_counter() - started
            self.ctx.metrics.requests.labels(route, str(status)).inc()
            self.ctx.metrics.duration.labels(route).observe(elapsed)
            state = scope.get("state") or {}
            peer = scope.get("client")
            log.info(
                "api.request",
                method=scope["method"],
                path=scope["path"][:200],
                status=status,
                # the address the limits count: the peer's own, or what a proxy the
                # operator named (--forwarded-allow-ips) forwarded
                client=peer[0] if peer else None,
                caller=state.get("token"),
                seconds=round(elapsed, 4),
            )


def create_app(config: ApiConfig, ctx: ApiContext | None = None) -> FastAPI:
    """The API for ``config``; ``ctx`` (tests, benchmarks) reuses a built context."""
    ctx = ctx or ApiContext.build(config)
    app = FastAPI(
        title="flagtrail evidence API",
        version=__version__,
        description="Read-only SOC2 evidence: the hash-chained export of a window, the "
        "signed package, the chain head. Every pull is chained as evidence_exported.",
        docs_url=None,  # Swagger UI loads scripts from a CDN: not on an auditor's door
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    _install_error_handlers(app)
    app.state.own_routes = []  # for the Allow header of a 405 (see _allowed_methods)
    for name in ROUTE_MODULES:
        router = importlib.import_module(f"flagtrail.api.routes.{name}").router
        app.include_router(router)
        app.state.own_routes += router.routes
    app.add_middleware(AccessLog, ctx=ctx)
    return app


def openapi_document(config: ApiConfig) -> dict[str, Any]:
    return create_app(config).openapi()
