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
exports index by (chain id, sequence, timestamp, hash, outbox position).

Outages: every wait on the broker (bootstrap, produce, commit, offsets, fetch) is
bounded by ``timeout_s`` (4 s), so a stopped broker surfaces as LogUnavailable
(retriable) within 5 s of a write being tried. librdkafka's own log lines and errors go through
structlog, deduplicated, never raw to stderr; kafka-python's logging is quiet.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import structlog
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from producers.errors import ConfigError
from relay.logs.base import (
    AuditLog,
    ChainConflict,
    LogEntry,
    LogUnavailable,
    check_chain_id,
    foreign_chain,
)
from relay.outbox.base import OutboxPosition

MIN_RETENTION_MS = 24 * 31 * 24 * 3600 * 1000  # SOC2 evidence: at least 24 months
DEFAULT_CHAIN = "flag-audit"

log = structlog.get_logger("flagtrail.kafka")

# kafka-python logs connection failures at ERROR with tracebacks; with no handler they
# reach stderr through logging's last resort. The errors we raise say what matters.
_KAFKA_PYTHON_LOG = logging.getLogger("kafka")
_KAFKA_PYTHON_LOG.addHandler(logging.NullHandler())
_KAFKA_PYTHON_LOG.setLevel(logging.CRITICAL)
_KAFKA_PYTHON_LOG.propagate = False


class _Deduplicated:
    """Log each kind of line once per ``every_s`` seconds and count the repeats, so an
    outage costs a few structured lines instead of a line per reconnect attempt."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def emit(self, level: int, event: str, message: str, **fields: object) -> None:
        key = event + re.sub(r"\d+", "#", message)
        now = time.monotonic()
        with self._lock:
            last, repeats = self._last.get(key, (float("-inf"), 0))
            if now - last < self.every_s:
                self._last[key] = (last, repeats + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 1000:  # a bound: keys carry no unbounded data, but still
                self._last.clear()
        if repeats:
            fields["repeated"] = repeats
        log.log(level, event, message=message, **fields)


_RDKAFKA_LINES = _Deduplicated()


class _LibrdkafkaLogger:
    """confluent-kafka's ``logger``: anything with ``log(level, fmt, *args)``."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        # called as log(level, "%s [%s] %s", facility, client name, message)
        facility, message = (str(args[0]), str(args[-1])) if len(args) == 3 else ("", fmt)
        if level < logging.INFO:
            return  # librdkafka's debug lines only when someone asks for them
        # a broker going away is retried by librdkafka and by the relay: a warning at most
        _RDKAFKA_LINES.emit(
            min(level, logging.WARNING), "kafka.librdkafka", message, facility=facility
        )


def _on_error(error: RdKafkaError) -> None:
    """librdkafka's error_cb: transport errors are retried by it and by the relay."""
    level = logging.ERROR if error.fatal() else logging.WARNING
    _RDKAFKA_LINES.emit(level, "kafka.error", error.str(), code=error.name())


def timestamp_ms(timestamp_utc: str) -> int:
    """Kafka CreateTime of a record: its timestamp_utc (RFC 3339, Z) in milliseconds."""
    return int(datetime.fromisoformat(timestamp_utc).timestamp() * 1000)


def _headers(entry: LogEntry, chain_id: str) -> list[tuple[str, bytes]]:
    headers = [
        ("flagtrail-chain", chain_id.encode()),
        ("flagtrail-seq", str(entry.sequence).encode()),
        ("flagtrail-ts", entry.timestamp_utc.encode()),
        ("flagtrail-hash", entry.record_hash.encode()),
    ]
    if entry.position is not None:
        headers.append(("flagtrail-pos", entry.position.encode().encode()))
    return headers


