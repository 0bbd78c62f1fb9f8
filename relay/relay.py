"""The relay: the single writer of a chain, moving committed outbox rows into the log.

Crash safety comes from the order of its three steps. (1) read pending rows
after the chain head's outbox position; (2) append them, sealed, to the log in
one atomic batch that only succeeds on top of the tail this relay knows;
(3) mark them relayed. A crash before (2) loses nothing (rows stay pending); a
crash between (2) and (3) is repaired at start: the log's tail carries the
outbox position, so rows up to it are marked, never appended twice.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from producers.controls import controls_for_meta
from producers.errors import FlagtrailError
from producers.events import event_record, format_timestamp, utc_now
from relay.canonical import GENESIS, LineError, chain_hash, line_parts, seal
from relay.lease import Lease
from relay.logs.base import AuditLog, ChainConflict, LogEntry
from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource

log = structlog.get_logger("flagtrail.relay")


@dataclass(frozen=True)
class ChainHead:
    sequence: int  # 0 for an empty chain
    record_hash: str
    timestamp_utc: str
    position: OutboxPosition | None

    @classmethod
    def of(cls, entry: LogEntry | None) -> ChainHead:
        if entry is None:
            return cls(0, GENESIS, "", None)
        return cls(entry.sequence, entry.record_hash, entry.timestamp_utc, entry.position)

    def checkpoint(self) -> Checkpoint | None:
        if self.position is None:
            return None
        return Checkpoint(self.sequence, self.record_hash, self.position)


class RelayError(FlagtrailError):
    """A row the relay cannot chain (corrupt payload): it stops rather than skip it."""


@dataclass
class BatchResult:
    count: int
    first_sequence: int
    last_sequence: int
    seconds: float
    entries: list[LogEntry]
    records: list[dict[str, Any]]
    appended_at: float  # time.time() right after the log committed


class RelayObserver:
    """Hooks for metrics and logs; every method is optional (no-op here)."""

    def batch(self, result: BatchResult) -> None: ...
    def backlog(self, backlog: Backlog) -> None: ...
    def error(self, kind: str) -> None: ...
    def role(self, active: bool) -> None: ...
    def resumed(self, head: ChainHead) -> None: ...
    def chain_check_failed(self) -> None: ...
    def rotated(self) -> None: ...
    def heartbeat(self, ok: bool) -> None: ...


def _decode(payload: str) -> dict:
    """orjson for speed; json where orjson refuses (integers beyond 64 bits, NaN).
    Both yield the same objects for the JSON they accept, and the hashed bytes
    are always json.dumps' (relay.canonical)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def now_us() -> int:
    return time.time_ns() // 1000


def seal_records(
    head: ChainHead, items: list[tuple[dict[str, Any], OutboxPosition | None]], relayed_at: str
) -> list[LogEntry]:
    """Chain records after ``head``: sequence, monotonic timestamp_utc, prev_hash, hash.

    A ``sentinel_rotation`` record restarts the chain from GENESIS and names the
    head it leaves behind.
    """
    entries: list[LogEntry] = []
    prev, sequence, stamp = head.record_hash, head.sequence, head.timestamp_utc
    for record, position in items:
        sequence += 1
        # commit order can differ from clock order by a transaction's length;
        # timestamp_utc never decreases so a time window is one run of the chain
        stamp = max(record["recorded_at"], stamp)
        record["sequence"] = sequence
        record["timestamp_utc"] = stamp
        record["relayed_at"] = relayed_at
        if record.get("action") == "sentinel_rotation":
            meta = record.setdefault("meta", {}) or {}
            meta.setdefault("previous_sequence", sequence - 1)
            meta.setdefault("previous_hash", prev)
            record["meta"] = meta
            prev = GENESIS
        prev, line = seal(record, prev)
        entries.append(LogEntry(sequence, stamp, prev, line, position))
    return entries


def _decode_rows(rows: list[OutboxRow]) -> list[tuple[dict[str, Any], OutboxPosition]]:
    items = []
    for row in rows:
        try:
            record = _decode(row.payload)
            if not isinstance(record.get("recorded_at"), str):
                raise KeyError("recorded_at")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RelayError(
                f"outbox row {row.position.encode()} is not a flagtrail event: {exc}"
            ) from exc
        items.append((record, row.position))
    return items


def tail_problem(entry: LogEntry) -> str | None:
    """Why the log's last record cannot be trusted as the chain head, if it cannot."""
    try:
        prev, payload, digest = line_parts(entry.line.encode())
    except LineError as exc:
        return f"the tail record (sequence {entry.sequence}) is unreadable: {exc}"
    if digest != entry.record_hash or chain_hash(prev, payload.decode()) != digest:
        return f"the tail record (sequence {entry.sequence}) fails its hash"
    return None


