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

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flagtrail.api.config import ApiConfig
from flagtrail.api.ratelimit import RateLimiter
from producers.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

# prometheus_client picks its multiprocess mode from this variable when it is imported
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class WorkerApp:
    """The app factory a worker process calls. It travels to the worker by pickle (uvicorn
    spawns fresh interpreters), with the shared limiter, and sets up logging as the CLI did."""

    config: ApiConfig
    limiter: RateLimiter
    log_format: str
    log_level: str

    def __call__(self) -> FastAPI:
        from flagtrail.api.app import create_app
        from flagtrail.api.context import ApiContext
        from flagtrail.logs import configure

        settings = self.config.settings
        configure(self.log_format, self.log_level, urls=(settings.outbox_url, settings.log_url))
        return create_app(self.config, ApiContext.build(self.config, self.limiter))


def run_workers(
    config: ApiConfig,
    sock: socket.socket,
    uvicorn_options: dict[str, Any],
    log_format: str,
    log_level: str,
) -> None:
    """Serve with ``config.workers`` processes until SIGTERM or SIGINT."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="flagtrail-serve-") as shared:
        metrics = Path(shared, "metrics")
        metrics.mkdir()
        # set before any worker starts: each imports prometheus_client afresh
        os.environ[METRICS_DIR_VARIABLE] = str(metrics)
        limiter = RateLimiter(
            config.rate_per_minute, config.rate_burst, table=Path(shared, "rate-limits")
        )
        factory = WorkerApp(config, limiter, log_format, log_level)
        supervisor = Multiprocess(
            uvicorn.Config(factory, factory=True, workers=config.workers, **uvicorn_options),
            sockets=[sock],
        )
        supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise ConfigError("a worker of flagtrail serve failed to start; its log says why")