def _entry(message: object) -> tuple[str | None, LogEntry]:
    """The chain a record names in its header (None before chain ids) and its entry."""
    headers = {k: v.decode() for k, v in message.headers}  # type: ignore[attr-defined]
    position = headers.get("flagtrail-pos")
    return headers.get("flagtrail-chain"), LogEntry(
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
        *,
        chain_id: str = DEFAULT_CHAIN,
        replication_factor: int = 3,
        min_insync_replicas: int = 2,
        retention_ms: int = -1,
        create_topic: bool = True,
        timeout_s: float = 4.0,
    ) -> None:
        self.chain_id = check_chain_id(chain_id)
        self.servers = servers
        self.topic = topic
        self.url = f"kafka://{','.join(servers)}/{topic}"
        self.partition = TopicPartition(topic, 0)
        self.transactional_id = f"flagtrail-relay-{topic}"
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.retention_ms = retention_ms
        # a reader (create_topic=False) never creates a topic and never writes
        self.create_topic = create_topic
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        self._topic_checked = False
        self._written_sequence: int | None = None  # last sequence this writer committed
        self._down: str | None = None  # librdkafka said every broker is down (why)

    @property
    def _timeout_ms(self) -> int:
        return int(self.timeout_s * 1000)

    # -- topic set-up -------------------------------------------------------------------
    def ensure_topic(self) -> None:
        """Create the chain's topic when missing; refuse one that cannot hold evidence."""
        if self._topic_checked:
            return
        admin = self._admin()
        try:
            if self.topic not in admin.list_topics():
                if not self.create_topic:
                    raise ConfigError(f"log {self.url} does not exist (no such Kafka topic)")
                self._create(admin)
            self._validate(admin)
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka at {','.join(self.servers)}: {exc}") from exc
        finally:
            admin.close()
        self._topic_checked = True

    def _create(self, admin: KafkaAdminClient) -> None:
        try:
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
        except TopicAlreadyExistsError:
            pass  # a peer created it; validated below like any existing topic
        except KafkaError as exc:
            if "REPLICATION_FACTOR" in type(exc).__name__.upper() or "replication" in str(exc):
                raise ConfigError(
                    f"cannot create Kafka topic {self.topic!r} with replication factor "
                    f"{self.replication_factor}: the cluster has fewer brokers. Add brokers "
                    "or lower FLAGTRAIL_KAFKA_REPLICATION_FACTOR (1 only for development)."
                ) from exc
            raise

    def _validate(self, admin: KafkaAdminClient) -> None:
        (described,) = admin.describe_topics([self.topic])
        partitions = described.get("partitions") or []
        if len(partitions) != 1:
            raise ConfigError(
                f"Kafka topic {self.topic!r} has {len(partitions)} partitions; a chain needs "
                "exactly one (total order). Use a new single-partition topic for this chain."
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
        if self.create_topic:  # the writer refuses weak durability; readers read anyway
            self._validate_durability(partitions[0], configs)

    def _validate_durability(self, partition: dict, configs: dict) -> None:
        replicas = len(partition.get("replica_nodes") or partition.get("replicas") or [])
        min_isr = int(configs["min.insync.replicas"]["value"])
        if replicas < self.replication_factor or min_isr < self.min_insync_replicas:
            raise ConfigError(
                f"Kafka topic {self.topic!r} has replication factor {replicas} and "
                f"min.insync.replicas={min_isr}; the relay needs at least "
                f"{self.replication_factor} and {self.min_insync_replicas} "
                "(FLAGTRAIL_KAFKA_REPLICATION_FACTOR, FLAGTRAIL_KAFKA_MIN_INSYNC_REPLICAS)"
            )

    def _admin(self) -> KafkaAdminClient:
        try:
            return KafkaAdminClient(
                bootstrap_servers=self.servers,
                request_timeout_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
            )
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka at {','.join(self.servers)}: {exc}") from exc

    # -- writing ------------------------------------------------------------------------
    def _writer(self) -> Producer:
        if not self.create_topic:
            raise ConfigError(f"log {self.url} was opened read-only")
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
                    "message.timeout.ms": self._timeout_ms,
                    "socket.timeout.ms": self._timeout_ms,
                    "reconnect.backoff.max.ms": 1_000,
                    "logger": _LibrdkafkaLogger(),
                    "error_cb": self._on_error,
                }
            )
            try:
                # fences every older relay of this chain and settles what it left open
                producer.init_transactions(self.timeout_s)
            except KafkaException as exc:
                raise self._unavailable("cannot start the producer", exc) from exc
            self._producer = producer
        return self._producer

    def _on_error(self, error: RdKafkaError) -> None:
        _on_error(error)
        if error.code() == RdKafkaError._ALL_BROKERS_DOWN:
            self._down = error.str()

    def ping(self) -> None:
        """Serve librdkafka's callbacks; LogUnavailable once it said all brokers are down
        (cleared by the next producer, which the relay makes when it resumes)."""
        if self._producer is None:
            return
        self._producer.poll(0)
        if self._down is not None:
            down, self._down = self._down, None
            self._drop_writer()
            raise LogUnavailable(f"Kafka log {self.url} is unavailable: {down}")

    def _unavailable(self, doing: str, exc: BaseException) -> Exception:
        """librdkafka's errors at this edge: a fatal one (fenced, misconfigured) is
        retried too, from a fresh producer, which is what fencing asks of us."""
        error = exc.args[0] if exc.args and isinstance(exc.args[0], RdKafkaError) else None
        if error is not None and error.code() in (
            RdKafkaError.TOPIC_AUTHORIZATION_FAILED,
            RdKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            RdKafkaError.CLUSTER_AUTHORIZATION_FAILED,
            RdKafkaError._INVALID_ARG,
        ):
            return ConfigError(f"Kafka log {self.url}: {doing}: {error.str()}")
        reason = error.str() if error is not None else str(exc)
        return LogUnavailable(f"Kafka log {self.url} is unavailable: {doing}: {reason}")

    def _drop_writer(self) -> None:
        self._producer = None  # librdkafka closes it when the object is collected
        self._down = None

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
        for entry in entries:
            if foreign_chain(entry.line, self.chain_id):
                raise ConfigError(
                    f"record {entry.sequence} names another chain than {self.chain_id!r}: "
                    "open the log with the record's chain id"
                )
        producer = self._writer()
        try:
            producer.begin_transaction()
            for entry in entries:
                self._produce(producer, entry)
            producer.commit_transaction(self.timeout_s)  # flushes, then commits
            self._written_sequence = entries[-1].sequence if entries else after_sequence
        except (KafkaException, BufferError) as exc:
            # fenced, timed out or broker gone: whether the commit landed is decided
            # by the tail, which the relay re-reads after re-initializing
            self._drop_writer()
            self._written_sequence = None
            raise self._unavailable(f"append to {self.topic} failed", exc) from exc

    def _produce(self, producer: Producer, entry: LogEntry) -> None:
        record = {
            "topic": self.topic,
            "value": entry.line.encode(),
            "partition": 0,
            "timestamp": timestamp_ms(entry.timestamp_utc),
            "headers": _headers(entry, self.chain_id),
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
                request_timeout_ms=max(self._timeout_ms, 1_000),
                bootstrap_timeout_ms=self._timeout_ms,
                max_partition_fetch_bytes=8 << 20,
                fetch_max_bytes=64 << 20,
            )
            consumer.assign([self.partition])
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka log {self.url} is unavailable: {exc}") from exc
        return consumer

    def _bounds(self, consumer: KafkaConsumer) -> tuple[int, int]:
        first = consumer.beginning_offsets([self.partition])[self.partition]
        stable_end = consumer.end_offsets([self.partition])[self.partition]  # LSO
        return first, stable_end

    def _own(self, message: object) -> LogEntry:
        """The entry of a record of this chain; a record of another chain is refused."""
        chain, entry = _entry(message)
        if (chain is not None and chain != self.chain_id) or (
            chain is None and foreign_chain(entry.line, self.chain_id)
        ):
            raise ConfigError(
                f"Kafka topic {self.topic!r} holds chain {chain or 'another chain'!r}, not "
                f"{self.chain_id!r}: use that chain's id or this chain's own topic"
            )
        return entry

    @contextlib.contextmanager
    def _reading(self, doing: str) -> Iterator[KafkaConsumer]:
        consumer = self._reader()
        try:
            yield consumer
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka log {self.url} is unavailable: {doing}: {exc}") from exc
        finally:
            consumer.close()

    def tail(self) -> LogEntry | None:
        """The last committed record; the last offsets are often transaction markers."""
        self.ensure_topic()
        with self._reading("reading the tail") as consumer:
            first, end = self._bounds(consumer)
            window = 16
            while end > first:
                start = max(first, end - window)
                consumer.seek(self.partition, start)
                last = None
                for message in self._drain(consumer, end):
                    last = message
                if last is not None:
                    return self._own(last)
                if start == first:
                    return None
                window *= 8
            return None

    def entry_at(self, sequence: int) -> LogEntry | None:
        """Binary search over offsets: sequences grow with offsets (one partition, one
        writer), and the record of ``sequence`` sits at offset ``sequence - 1`` or later
        (transaction markers and aborted records take offsets too)."""
        if sequence < 1:
            return None
        self.ensure_topic()
        with self._reading("reading an entry") as consumer:
            first, end = self._bounds(consumer)
            lo, hi = max(first, sequence - 1), end
            while lo < hi:
                mid = (lo + hi) // 2
                consumer.seek(self.partition, mid)
                message = next(self._drain(consumer, end), None)
                if message is None:
                    hi = mid
                    continue
                entry = self._own(message)
                if entry.sequence == sequence:
                    return entry
                if entry.sequence > sequence:
                    hi = mid
                else:
                    lo = message.offset + 1  # type: ignore[attr-defined]
            return None

    def _drain(self, consumer: KafkaConsumer, end: int) -> Iterator[object]:
        """Committed messages from the current position up to offset ``end``."""
        idle_deadline = time.monotonic() + self.timeout_s
        while consumer.position(self.partition) < end:
            batch = consumer.poll(timeout_ms=500, max_records=5000).get(self.partition, [])
            if batch:
                idle_deadline = time.monotonic() + self.timeout_s
            elif time.monotonic() > idle_deadline:
                raise LogUnavailable(
                    f"Kafka log {self.url} is unavailable: no progress reading to offset {end} "
                    f"in {self.timeout_s:g} s"
                )
            for message in batch:
                if message.offset >= end:
                    return
                yield message

    def read(self, since: str | None = None, until: str | None = None) -> Iterator[LogEntry]:
        """Seek by time to ``since`` (records carry their timestamp_utc as CreateTime)."""
        self.ensure_topic()
        with self._reading("reading") as consumer:
            first, end = self._bounds(consumer)
            start = first
            if since:
                found = consumer.offsets_for_times({self.partition: timestamp_ms(since)})
                hit = found.get(self.partition)
                start = hit.offset if hit is not None else end
            consumer.seek(self.partition, start)
            for message in self._drain(consumer, end):
                entry = self._own(message)
                if since and entry.timestamp_utc < since:
                    continue
                if until and entry.timestamp_utc >= until:
                    return
                yield entry

    def close(self) -> None:
        self._drop_writer()
