"""Every pull leaves an ``evidence_exported`` event in the chain it pulled from.

Receipts go through the outbox like any event (the relay chains them). Concurrent
pulls share one transaction (group commit): one fsync for all of them instead of
one each, so twenty clients do not queue behind each other's disk flushes. A pull
waits for its own receipt to commit before its stream completes.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from producers.meta import record_export_receipt

if TYPE_CHECKING:
    from flagtrail.api.context import ApiContext
    from producers.outbox import Outbox

MAX_GROUP = 256
_Item = tuple[str, str, dict[str, Any], "Future[str]"]


class ReceiptWriter:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._queue: queue.Queue[_Item] = queue.Queue()
        threading.Thread(target=self._run, name="flagtrail-receipts", daemon=True).start()

    def write(self, token: str, route: str, details: dict[str, Any]) -> str:
        """Chain a receipt; returns its event id once committed (raises if it could not be)."""
        done: Future[str] = Future()
        self._queue.put((token, route, details, done))
        return done.result(timeout=120)

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit(group)
            except Exception:
                for item in group:  # one bad receipt must not fail the others: one by one
                    try:
                        self._commit([item])
                    except Exception as exc:
                        item[3].set_exception(exc)

    def _commit(self, group: list[_Item]) -> None:
        with self.outbox.engine.begin() as conn:
            ids = [record_export_receipt(self.outbox, conn, t, r, d) for t, r, d, _ in group]
        for event_id, item in zip(ids, group, strict=True):
            item[3].set_result(event_id)


def chain_receipt(ctx: ApiContext, token: str, route: str, details: dict[str, Any]) -> str:
    event_id = ctx.receipts.write(token, route, details)
    ctx.metrics.pulls.labels(route, details.get("outcome", "complete")).inc()
    return event_id
