"""`flagtrail serve --workers N`: N processes answer on one socket.

One Python process answers on one core: its requests share one interpreter lock. uvicorn's
own supervisor (uvicorn.supervisors.Multiprocess) starts the workers, restarts one that
dies and stops them all on SIGTERM. What the workers must agree on is shared through a
private folder that lives as long as the server: the rate limiter's buckets (a token's
limit holds across workers) and Prometheus's multiprocess files (/metrics counts every
worker's requests, whichever worker answers the scrape). Stream slots are divided: each
worker holds its share of --max-streams, so memory stays bounded per process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn
from uvicorn.supervisors import multiprocess

from flagtrail.api.config import ApiConfig
from flagtrail.api.ratelimit import RateLimiter
from producers import errors
from producers.errors import ConfigError, FlagtrailError

if TYPE_CHECKING:
    from fastapi import FastAPI

# prometheus_client picks its multiprocess mode from this variable when it is imported
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# how long pulls cancelled at shutdown get to chain their unfinished receipts
RECEIPT_GRACE_S = 10


class ReceiptKeepingServer(uvicorn.Server):
    """uvicorn's server, except that the pulls it cancels when its shutdown grace period
    runs out are given the time to chain their receipts. uvicorn only cancels them, then
    re-raises the SIGTERM it caught, which kills the process before a cancelled pull
    reaches its (shielded) receipt: the pull would go unrecorded."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        cancelled = [task for task in self.server_state.tasks if not task.done()]
        if cancelled:
            await asyncio.wait(cancelled, timeout=RECEIPT_GRACE_S)


class _Worker(multiprocess.Process):
    """uvicorn's worker process, serving with ReceiptKeepingServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ReceiptKeepingServer(config=self.config)
        return self._server


@contextmanager
def _workers_keep_receipts() -> Iterator[None]:
    """uvicorn's supervisor has no hook for its worker class: swap it while it runs."""
    original = multiprocess.Process
    multiprocess.Process = _Worker  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = original  # type: ignore[misc]


@dataclass(frozen=True)
class WorkerApp:
    """The app factory a worker process calls. It travels to the worker by pickle (uvicorn
    spawns fresh interpreters), with the shared limiter, and sets up logging as the CLI did."""

    config: ApiConfig
    limiter: RateLimiter
    log_format: str
    log_level: str
    # the server's private folder: the start failure a worker leaves there for `serve`
    # to say, and the lock the workers take turns committing receipts through
    folder: Path

    @property
    def failure(self) -> Path:
        return self.folder / "start-failure"

    def __call__(self) -> FastAPI:
        from flagtrail.api.app import create_app
        from flagtrail.api.context import ApiContext
        from flagtrail.logs import configure

        try:
            settings = self.config.settings
            configure(self.log_format, self.log_level, urls=(settings.outbox_url, settings.log_url))
            turns = self.folder / "receipt-turns"
            return create_app(self.config, ApiContext.build(self.config, self.limiter, turns))
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> NoReturn:
        """Exit with uvicorn's start-up failure code: its supervisor then stops the server
        instead of restarting a worker that would fail the same way forever (printing a
        traceback each time). The reason goes to `serve`, which says it once."""
        from uvicorn.config import STARTUP_FAILURE

        from flagtrail.failures import translate

        error = translate(exc)
        if error is None:  # a bug, not a setting: the traceback is what helps, once
            traceback.print_exc()
            error = ConfigError(
                f"a worker of flagtrail serve failed to start ({type(exc).__name__}; "
                "the traceback above says where)"
            )
        self.failure.write_text(json.dumps({"error": type(error).__name__, "message": str(error)}))
        sys.exit(STARTUP_FAILURE)


def _start_failure(failure: Path) -> FlagtrailError:
    """The error a worker left in ``failure``, as the class it was (its exit code)."""
    try:
        said = json.loads(failure.read_text())
        kind = getattr(errors, said["error"], ConfigError)
        if not (isinstance(kind, type) and issubclass(kind, FlagtrailError)):
            kind = ConfigError
        return kind(said["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return ConfigError("a worker of flagtrail serve failed to start; its log says why")


def run_workers(
    config: ApiConfig,
    sock: socket.socket,
    uvicorn_options: dict[str, Any],
    log_format: str,
    log_level: str,
) -> None:
    """Serve with ``config.workers`` processes until SIGTERM or SIGINT."""
    from uvicorn.config import STARTUP_FAILURE

    with tempfile.TemporaryDirectory(prefix="flagtrail-serve-") as shared:
        metrics = Path(shared, "metrics")
        metrics.mkdir()
        # set before any worker starts: each imports prometheus_client afresh
        os.environ[METRICS_DIR_VARIABLE] = str(metrics)
        limiter = RateLimiter(
            config.rate_per_minute, config.rate_burst, table=Path(shared, "rate-limits")
        )
        factory = WorkerApp(config, limiter, log_format, log_level, Path(shared))
        supervisor = multiprocess.Multiprocess(
            uvicorn.Config(factory, factory=True, workers=config.workers, **uvicorn_options),
            sockets=[sock],
        )
        with _workers_keep_receipts():
            supervisor.run()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            raise _start_failure(factory.failure)