class Relay:
    def __init__(
        self,
        source: OutboxSource,
        audit_log: AuditLog,
        *,
        batch_size: int = 2000,
        observer: RelayObserver | None = None,
    ) -> None:
        self.source = source
        self.log = audit_log
        self.batch_size = batch_size
        self.observer = observer or RelayObserver()
        self.head = ChainHead.of(None)

    def resume(self) -> ChainHead:
        """Adopt the log's tail as the chain head; finish marking a crashed batch.

        When the tail cannot be trusted (unreadable, or the log is empty although
        this outbox recorded a relayed head), start a new epoch with a
        ``sentinel_rotation`` that says why: the only automatic rotation.
        """
        self.log.claim()
        tail = self.log.tail()
        checkpoint = self.source.checkpoint()
        problem = tail_problem(tail) if tail is not None else None
        if problem:
            self.observer.chain_check_failed()
        elif tail is None and checkpoint is not None and checkpoint.sequence > 0:
            problem = (
                f"the log is empty but this outbox recorded sequence "
                f"{checkpoint.sequence} as relayed: the log was recreated or truncated"
            )
        self.head = ChainHead.of(tail)
        if problem:
            self._rotate_automatically(problem, tail, checkpoint)
        if self.head.position is not None:
            repaired = self.source.mark_through(
                self.head.position, now_us(), checkpoint=self.head.checkpoint()
            )
            if repaired:
                log.info("relay.repaired_marks", rows=repaired, through=self.head.position.encode())
        log.info(
            "relay.resumed",
            chain=self.source.chain_id,
            sequence=self.head.sequence,
            hash=self.head.record_hash[:16],
        )
        self.observer.resumed(self.head)
        return self.head

    def _rotate_automatically(
        self, problem: str, tail: LogEntry | None, checkpoint: Checkpoint | None
    ) -> None:
        known = (
            checkpoint
            if tail is None
            else Checkpoint(tail.sequence, tail.record_hash, tail.position or OutboxPosition(0, 0))
        )
        now = utc_now()
        record = event_record(
            event_id=str(uuid.uuid4()),
            chain_id=self.source.chain_id,
            recorded_at=now,
            action="sentinel_rotation",
            controls=controls_for_meta(),
            actor="flagtrail-relay",
            reason=problem,
            meta={
                "rotated_by": "flagtrail-relay (automatic)",
                "automatic": True,
                "reason": problem,
                "previous_sequence": known.sequence if known else None,
                "previous_hash": known.record_hash if known else None,
            },
        )
        start = ChainHead(
            known.sequence if known else 0, GENESIS, "", known.position if known else None
        )
        (entry,) = seal_records(start, [(record, start.position)], format_timestamp(now))
        self.log.append([entry], after_sequence=tail.sequence if tail else 0)
        log.warning(
            "relay.rotated",
            chain=self.source.chain_id,
            reason=problem,
            previous_sequence=record["meta"]["previous_sequence"],
        )
        self.head = ChainHead.of(entry)
        self.observer.rotated()

    def relay_batch(self) -> BatchResult | None:
        started = time.perf_counter()
        rows = self.source.fetch_pending(self.head.position, self.batch_size)
        if not rows:
            return None
        items = _decode_rows(rows)
        entries = seal_records(self.head, items, format_timestamp(utc_now()))
        try:
            self.log.append(entries, after_sequence=self.head.sequence)
        except ChainConflict as exc:
            log.warning("relay.chain_conflict", reason=str(exc))
            self.resume()
            return None
        appended_at = time.time()
        last = entries[-1]
        new_head = ChainHead(last.sequence, last.record_hash, last.timestamp_utc, last.position)
        self.source.mark_through(
            rows[-1].position, now_us(), after=self.head.position, checkpoint=new_head.checkpoint()
        )
        self.head = new_head
        result = BatchResult(
            len(entries),
            entries[0].sequence,
            last.sequence,
            time.perf_counter() - started,
            entries,
            [r for r, _ in items],
            appended_at,
        )
        log.info(
            "relay.batch",
            chain=self.source.chain_id,
            first_sequence=result.first_sequence,
            last_sequence=result.last_sequence,
            batch_size=result.count,
            duration_ms=round(result.seconds * 1000, 1),
        )
        self.observer.batch(result)
        return result

    def drain(self) -> int:
        """Relay everything committed now; returns how many records were appended."""
        total = 0
        while (result := self.relay_batch()) is not None:
            total += result.count
        return total

    def run(
        self,
        stop: threading.Event,
        idle_wait: float = 1.0,
        lease: Lease | None = None,
        lease_check_s: float = 2.0,
        backlog_every_s: float = 2.0,
    ) -> None:
        """The daemon loop: lead (or wait as a standby), relay, wait for a wake-up, back
        off on outages, and stop between batches once ``stop`` is set."""
        failures, resumed, leading = 0, False, lease is None
        last_check = last_backlog = 0.0
        self.observer.role(leading)
        while not stop.is_set():
            try:
                if not leading:
                    leading = lease.try_acquire()  # type: ignore[union-attr]
                    if not leading:
                        self.observer.heartbeat(True)
                        stop.wait(1.0)
                        continue
                    log.info("relay.active", chain=self.source.chain_id, reason="lease acquired")
                    resumed, last_check = False, time.monotonic()
                    self.observer.role(True)
                elif lease and time.monotonic() - last_check > lease_check_s:
                    last_check = time.monotonic()
                    if not lease.still_held():
                        log.warning(
                            "relay.standby", chain=self.source.chain_id, reason="lease lost"
                        )
                        leading = False
                        self.observer.role(False)
                        continue
                if not resumed:
                    self.resume()
                    resumed = True
                result = self.relay_batch()
                if time.monotonic() - last_backlog > backlog_every_s:
                    last_backlog = time.monotonic()
                    self.observer.backlog(self.source.backlog())
                failures = 0
                self.observer.heartbeat(True)
                if result is None:
                    self.source.wait_for_rows(idle_wait)
            except RelayError:
                self.observer.error("corrupt_outbox_row")
                raise
            except Exception as exc:  # an outage of the outbox or the log
                failures += 1
                resumed = False
                delay = min(10.0, 0.2 * 2**failures)
                self.observer.error(type(exc).__name__)
                self.observer.heartbeat(False)
                log.warning(
                    "relay.waiting",
                    chain=self.source.chain_id,
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                    attempt=failures,
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)
