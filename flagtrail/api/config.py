"""The API server's settings, resolved once by `flagtrail serve` and passed to create_app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flagtrail.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ApiConfig:
    settings: Settings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # a SOC2 Type II period is 6 to 12 months: a year and a bit, not a century
    max_window_days: int = 400
    rate_per_minute: int = 120
    rate_burst: int | None = None
    chunk_bytes: int = 256 * 1024
    # streams open at once, across all workers; more wait their turn. Each holds a log
    # reader whose sort of the window (SQLite orders it by sequence) costs ~10 MB for a
    # busy week
    max_streams: int = 8
    # processes serving the one socket: one Python process answers on one core
    workers: int = 1
    # how often a stream re-reads its token: a revoked token stops a long pull
    token_recheck_s: float = 1.0
    package_tmp: Path | None = None  # where /v1/package builds its archive (default: TMPDIR)
