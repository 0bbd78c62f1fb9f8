"""Audit log backends; ``open_log`` picks one from the log URL."""

from __future__ import annotations

from urllib.parse import urlparse

from producers.errors import ConfigError
from relay.logs.base import AuditLog, ChainConflict, LogEntry, LogUnavailable


def open_log(url: str, **options: object) -> AuditLog:
    """``sqlite:///log.db`` or ``kafka://host:port[,host:port]/topic``."""
    if url.startswith("sqlite:///"):
        from relay.logs.sqlite import SQLiteAuditLog

        return SQLiteAuditLog(url.removeprefix("sqlite:///"))
    if url.startswith("kafka://"):
        from relay.logs.kafka import KafkaAuditLog

        parsed = urlparse(url)
        topic = parsed.path.strip("/")
        if not parsed.netloc or not topic or "/" in topic:
            raise ConfigError(f"Kafka log URL {url!r} must look like kafka://host:port/topic")
        return KafkaAuditLog(parsed.netloc.split(","), topic, **options)  # type: ignore[arg-type]
    raise ConfigError(
        f"log URL {url!r} is not supported: use sqlite:///log.db or kafka://host:port/topic"
    )


__all__ = ["AuditLog", "ChainConflict", "LogEntry", "LogUnavailable", "open_log"]
