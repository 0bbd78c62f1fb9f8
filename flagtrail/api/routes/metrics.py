"""The API's Prometheus metrics, for a token with the metrics:read scope."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

from flagtrail.api.auth import require
from flagtrail.api.context import context_of
from flagtrail.api.problems import problem_responses
from flagtrail.api.workers import METRICS_DIR_VARIABLE

router = APIRouter()
METRICS_READ = Depends(require("metrics:read"))


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics of the API",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(401, 403, 429),
    },
)
async def metrics(request: Request, _: object = METRICS_READ) -> Response:
    registry = context_of(request).metrics.registry
    if os.environ.get(METRICS_DIR_VARIABLE):  # several workers: add up all their files
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
