"""Prometheus metrics and health endpoints for a long-running relay.

Label sets are bounded: actions and environments outside the known sets are
counted as ``other``, so a typo in a control plane cannot explode cardinality.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from producers.events import FLAG_ACTIONS, META_ACTIONS, parse_timestamp
from relay.gaps import DEFAULT_CLOCK_SKEW_TOLERANCE_S, DEFAULT_LAG_THRESHOLD_S
from relay.outbox.base import Backlog
from relay.relay import BatchResult, ChainHead, RelayObserver
from relay.statements import CheckedGapFinder
from relay.summary import finding_controls
from relay.trust import Trust

ACTIONS = FLAG_ACTIONS | META_ACTIONS
ENVIRONMENTS = frozenset({"production", "staging", "development", "test", "sandbox"})
RULES = frozenset(
    {
        "required-fields",
        "distinct-approver",
        "unknown-actor",
        "role-not-held",
        "role-not-allowed",
        "unverified-approver",
    }
)
ERROR_KINDS = frozenset({"outbox", "log", "lease", "config"})
SOURCES = frozenset({"unleash", "launchdarkly", "flagsmith"})
CONTROLS = frozenset({"CC6.1", "CC6.6", "CC7.2", "CC8.1"})
LIVENESS_WINDOW_S = 60.0


def _bounded(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "other"


class RelayMetrics(RelayObserver):
    def __init__(
        self,
        chain_id: str,
        registry: CollectorRegistry | None = None,
        clock_skew_tolerance_s: float = DEFAULT_CLOCK_SKEW_TOLERANCE_S,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"registry": self.registry}
        self.chain_id = chain_id
        self.pending = Gauge(
            "flagtrail_outbox_pending_rows", "Outbox rows committed but not yet relayed", **labels
        )
        self.lag = Gauge(
            "flagtrail_outbox_lag_seconds",
            "Age of the oldest pending outbox row (0 when none)",
            **labels,
        )
        self.relayed = Counter(
            "flagtrail_events_relayed_total",
            "Events appended to the log",
            ["action", "environment"],
            **labels,
        )
        self.batch_size = Histogram(
            "flagtrail_relay_batch_size",
            "Events per log append",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
            **labels,
        )
        self.batch_seconds = Histogram(
            "flagtrail_relay_batch_duration_seconds",
            "Read, seal, append and mark one batch",
            **labels,
        )
        self.commit_to_log = Histogram(
            "flagtrail_commit_to_log_seconds",
            "From the producer recording an event to the log committing it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            **labels,
        )
        self.head_sequence = Gauge(
            "flagtrail_chain_head_sequence", "Sequence of the chain head", **labels
        )
        self.last_event = Gauge(
            "flagtrail_last_relayed_event_timestamp_seconds",
            "timestamp_utc of the last relayed event (Unix time)",
            **labels,
        )
        self.rotations = Counter(
            "flagtrail_sentinel_rotations_total", "sentinel_rotation meta-events appended", **labels
        )
        self.gaps = Counter(
            "flagtrail_gaps_documented_total", "gap_documented meta-events appended", **labels
        )
        self.rejections = Counter(
            "flagtrail_rejections_total",
            "Blocked writes relayed, by policy rule",
            ["rule"],
            **labels,
        )
        self.exceptions = Counter(
            "flagtrail_policy_exceptions_total",
            "Changes from a flag platform (Unleash, LaunchDarkly, Flagsmith) that the "
            "write-time policy would have refused, by source and control (detected, not "
            "prevented)",
            ["source", "control"],
            **labels,
        )
        self.errors = Counter(
            "flagtrail_relay_errors_total",
            "Failed relay rounds by the backend that failed (outbox, log, lease) or config",
            ["kind"],
            **labels,
        )
        for kind in ERROR_KINDS:  # a series exists before the first outage (alerts, rate())
            self.errors.labels(kind)
        self.chain_failures = Counter(
            "flagtrail_chain_verification_failures_total",
            "Resumes that found the log tampered, truncated or replaced (then rotated)",
            **labels,
        )
        # witnesses are named by the operator's FLAGTRAIL_WITNESSES: a bounded label set
        self.witness_cosignatures = Counter(
            "flagtrail_witness_cosignatures_total",
            "Checkpoints a witness cosigned",
            ["witness"],
            **labels,
        )
        self.witness_refusals = Counter(
            "flagtrail_witness_refusals_total",
            "Checkpoints a witness refused: it cosigned a history this log does not extend "
            "(the log was rewritten or forked)",
            ["witness"],
            **labels,
        )
        self.witness_errors = Counter(
            "flagtrail_witness_errors_total",
            "Checkpoints a witness could not be asked to cosign (unreachable)",
            ["witness"],
            **labels,
        )
        self.quarantined = Counter(
            "flagtrail_quarantined_rows_total",
            "Outbox rows the relay could not seal, chained as quarantined meta-events",
            **labels,
        )
        self.clock_skewed = Counter(
            "flagtrail_producer_clock_skew_total",
            "Events whose producer clock (recorded_at) ran ahead of the relay's by more "
            "than the tolerance",
            **labels,
        )
        self.undocumented = Gauge(
            "flagtrail_undocumented_gaps",
            "Relay outages and sequence jumps seen by this relay that no gap_documented "
            "statement covers yet",
            **labels,
        )
        # only statements signed by a registered key (FLAGTRAIL_TRUSTED_KEYS, a PEM
        # bundle) clear a gap: an unsigned row in the outbox must not silence the alert.
        # Without registered keys no statement documents anything here.
        self._gaps = CheckedGapFinder(Trust.from_environment().keys, DEFAULT_LAG_THRESHOLD_S)
        self._gaps.clock_skew_tolerance_s = clock_skew_tolerance_s
        self.active = Gauge(
            "flagtrail_relay_active", "1 while this instance writes the chain", **labels
        )
        self.info = Gauge(
            "flagtrail_relay_info", "Which chain this relay serves", ["chain"], **labels
        )
        self.info.labels(chain_id).set(1)
        self._beat = time.monotonic()
        self._ok = False

    # -- RelayObserver -------------------------------------------------------------------
    def batch(self, result: BatchResult) -> None:
        self.batch_size.observe(result.count)
        self.batch_seconds.observe(result.seconds)
        for record in result.records:
            action = record.get("action")
            self.relayed.labels(
                _bounded(action, ACTIONS), _bounded(record.get("environment"), ENVIRONMENTS)
            ).inc()
            recorded = parse_timestamp(record["recorded_at"]).timestamp()
            self.commit_to_log.observe(max(0.0, result.appended_at - recorded))
            if record.get("policy_findings"):  # counted as the summary counts them
                source = record.get("source")
                platform = source.get("platform") if isinstance(source, dict) else None
                for control in finding_controls(record):
                    self.exceptions.labels(
                        _bounded(platform, SOURCES), _bounded(control, CONTROLS)
                    ).inc()
            if action == "rejected":
                rule = (record.get("meta") or {}).get("rule")
                self.rejections.labels(_bounded(rule, RULES)).inc()
            elif action == "sentinel_rotation":
                self.rotations.inc()
            elif action == "gap_documented":
                self.gaps.inc()
            elif action == "quarantined":
                self.quarantined.inc()
        for record in result.records:
            self._gaps.add(record)
        self._update_undocumented()
        self.head_sequence.set(result.last_sequence)
        self.last_event.set(parse_timestamp(result.entries[-1].timestamp_utc).timestamp())

    def _update_undocumented(self) -> None:
        self.undocumented.set(sum(1 for g in self._gaps.result() if not g.documented_by))

    def backlog(self, backlog: Backlog) -> None:
        self.pending.set(backlog.pending)
        oldest = backlog.oldest_recorded_at_us
        self.lag.set(max(0.0, time.time() - oldest / 1e6) if oldest else 0.0)

    def error(self, kind: str) -> None:
        self.errors.labels(_bounded(kind, ERROR_KINDS)).inc()

    def role(self, active: bool) -> None:
        self.active.set(1 if active else 0)

    def resumed(self, head: ChainHead) -> None:
        self.head_sequence.set(head.sequence)

    def rotated(self, record: dict[str, Any]) -> None:
        self.rotations.inc()
        self._gaps.add(record)  # an automatic rotation is undocumented until a statement
        self._update_undocumented()

    def clock_skew(self, count: int) -> None:
        self.clock_skewed.inc(count)

    def chain_check_failed(self) -> None:
        self.chain_failures.inc()

    def witness_cosigned(self, witness: str) -> None:
        self.witness_cosignatures.labels(witness).inc()

    def witness_refused(self, witness: str) -> None:
        self.witness_refusals.labels(witness).inc()

    def witness_unreachable(self, witness: str) -> None:
        self.witness_errors.labels(witness).inc()

    def heartbeat(self, ok: bool) -> None:
        self._beat, self._ok = time.monotonic(), ok

    # -- health --------------------------------------------------------------------------
    def alive(self) -> bool:
        """The loop went round recently (it waits at most a minute between rounds)."""
        return time.monotonic() - self._beat < LIVENESS_WINDOW_S

    def ready(self) -> bool:
        """The last round reached the outbox and the log (active or standby)."""
        return self.alive() and self._ok


def serve(
    metrics: RelayMetrics,
    port: int,
    host: str = "127.0.0.1",
    checkpoint: Callable[[], bytes | None] | None = None,
) -> ThreadingHTTPServer:
    """/metrics, /healthz (liveness) and /ready (readiness) on a daemon thread, and
    /v1/checkpoint: the chain's latest signed checkpoint (C2SP tlog-checkpoint note)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok = metrics.alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
            elif self.path.startswith("/ready"):
                ok = metrics.ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            elif self.path.split("?")[0] == "/v1/checkpoint":
                note = checkpoint() if checkpoint else None
                if note is None:
                    self._send(404, b"no signed checkpoint yet\n")
                else:
                    self._send(200, note, "text/plain; charset=utf-8")
            else:
                self._send(404, b"try /metrics, /healthz, /ready or /v1/checkpoint\n")

        def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes are not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
