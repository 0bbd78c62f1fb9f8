"""The log at scale: one Kafka topic per chain, one partition, transactional appends.

Writes go through librdkafka (confluent-kafka): kafka-python's producer peaked
at 7,600 records/s on this machine (measured alone), below the relay's goal;
topic set-up and reads stay on kafka-python. Exactly once: every batch is one
Kafka transaction of an idempotent producer whose ``transactional_id`` is fixed
per chain, so a restarted or second relay
fences the old one (its next send or commit fails) and any transaction it left
open is aborted. The tail is read with ``read_committed`` *after*
``init_transactions``, so it is the truth every append then builds on. Each
record's value is exactly one export line; headers carry what the relay and
exports index by (sequence, timestamp, hash, outbox position).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

from confluent_kafka import KafkaException, Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from producers.errors import ConfigError
from relay.logs.base import AuditLog, ChainConflict, LogEntry, LogUnavailable
from relay.outbox.base import OutboxPosition

MIN_RETENTION_MS = 24 * 31 * 24 * 3600 * 1000  # SOC2 evidence: at least 24 months
# librdkafka logs through the standard logging module, not to stderr
_LIBRDKAFKA_LOG = logging.getLogger("flagtrail.kafka.librdkafka")


def timestamp_ms(timestamp_utc: str) -> int:
    """Kafka CreateTime of a record: its timestamp_utc (RFC 3339, Z) in milliseconds."""
    return int(datetime.fromisoformat(timestamp_utc).timestamp() * 1000)


def _headers(entry: LogEntry) -> list[tuple[str, bytes]]:
    headers = [
        ("flagtrail-seq", str(entry.sequence).encode()),
        ("flagtrail-ts", entry.timestamp_utc.encode()),
        ("flagtrail-hash", entry.record_hash.encode()),
    ]
    if entry.position is not None:
        headers.append(("flagtrail-pos", entry.position.encode().encode()))
    return headers


def _entry(message: object) -> LogEntry:
    headers = {k: v.decode() for k, v in message.headers}  # type: ignore[attr-defined]
    position = headers.get("flagtrail-pos")
    return LogEntry(
        int(headers["flagtrail-seq"]),
        headers["flagtrail-ts"],
        headers["flagtrail-hash"],
        message.value.decode(),  # type: ignore[attr-defined]
        OutboxPosition.decode(position) if position else None,
    )


class KafkaAuditLog(AuditLog):
    def __init__(
        self,
        servers: list[str],
        topic: str,
        replication_factor: int = 1,
        min_insync_replicas: int = 1,
        retention_ms: int = -1,
        create_topic: bool = True,
        request_timeout_ms: int = 15_000,
    ) -> None:
        self.servers = servers
        self.topic = topic
        self.url = f"kafka://{','.join(servers)}/{topic}"
        self.partition = TopicPartition(topic, 0)
        self.transactional_id = f"flagtrail-relay-{topic}"
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.retention_ms = retention_ms
        self.create_topic = create_topic
        self.request_timeout_ms = request_timeout_ms
        self._producer: Producer | None = None
        self._topic_checked = False
        self._written_sequence: int | None = None  # last sequence this writer committed

    # -- topic set-up -------------------------------------------------------------------
    def ensure_topic(self) -> None:
        """Create the chain's topic when missing; refuse one that cannot hold evidence."""
        if self._topic_checked:
            return
        admin = self._admin()
        try:
            if self.topic not in admin.list_topics():
                if not self.create_topic:
                    raise ConfigError(f"Kafka topic {self.topic!r} does not exist")
                with contextlib.suppress(TopicAlreadyExistsError):  # a peer created it
                    admin.create_topics(
                        {
                            self.topic: {
                                "num_partitions": 1,
                                "replication_factor": self.replication_factor,
                                "configs": {
                                    "cleanup.policy": "delete",
                                    "retention.ms": str(self.retention_ms),
                                    "min.insync.replicas": str(self.min_insync_replicas),
                                    "message.timestamp.type": "CreateTime",
                                    "unclean.leader.election.enable": "false",
                                },
                            }
                        },
                        wait_for_metadata=True,
                    )
            self._validate(admin)
        finally:
            admin.close()
        self._topic_checked = True

    def _validate(self, admin: KafkaAdminClient) -> None:
        (described,) = admin.describe_topics([self.topic])
        partitions = len(described.get("partitions") or [])
        if partitions != 1:
            raise ConfigError(
                f"Kafka topic {self.topic!r} has {partitions} partitions; a chain needs exactly "
                "one (total order). Use a new single-partition topic for this chain."
            )
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, self.topic)], config_filter="all"
        )["topic"][self.topic]
        policy = configs["cleanup.policy"]["value"]
        if "compact" in policy:
            raise ConfigError(
                f"Kafka topic {self.topic!r} has cleanup.policy={policy}: compaction drops "
                "records and breaks the chain. Use cleanup.policy=delete."
            )
        retention = int(configs["retention.ms"]["value"])
        if retention != -1 and retention < MIN_RETENTION_MS:
            raise ConfigError(
                f"Kafka topic {self.topic!r} keeps records {retention} ms; SOC2 evidence needs "
                "retention.ms=-1 or at least 24 months"
            )

    def _admin(self) -> KafkaAdminClient:
        try:
            return KafkaAdminClient(
                bootstrap_servers=self.servers, request_timeout_ms=self.request_timeout_ms
            )
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka at {','.join(self.servers)}: {exc}") from exc

    # -- writing ------------------------------------------------------------------------
    def _writer(self) -> Producer:
        if self._producer is None:
            self.ensure_topic()
            producer = Producer(
                {
                    "bootstrap.servers": ",".join(self.servers),
                    "transactional.id": self.transactional_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "transaction.timeout.ms": 60_000,
                    "message.timeout.ms": self.request_timeout_ms,
                    "socket.timeout.ms": self.request_timeout_ms,
                    "logger": _LIBRDKAFKA_LOG,
                }
            )
            try:
                # fences every older relay of this chain and settles what it left open
                producer.init_transactions(self.request_timeout_ms / 1000)
            except KafkaException as exc:
                raise LogUnavailable(f"Kafka producer for {self.topic}: {exc}") from exc
            self._producer = producer
        return self._producer

    def _drop_writer(self) -> None:
        self._producer = None  # librdkafka closes it when the object is collected

    def claim(self) -> None:
        """init_transactions: fence older relays and settle any transaction they left open."""
        self._drop_writer()
        self._writer()
        tail = self.tail()
        self._written_sequence = tail.sequence if tail else 0

    def append(self, entries: Sequence[LogEntry], after_sequence: int) -> None:
        # Other processes are kept out by fencing; this catches a stale caller here.
        if self._written_sequence is not None and after_sequence != self._written_sequence:
            raise ChainConflict(
                f"log tail is sequence {self._written_sequence}, the caller "
                f"expected {after_sequence}"
            )
        producer = self._writer()
        timeout = self.request_timeout_ms / 1000
        try:
            producer.begin_transaction()
            for entry in entries:
                self._produce(producer, entry)
            producer.commit_transaction(timeout)  # flushes, then commits
            self._written_sequence = entries[-1].sequence if entries else after_sequence
        except (KafkaException, BufferError) as exc:
            # fenced, timed out or broker gone: whether the commit landed is decided
            # by the tail, which the relay re-reads after re-initializing
            self._drop_writer()
            self._written_sequence = None
            raise LogUnavailable(f"Kafka append to {self.topic} failed: {exc}") from exc

    def _produce(self, producer: Producer, entry: LogEntry) -> None:
        record = {
            "topic": self.topic,
            "value": entry.line.encode(),
            "partition": 0,
            "timestamp": timestamp_ms(entry.timestamp_utc),
            "headers": _headers(entry),
        }
        try:
            producer.produce(**record)
        except BufferError:  # local queue full: let librdkafka send, then retry once
            producer.poll(1.0)
            producer.produce(**record)

    # -- reading ------------------------------------------------------------------------
    def _reader(self) -> KafkaConsumer:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.servers,
                isolation_level="read_committed",
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=max(self.request_timeout_ms, 30_000) + 5_000,
                max_partition_fetch_bytes=8 << 20,
                fetch_max_bytes=64 << 20,
            )
            consumer.assign([self.partition])
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka consumer for {self.topic}: {exc}") from exc
        return consumer

    def _bounds(self, consumer: KafkaConsumer) -> tuple[int, int]:
        first = consumer.beginning_offsets([self.partition])[self.partition]
        stable_end = consumer.end_offsets([self.partition])[self.partition]  # LSO
        return first, stable_end

    def tail(self) -> LogEntry | None:
        """The last committed record; the last offsets are often transaction markers."""
        consumer = self._reader()
        try:
            first, end = self._bounds(consumer)
            window = 16
            while end > first:
                start = max(first, end - window)
                consumer.seek(self.partition, start)
                last = None
                for message in self._drain(consumer, end):
                    last = message
                if last is not None:
                    return _entry(last)
                if start == first:
                    return None
                window *= 8
            return None
        finally:
            consumer.close()

    def _drain(self, consumer: KafkaConsumer, end: int) -> Iterator[object]:
        """Committed messages from the current position up to offset ``end``."""
        idle_deadline = time.monotonic() + 30
        while consumer.position(self.partition) < end:
            batch = consumer.poll(timeout_ms=500, max_records=5000).get(self.partition, [])
            if batch:
                idle_deadline = time.monotonic() + 30
            elif time.monotonic() > idle_deadline:
                raise LogUnavailable(f"Kafka topic {self.topic}: no progress reading to {end}")
            for message in batch:
                if message.offset >= end:
                    return
                yield message

    def read(self, since: str | None = None, until: str | None = None) -> Iterator[LogEntry]:
        """Seek by time to ``since`` (records carry their timestamp_utc as CreateTime)."""
        self.ensure_topic()
        consumer = self._reader()
        try:
            first, end = self._bounds(consumer)
            start = first
            if since:
                found = consumer.offsets_for_times({self.partition: timestamp_ms(since)})
                hit = found.get(self.partition)
                start = hit.offset if hit is not None else end
            consumer.seek(self.partition, start)
            for message in self._drain(consumer, end):
                entry = _entry(message)
                if since and entry.timestamp_utc < since:
                    continue
                if until and entry.timestamp_utc >= until:
                    return
                yield entry
        finally:
            consumer.close()

    def close(self) -> None:
        self._drop_writer()
