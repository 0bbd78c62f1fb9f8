"""The relay: the single writer of a chain, moving committed outbox rows into the log.

Crash safety comes from the order of its three steps. (1) read pending rows
after the chain head's outbox position; (2) append them, sealed, to the log in
one atomic batch that only succeeds on top of the tail this relay knows;
(3) mark them relayed. A crash before (2) loses nothing (rows stay pending); a
crash between (2) and (3) is repaired at start: the log's tail carries the
outbox position, so rows up to it are marked, never appended twice.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from producers.controls import controls_for_meta
from producers.errors import FlagtrailError
from producers.events import event_record, format_timestamp, parse_timestamp, utc_now
from relay.canonical import (
    GENESIS,
    LineError,
    chain_hash,
    frame_line,
    line_parts,
    seal,
    strict_record,
)
from relay.gaps import DEFAULT_CLOCK_SKEW_TOLERANCE_S
from relay.lease import Lease
from relay.logs.base import AuditLog, ChainConflict, LogEntry
from relay.outbox.base import Backlog, Checkpoint, OutboxPosition, OutboxRow, OutboxSource
from relay.quarantine import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    RELAY_ACTOR,
    Unsealable,
    decode_row,
    orjson_canonical,
    payload_bytes,
    quarantine_record,
)
from relay.tree import TreeMismatch, TreeWriter

if TYPE_CHECKING:
    from relay.checkpoint_stamps import CheckpointStamper
    from relay.witness.client import WitnessClient

log = structlog.get_logger("flagtrail.relay")

_HEX64 = re.compile(r"[0-9a-f]{64}")  # a forged hash column must not reach a line's framing


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
    def rotated(self, record: dict[str, Any]) -> None: ...
    def heartbeat(self, ok: bool) -> None: ...
    def clock_skew(self, count: int) -> None: ...
    def witness_cosigned(self, witness: str) -> None: ...
    def witness_refused(self, witness: str) -> None: ...
    def witness_unreachable(self, witness: str) -> None: ...


def now_us() -> int:
    return time.time_ns() // 1000


def seal_orjson(record: dict[str, Any], prev_hash: str) -> tuple[str, str]:
    """relay.canonical.seal for a record proven orjson-safe (relay.quarantine.decode_row):
    the same bytes as json's canonical encoding, several times faster."""
    payload = orjson_canonical(record).decode()
    record_hash = chain_hash(prev_hash, payload)
    return record_hash, frame_line(prev_hash, payload, record_hash)


def seal_records(
    head: ChainHead,
    items: list[tuple[dict[str, Any], OutboxPosition | None]],
    relayed_at: str,
    orjson_safe: list[bool] | None = None,
) -> list[LogEntry]:
    """Chain records after ``head``: sequence, bounded timestamp_utc, prev_hash, hash.

    ``timestamp_utc = max(previous, min(recorded_at, relayed_at))``: the relay's
    clock bounds a producer's, so a clock running ahead cannot pull later events
    out of their window, and the stamp never decreases, so a time window is one
    run of the chain. The producer's own time stays in ``recorded_at``.

    A ``sentinel_rotation`` links to the record before it like any other record
    (GENESIS only when the log is empty) and names that record in
    ``meta.previous_sequence``/``previous_hash``; the relay writes both, whatever
    the outbox row said. ``orjson_safe[i]`` says item i may be sealed with orjson.
    """
    entries: list[LogEntry] = []
    prev, sequence, stamp = head.record_hash, head.sequence, head.timestamp_utc
    safe = orjson_safe or [False] * len(items)
    for (record, position), fast in zip(items, safe, strict=True):
        sequence += 1
        recorded_at = record["recorded_at"]  # both strings share one fixed layout
        stamp = max(stamp, recorded_at if recorded_at < relayed_at else relayed_at)
        record["sequence"] = sequence
        record["timestamp_utc"] = stamp
        record["relayed_at"] = relayed_at
        if record.get("action") == "sentinel_rotation":
            record["meta"] = {
                **(record.get("meta") or {}),
                "previous_sequence": sequence - 1,
                "previous_hash": prev,
            }
        prev, line = seal_orjson(record, prev) if fast else seal(record, prev)
        entries.append(LogEntry(sequence, stamp, prev, line, position))
    return entries


