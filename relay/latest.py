"""A worker thread that handles the newest item only: a newer one replaces one not yet
taken. For the relay's checkpoint listeners (witnesses, timestamps) whose network
calls must never slow the relay, and for which only the newest checkpoint matters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("flagtrail.relay")
T = TypeVar("T")


class LatestWorker(Generic[T]):
    def __init__(self, handle: Callable[[T], object], name: str) -> None:
        self._handle = handle
        self._name = name
        self._pending: T | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, item: T) -> None:
        with self._cond:
            self._pending = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                item, self._pending, self._busy = self._pending, None, True
            try:
                self._handle(item)
            except Exception as exc:  # never let a listener kill its thread
                log.error(f"{self._name}.error", error=f"{exc.__class__.__name__}: {exc}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted item was handled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
