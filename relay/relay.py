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
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from producers.errors import FlagtrailError
from relay.canonical import GENESIS, seal
from relay.lease import Lease
from relay.logs.base import AuditLog, ChainConflict, LogEntry
from relay.outbox.base import OutboxPosition, OutboxRow, OutboxSource

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


class RelayError(FlagtrailError):
    """A row the relay cannot chain (corrupt payload): it stops rather than skip it."""


@dataclass
class BatchResult:
    count: int
    first_sequence: int
    last_sequence: int
    seconds: float
    entries: list[LogEntry]


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


def seal_rows(head: ChainHead, rows: list[OutboxRow]) -> list[LogEntry]:
    """Chain rows after ``head``: sequence, monotonic timestamp_utc, prev_hash, hash."""
    entries: list[LogEntry] = []
    prev, sequence, stamp = head.record_hash, head.sequence, head.timestamp_utc
    for row in rows:
        try:
            record = _decode(row.payload)
            recorded_at = record["recorded_at"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayError(
                f"outbox row {row.position.encode()} is not a flagtrail event: {exc}"
            ) from exc
        sequence += 1
        # commit order can differ from clock order by a transaction's length;
        # timestamp_utc never decreases so a time window is one run of the chain
        stamp = max(recorded_at, stamp)
        record["sequence"] = sequence
        record["timestamp_utc"] = stamp
        prev, line = seal(record, prev)
        entries.append(LogEntry(sequence, stamp, prev, line, row.position))
    return entries


class Relay:
    def __init__(
        self,
        source: OutboxSource,
        audit_log: AuditLog,
        *,
        batch_size: int = 2000,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.source = source
        self.log = audit_log
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.head = ChainHead.of(None)

    def resume(self) -> ChainHead:
        """Adopt the log's tail as the chain head; finish marking a crashed batch."""
        self.log.claim()
        self.head = ChainHead.of(self.log.tail())
        if self.head.position is not None:
            repaired = self.source.mark_through(self.head.position, now_us())
            if repaired:
                log.info("relay.repaired_marks", rows=repaired, through=self.head.position.encode())
        log.info("relay.resumed", sequence=self.head.sequence, hash=self.head.record_hash[:16])
        return self.head

    def relay_batch(self) -> BatchResult | None:
        started = time.perf_counter()
        rows = self.source.fetch_pending(self.head.position, self.batch_size)
        if not rows:
            return None
        entries = seal_rows(self.head, rows)
        try:
            self.log.append(entries, after_sequence=self.head.sequence)
        except ChainConflict as exc:
            log.warning("relay.chain_conflict", reason=str(exc))
            self.resume()
            return None
        self.source.mark_through(rows[-1].position, now_us(), after=self.head.position)
        last = entries[-1]
        self.head = ChainHead(last.sequence, last.record_hash, last.timestamp_utc, last.position)
        result = BatchResult(
            len(entries), entries[0].sequence, last.sequence, time.perf_counter() - started, entries
        )
        if self.on_batch:
            self.on_batch(result)
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
        on_role: Callable[[bool], None] | None = None,
        lease_check_s: float = 2.0,
    ) -> None:
        """The daemon loop: lead (or wait as a standby), relay, wait for a wake-up, back
        off on outages, and stop between batches once ``stop`` is set."""
        failures, resumed, leading, last_check = 0, False, lease is None, 0.0
        if on_role:
            on_role(leading)
        while not stop.is_set():
            try:
                if not leading:
                    leading = lease.try_acquire()  # type: ignore[union-attr]
                    if not leading:
                        stop.wait(1.0)
                        continue
                    log.info("relay.active", reason="lease acquired")
                    resumed, last_check = False, time.monotonic()
                    if on_role:
                        on_role(True)
                elif lease and time.monotonic() - last_check > lease_check_s:
                    last_check = time.monotonic()
                    if not lease.still_held():
                        log.warning("relay.standby", reason="lease lost")
                        leading = False
                        if on_role:
                            on_role(False)
                        continue
                if not resumed:
                    self.resume()
                    resumed = True
                result = self.relay_batch()
                failures = 0
                if result is None:
                    self.source.wait_for_rows(idle_wait)
            except RelayError:
                raise
            except Exception as exc:  # an outage of the outbox or the log
                failures += 1
                resumed = False
                delay = min(10.0, 0.2 * 2**failures)
                log.warning(
                    "relay.waiting",
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                    attempt=failures,
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)