def entry_problem(entry: LogEntry, what: str) -> str | None:
    """Why a log entry cannot be trusted, if it cannot: its line fails its hash, or the
    sequence, hash or time the log indexes it by (not covered by the hash, and what
    the relay continues from) differ from the line's."""
    try:
        prev, payload, digest = line_parts(entry.line.encode())
        record = strict_record(payload)
    except LineError as exc:
        return f"{what} (sequence {entry.sequence}) is unreadable: {exc}"
    if digest != entry.record_hash or chain_hash(prev, payload.decode()) != digest:
        return f"{what} (sequence {entry.sequence}) fails its hash"
    if (record.get("sequence"), record.get("timestamp_utc")) != (
        entry.sequence,
        entry.timestamp_utc,
    ):
        return f"{what} (sequence {entry.sequence}) is indexed unlike its own line"
    return None


def tail_problem(entry: LogEntry) -> str | None:
    """Why the log's last record cannot be trusted as the chain head, if it cannot."""
    return entry_problem(entry, "the tail record")


def _short(digest: str) -> str:
    return f"{digest[:16]}…"


def log_problem(
    tail: LogEntry | None, checkpoint: Checkpoint | None, entry_at: Callable[[int], LogEntry | None]
) -> str | None:
    """Why the log cannot be continued from its tail, given the checkpoint this relay
    committed with its last marks; None when the log still holds what it relayed."""
    problem = tail_problem(tail) if tail is not None else None
    if problem or checkpoint is None or checkpoint.sequence <= 0:
        return problem
    known = f"sequence {checkpoint.sequence} (hash {_short(checkpoint.record_hash)})"
    if tail is None:
        return (
            f"the log is empty but this outbox recorded {known} as relayed: "
            "the log was recreated or truncated"
        )
    if tail.sequence < checkpoint.sequence:
        return (
            f"the log ends at sequence {tail.sequence}, before {known} that this outbox "
            "recorded as relayed: the log was truncated or replaced"
        )
    entry = tail if tail.sequence == checkpoint.sequence else entry_at(checkpoint.sequence)
    if entry is None:
        return f"the log has no record at {known}, which this outbox recorded as relayed"
    if entry.record_hash != checkpoint.record_hash:
        return (
            f"the record at sequence {checkpoint.sequence} has hash "
            f"{_short(entry.record_hash)}, not {_short(checkpoint.record_hash)} as relayed: "
            "the log was edited or replaced"
        )
    if entry.position != checkpoint.position:  # what the relay would mark through
        return (
            f"the record at sequence {checkpoint.sequence} names outbox position "
            f"{entry.position.encode() if entry.position else None}, not "
            f"{checkpoint.position.encode()} as relayed: the log was edited"
        )
    return entry_problem(entry, "the last record this relay committed")


# a crashed batch leaves at most one batch unmarked; a log this far past the checkpoint
# was written by someone else
MAX_UNMARKED_ENTRIES = 100_000


def unmarked_problem(
    checkpoint: Checkpoint | None,
    tail: LogEntry | None,
    audit_log: AuditLog,
    pending: Callable[[OutboxPosition | None, int], list[OutboxRow]],
) -> str | None:
    """Why the records after the checkpoint are not this relay's own crashed batch.

    The relay marks the outbox through the tail's position on resume, so a record
    appended by anyone who can write the log (the chain needs no key) and naming a
    far position would make real rows vanish unlogged. Each such record must be the
    next unrelayed outbox row, in order (its event_id, or a quarantine naming it), or
    this relay's own automatic rotation, each linked to the one before it.
    """
    if checkpoint is None or tail is None or tail.sequence <= checkpoint.sequence:
        return None
    ahead = tail.sequence - checkpoint.sequence
    if ahead > MAX_UNMARKED_ENTRIES:
        return (
            f"the log runs {ahead} records past sequence {checkpoint.sequence}, the last "
            "this outbox recorded as relayed: records were appended to the log"
        )
    known = audit_log.entry_at(checkpoint.sequence)  # log_problem proved it the checkpoint's
    if known is None:
        return f"the log has no record at sequence {checkpoint.sequence}"
    rows = iter(pending(checkpoint.position, ahead))
    position, previous, sequence = checkpoint.position, checkpoint.record_hash, checkpoint.sequence
    for entry in audit_log.read(known.timestamp_utc):  # one read: a batch can be long
        if entry.sequence <= checkpoint.sequence:
            continue
        if entry.sequence > tail.sequence:
            break
        sequence += 1
        what = f"the record at sequence {sequence} (after the checkpoint)"
        problem = entry_problem(entry, what) if entry.sequence == sequence else what + " is missing"
        if problem:
            return problem
        prev, payload, _ = line_parts(entry.line.encode())
        record = strict_record(payload)
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        rotation = record.get("action") == "sentinel_rotation"
        if prev != previous and not (rotation and prev == GENESIS):
            return f"{what} does not link to the record before it: the log was appended to"
        previous = entry.record_hash
        if rotation and meta.get("automatic") is True and entry.position == position:
            continue  # this relay's own rotation, continuing from the row before it
        row = next(rows, None)
        if row is None or entry.position != row.position or not _names_row(record, row):
            where = entry.position.encode() if entry.position else None
            return (
                f"{what} names outbox position {where}, which is not the next unrelayed "
                "outbox row: the log was appended to by something other than this relay"
            )
        position = row.position
    if sequence != tail.sequence:
        return f"the log's records after sequence {checkpoint.sequence} do not reach its tail"
    return None


_RELAY_FIELDS = frozenset({"sequence", "timestamp_utc", "relayed_at"})


def _names_row(record: dict[str, Any], row: OutboxRow) -> bool:
    """The log record is the one the relay makes of this outbox row: the row's own
    fields, unchanged, plus what sealing adds (a quarantine names the row instead)."""
    if record.get("action") == "quarantined":
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        return meta.get("outbox_position") == row.position.encode()
    try:
        sent = strict_record(payload_bytes(row.payload))
    except LineError:
        return False
    return _as_sent(record) == _as_sent(sent)


def _as_sent(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without what the relay adds when it seals it."""
    kept = {k: v for k, v in record.items() if k not in _RELAY_FIELDS}
    if kept.get("action") == "sentinel_rotation" and isinstance(kept.get("meta"), dict):
        meta = kept["meta"]
        kept["meta"] = {
            k: v for k, v in meta.items() if k not in ("previous_sequence", "previous_hash")
        }
    return kept


class Relay:
    def __init__(
        self,
        source: OutboxSource,
        audit_log: AuditLog,
        *,
        batch_size: int = 2000,
        observer: RelayObserver | None = None,
        clock_skew_tolerance_s: float = DEFAULT_CLOCK_SKEW_TOLERANCE_S,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        tree: TreeWriter | None = None,
        witnesses: WitnessClient | None = None,
        stamper: CheckpointStamper | None = None,
    ) -> None:
        self.source = source
        self.tree = tree
        self.witnesses = witnesses
        self.stamper = stamper
        if stamper is not None and tree is not None:  # RFC 3161 on checkpoints, when configured
            tree.on_checkpoint.append(stamper.submit)
        if witnesses is not None:
            witnesses.observer = self  # forwards to self.observer, which may be set later
            if tree is not None:  # each new checkpoint, sent on the client's own thread
                tree.on_checkpoint.append(witnesses.submit)
        self.log = audit_log
        self.batch_size = batch_size
        self.observer = observer or RelayObserver()
        self.clock_skew_tolerance_s = clock_skew_tolerance_s
        self.max_payload_bytes = max_payload_bytes
        self.head = ChainHead.of(None)
        self._stage = "outbox"  # which backend the current step uses: the error's kind

    def resume(self) -> ChainHead:
        """Adopt the log's tail as the chain head; finish marking a crashed batch.

        The log must still hold what this relay committed: the entry at the
        checkpoint's sequence carries the checkpoint's hash and the tail is not
        behind it. A log that lost or changed records is never continued
        silently: the relay starts a new epoch with an automatic
        ``sentinel_rotation`` naming both heads and why.
        """
        self._stage = "log"
        self.log.claim()
        # the checkpoint before the tail: a writer still finishing (an old leader) can
        # only move the tail past it, never make an honest log look behind it
        self._stage = "outbox"
        checkpoint = self.source.checkpoint()
        self._stage = "log"
        tail = self.log.tail()
        problem = log_problem(tail, checkpoint, self.log.entry_at)
        if problem is None:
            problem = unmarked_problem(checkpoint, tail, self.log, self.source.fetch_pending)
            if problem is not None and self.source.checkpoint() != checkpoint:
                # an old leader marked its batch meanwhile: judge again from its checkpoint
                checkpoint = self.source.checkpoint()
                tail = self.log.tail()
                problem = log_problem(tail, checkpoint, self.log.entry_at) or unmarked_problem(
                    checkpoint, tail, self.log, self.source.fetch_pending
                )
        self.head = ChainHead.of(tail)
        if problem:
            self.observer.chain_check_failed()
            log.error(
                "relay.chain_check_failed",
                chain=self.source.chain_id,
                reason=problem,
                tail_sequence=tail.sequence if tail else 0,
                checkpoint_sequence=checkpoint.sequence if checkpoint else None,
            )
            self._rotate_automatically(problem, tail, checkpoint)
        if self.head.position is not None:
            self._stage = "outbox"
            repaired = self.source.mark_through(
                self.head.position, now_us(), checkpoint=self.head.checkpoint()
            )
            if repaired:
                log.info("relay.repaired_marks", rows=repaired, through=self.head.position.encode())
        if self.tree is not None:
            self._tree_step(self.tree.catch_up, self.log)
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
        """Append a rotation after the log's tail. It continues from the checkpoint's
        outbox position, never the tail's: positions in a tampered log prove nothing,
        and rows after the checkpoint are unmarked, so they flow into the new epoch."""
        now = utc_now()
        relayed_at = format_timestamp(now)
        record = event_record(
            event_id=str(uuid.uuid4()),
            chain_id=self.source.chain_id,
            recorded_at=now,
            action="sentinel_rotation",
            controls=controls_for_meta(),
            actor=RELAY_ACTOR,
            reason=problem,
            meta={
                "rotated_by": f"{RELAY_ACTOR} (automatic)",
                "automatic": True,
                "reason": problem,
                "last_trusted_sequence": checkpoint.sequence if checkpoint else None,
                "last_trusted_hash": checkpoint.record_hash if checkpoint else None,
            },
        )
        position = checkpoint.position if checkpoint else None
        # a forged tail stamped in the future must not hold every later stamp hostage
        start = ChainHead(
            tail.sequence if tail else 0,
            tail.record_hash if tail and _HEX64.fullmatch(tail.record_hash) else GENESIS,
            min(tail.timestamp_utc, relayed_at) if tail else "",
            position,
        )
        (entry,) = seal_records(start, [(record, position)], relayed_at)
        self.log.append([entry], after_sequence=start.sequence)
        log.warning(
            "relay.rotated",
            chain=self.source.chain_id,
            reason=problem,
            sequence=entry.sequence,
            previous_sequence=start.sequence,
            last_trusted_sequence=checkpoint.sequence if checkpoint else None,
        )
        self.head = ChainHead.of(entry)
        self.observer.rotated(record)

    def _prepare(self, row: OutboxRow, now: datetime) -> tuple[dict[str, Any], bool]:
        """The row's record, or the quarantine record that takes its place (and whether
        orjson may seal it)."""
        try:
            return decode_row(row, self.source.chain_id, self.max_payload_bytes)
        except Unsealable as problem:
            record = quarantine_record(row, problem, self.source.chain_id, now)
            log.warning(
                "relay.quarantined",
                chain=self.source.chain_id,
                outbox_position=row.position.encode(),
                event_id=problem.event_id,
                payload_sha256=record["meta"]["payload_sha256"],
                reason=problem.reason,
            )
            return record, False

    def relay_batch(self) -> BatchResult | None:
        started = time.perf_counter()
        self._stage = "outbox"
        rows = self.source.fetch_pending(self.head.position, self.batch_size)
        if not rows:
            return None
        now = utc_now()
        relayed_at = format_timestamp(now)
        prepared = [self._prepare(row, now) for row in rows]
        items = [(record, row.position) for (record, _), row in zip(prepared, rows, strict=True)]
        entries = seal_records(self.head, items, relayed_at, [fast for _, fast in prepared])
        self._stage = "log"
        try:
            self.log.append(entries, after_sequence=self.head.sequence)
        except ChainConflict as exc:
            log.warning("relay.chain_conflict", reason=str(exc))
            self.resume()
            return None
        appended_at = time.time()
        if self.tree is not None:
            self._tree_step(self.tree.extend, entries)
        last = entries[-1]
        new_head = ChainHead(last.sequence, last.record_hash, last.timestamp_utc, last.position)
        self._stage = "outbox"
        self.source.mark_through(
            rows[-1].position, now_us(), after=self.head.position, checkpoint=new_head.checkpoint()
        )
        self.head = new_head
        records = [r for r, _ in items]
        result = BatchResult(
            len(entries),
            entries[0].sequence,
            last.sequence,
            time.perf_counter() - started,
            entries,
            records,
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
        self._note_clock_skew(records, relayed_at)
        self.observer.batch(result)
        return result

    def _note_clock_skew(self, records: list[dict[str, Any]], relayed_at: str) -> None:
        """Producers whose recorded_at is ahead of the relay's clock by more than the
        tolerance: their stamps were bounded, and an operator should fix their clock."""
        skewed = 0
        for record in records:
            if record["recorded_at"] <= relayed_at:  # the common case: one string compare
                continue
            ahead = (
                parse_timestamp(record["recorded_at"]) - parse_timestamp(relayed_at)
            ).total_seconds()
            if ahead > self.clock_skew_tolerance_s:
                skewed += 1
                log.warning(
                    "relay.clock_skew",
                    chain=self.source.chain_id,
                    event_id=record.get("event_id"),
                    sequence=record["sequence"],
                    recorded_at=record["recorded_at"],
                    ahead_s=round(ahead, 3),
                    tolerance_s=self.clock_skew_tolerance_s,
                )
        if skewed:
            self.observer.clock_skew(skewed)

    def _tree_step(self, step: Callable[..., Any], *args: Any) -> None:
        """Run a step of the Merkle tree. A tree that no longer matches the log stops
        following it (and signs no more checkpoints): an alarm, never a silent rebuild
        over rewritten records. The relay goes on relaying; the chain check and export
        say the rest."""
        self._stage = "tree"
        try:
            step(*args)
        except TreeMismatch as exc:
            self.observer.chain_check_failed()
            log.error("relay.tree_mismatch", chain=self.source.chain_id, reason=str(exc))

    def witness_cosigned(self, witness: str) -> None:
        self.observer.witness_cosigned(witness)

    def witness_refused(self, witness: str) -> None:
        self.observer.witness_refused(witness)

    def witness_unreachable(self, witness: str) -> None:
        self.observer.witness_unreachable(witness)

    def checkpoint_tree(self, force: bool = False) -> None:
        """Sign a checkpoint if one is due (or ``force``): an idle one is a heartbeat."""
        if self.tree is not None:
            self._tree_step(self.tree.maybe_checkpoint, force)

    def drain(self) -> int:
        """Relay everything committed now; returns how many records were appended. Ends
        with a checkpoint of the tree, so that an export can prove the records drained."""
        total = 0
        while (result := self.relay_batch()) is not None:
            total += result.count
        self.checkpoint_tree(force=True)
        if self.witnesses is not None:
            self.witnesses.flush()  # `relay --once` exits with its checkpoint witnessed
        if self.stamper is not None:
            self.stamper.flush()
        return total

    def run(
        self,
        stop: threading.Event,
        idle_wait: float = 1.0,
        lease: Lease | None = None,
        lease_check_s: float = 2.0,
        backlog_every_s: float = 2.0,
    ) -> None:
        """The daemon loop: lead (or wait as a standby), relay, wait for a wake-up, and
        stop between batches once ``stop`` is set.

        An outage (a retriable FlagtrailError, or any driver error a backend did not
        translate) is retried with backoff: each attempt is a ``relay.waiting`` line
        and a ``flagtrail_relay_errors_total{kind}`` count, and /ready answers 503
        until a round succeeds. A configuration error (``retriable=False``) before the
        first successful round cannot heal by waiting: it stops the daemon (the
        command prints it and exits with its code).
        """
        failures, resumed, leading, worked = 0, False, lease is None, False
        last_check = last_backlog = 0.0
        self.observer.role(leading)
        while not stop.is_set():
            try:
                if not leading:
                    self._stage = "lease"
                    leading = lease.try_acquire()  # type: ignore[union-attr]
                    if not leading:
                        failures = self._round_ok(failures)
                        stop.wait(1.0)
                        continue
                    log.info("relay.active", chain=self.source.chain_id, reason="lease acquired")
                    resumed, last_check = False, time.monotonic()
                    self.observer.role(True)
                elif lease and time.monotonic() - last_check > lease_check_s:
                    self._stage = "lease"
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
                    self._stage = "outbox"
                    self.observer.backlog(self.source.backlog())
                failures, worked = self._round_ok(failures), True
                if result is None:
                    self.checkpoint_tree()  # idle: a heartbeat when one is due
                    # an idle relay still probes the log, so an outage shows while no
                    # rows flow (Kafka: raises once librdkafka reports every broker down)
                    self._stage = "log"
                    self.log.ping()
                    self._stage = "outbox"
                    self.source.wait_for_rows(idle_wait)
            except Exception as exc:
                # A configuration error stops a relay that never worked (a wrong URL, a
                # missing table). Once it has relayed, the same error means the backend
                # changed under it (a restore, a migration): wait and alarm, never exit.
                if isinstance(exc, FlagtrailError) and not exc.retriable and not worked:
                    self.observer.error("config")
                    self.observer.heartbeat(False)
                    raise
                failures += 1
                resumed = False
                delay = min(10.0, 0.2 * 2**failures)
                self.observer.error(self._stage)
                self.observer.heartbeat(False)
                log.warning(
                    "relay.waiting",
                    chain=self.source.chain_id,
                    kind=self._stage,
                    cause=_cause(self._stage, exc),
                    attempt=failures,
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)

    def _round_ok(self, failures: int) -> int:
        """A round reached its backends: ready again; say so once after an outage."""
        if failures:
            log.info("relay.recovered", chain=self.source.chain_id, after_attempts=failures)
        self.observer.heartbeat(True)
        return 0


def _cause(stage: str, exc: Exception) -> str:
    """One line naming the backend and the driver's own error (SQLAlchemy wraps it)."""
    error = getattr(exc, "orig", None) or exc
    detail = (str(error).strip().splitlines() or [""])[0]
    return f"{stage}: {type(error).__name__}: {detail[:300]}"
