"""Audit log backends; ``open_log`` picks one from the log URL."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlparse

from producers.errors import ConfigError
from relay.logs.base import (
    AuditLog,
    ChainConflict,
    LogEntry,
    LogUnavailable,
    check_chain_id,
)

DEFAULT_CHAIN = "flag-audit"
# Kafka durability: production defaults; the single local broker exports 1 and 1
KAFKA_SETTINGS = {
    "replication_factor": ("FLAGTRAIL_KAFKA_REPLICATION_FACTOR", 3),
    "min_insync_replicas": ("FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS", 2),
}


def open_log(
    url: str, chain_id: str | None = None, *, read_only: bool = False, **options: object
) -> AuditLog:
    """``sqlite:///log.db`` or ``kafka://host:port[,host:port][/topic][?replication_factor=N
    &min_insync_replicas=M]`` for the chain ``chain_id`` (default: FLAGTRAIL_CHAIN, then
    flag-audit). Without a topic, the chain's topic is named after the chain.
    ``read_only=True`` (export, verify, gap scan, drift) never creates or changes a file
    or topic: a missing one is a ConfigError."""
    chain = check_chain_id(chain_id or os.environ.get("FLAGTRAIL_CHAIN") or DEFAULT_CHAIN)
    if url.startswith("sqlite:///"):
        from relay.logs.sqlite import SQLiteAuditLog

        path = url.removeprefix("sqlite:///")
        if not path or "?" in path or "\0" in path:
            raise ConfigError(f"log URL {url!r} must look like sqlite:///log.db")
        return SQLiteAuditLog(path, chain, read_only=read_only)
    if url.startswith("kafka://"):
        from relay.logs.kafka import KafkaAuditLog

        parsed = urlparse(url)
        topic = parsed.path.strip("/") or chain
        if not parsed.netloc or "/" in topic:
            raise ConfigError(
                f"Kafka log URL {url!r} must look like kafka://host:port/topic "
                "or kafka://host:port (the chain's own topic)"
            )
        settings = _kafka_settings(url, parsed.query)
        settings.update(options)
        return KafkaAuditLog(
            parsed.netloc.split(","),
            topic,
            chain_id=chain,
            create_topic=not read_only,
            **settings,  # type: ignore[arg-type]
        )
    raise ConfigError(
        f"log URL {url!r} is not supported: use sqlite:///log.db or kafka://host:port/topic"
    )


def _kafka_settings(url: str, query: str) -> dict[str, object]:
    """Replication settings: the URL's query, then the environment, then the defaults."""
    given = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(given) - set(KAFKA_SETTINGS)
    if unknown:
        raise ConfigError(
            f"Kafka log URL {url!r} has unknown parameters {sorted(unknown)}: use "
            f"{' and '.join(KAFKA_SETTINGS)}"
        )
    values: dict[str, object] = {}
    for name, (env, default) in KAFKA_SETTINGS.items():
        text = given.get(name) or os.environ.get(env) or str(default)
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{name} ({env}) must be a whole number of at least 1, not {text!r}")
        values[name] = value
    if values["min_insync_replicas"] > values["replication_factor"]:  # type: ignore[operator]
        raise ConfigError(
            f"min_insync_replicas ({values['min_insync_replicas']}) cannot exceed "
            f"replication_factor ({values['replication_factor']}): no write could succeed"
        )
    return values


__all__ = [
    "AuditLog",
    "ChainConflict",
    "LogEntry",
    "LogUnavailable",
    "check_chain_id",
    "open_log",
]
