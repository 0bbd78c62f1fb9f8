"""The API's own Prometheus metrics (a registry per app: tests run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flagtrail_api_requests_total",
            "API requests by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "flagtrail_api_request_duration_seconds",
            "time to the end of the response, streams included",
            ["route"],
            registry=self.registry,
        )
        self.records = Counter(
            "flagtrail_api_records_streamed_total",
            "records sent by /v1/export",
            registry=self.registry,
        )
        self.pulls = Counter(
            "flagtrail_api_pulls_total",
            "evidence pulls chained as evidence_exported, by route and outcome",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "flagtrail_api_auth_failures_total",
            "requests refused 401/403 by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "flagtrail_api_rate_limited_total", "requests refused 429", registry=self.registry
        )
