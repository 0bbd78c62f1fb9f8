"""Every pull leaves an ``evidence_exported`` event in the chain it pulled from."""

from __future__ import annotations

from typing import Any

from flagtrail.api.context import ApiContext
from producers.meta import record_export_receipt


def chain_receipt(ctx: ApiContext, token: str, route: str, details: dict[str, Any]) -> str:
    """Write the receipt through the outbox (the relay chains it like any event)."""
    outbox = ctx.outbox()
    with outbox.engine.begin() as conn:
        event_id = record_export_receipt(outbox, conn, token, route, details)
    ctx.metrics.pulls.labels(route, details.get("outcome", "complete")).inc()
    return event_id
