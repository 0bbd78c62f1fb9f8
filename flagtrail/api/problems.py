"""RFC 9457 problem details: every error the API answers is ``application/problem+json``."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

PROBLEM_TYPE = "urn:flagtrail:problem:"  # URNs: identifiers, not pages to fetch
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raise in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    body = {
        "type": PROBLEM_TYPE + problem.kind,
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        **problem.extensions,
    }
    if instance:
        body["instance"] = instance
    return Response(
        json.dumps(body, ensure_ascii=True).encode(),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def bad_request(kind: str, detail: str) -> Problem:
    return Problem(400, kind, detail)


# what the OpenAPI document says every error looks like
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }
