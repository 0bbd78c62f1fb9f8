"""The one service layer: what `flagtrail` commands and the API's handlers both call.

Each function takes the resolved ``Settings`` (flagtrail.settings, a frozen object made
once from flags, environment and defaults) and plain values, does one job, and returns
data; the caller parses its input and renders the result (a terminal, an HTTP
response). Heavy imports stay inside the functions, so `flagtrail verify` starts fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flagtrail.settings import Settings  # its import loads SQLAlchemy: verify skips it
    from producers.outbox import Outbox
    from relay.drift import DriftReport
    from relay.gaps import Gap
    from relay.logs.base import AuditLog
    from relay.manifest import PackagePaths
    from relay.relay import Relay
    from relay.verify import VerifyReport


# -- backends ----------------------------------------------------------------------------
def open_outbox(settings: Settings) -> Outbox:
    from flagtrail.settings import make_engine
    from producers import Outbox

    return Outbox(make_engine(settings.outbox_url), settings.identities, chain_id=settings.chain_id)


def open_audit_log(settings: Settings) -> AuditLog:
    """The chain's log, read-only (a reader never creates or changes a file or topic)."""
    from relay.logs import open_log

    return open_log(settings.log_url, settings.chain_id, read_only=True)


# -- relay -------------------------------------------------------------------------------
def make_relay(
    settings: Settings, batch_size: int, clock_skew_tolerance_s: float, max_payload_bytes: int
) -> Relay:
    from flagtrail.settings import make_engine
    from relay.logs import open_log
    from relay.outbox import open_outbox_source
    from relay.relay import Relay

    source = open_outbox_source(make_engine(settings.outbox_url), settings.chain_id)
    return Relay(
        source,
        open_log(settings.log_url, source.chain_id),
        batch_size=batch_size,
        clock_skew_tolerance_s=clock_skew_tolerance_s,
        max_payload_bytes=max_payload_bytes,
    )


def relay_once(relay: Relay) -> int:
    """Resume the chain and drain the outbox once; the count relayed."""
    relay.resume()
    return relay.drain()


# -- evidence ------------------------------------------------------------------------------
def export(
    settings: Settings,
    start: date,
    end: date,
    out_dir: Path,
    controls: list[str] | None = None,
    previous: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[PackagePaths, dict[str, Any]]:
    """Write the signed evidence package of [start, end] into ``out_dir``."""
    from relay.export import export_window
    from relay.signing import load_private_key

    load_private_key(settings.signing_key)  # a missing key fails before the log is opened
    with open_audit_log(settings) as audit_log:
        return export_window(
            audit_log,
            start,
            end,
            out_dir,
            settings.signing_key,
            controls,
            progress=progress,
            previous=previous,
        )


def chain_head(settings: Settings) -> dict[str, Any]:
    """The chain's last record now (sequence 0 and GENESIS for an empty chain)."""
    from relay.canonical import GENESIS

    with open_audit_log(settings) as audit_log:
        tail = audit_log.tail()
    if tail is None:
        return {
            "chain_id": settings.chain_id,
            "sequence": 0,
            "hash": GENESIS,
            "timestamp_utc": None,
        }
    return {
        "chain_id": settings.chain_id,
        "sequence": tail.sequence,
        "hash": tail.record_hash,
        "timestamp_utc": tail.timestamp_utc,
    }


def verify(
    file: Path,
    pubkeys: list[Path],
    key_fingerprints: list[str] | None = None,
    chain_only: bool = False,
    anchor: str | None = None,
    workers: int | None = None,
    previous: Path | None = None,
) -> VerifyReport:
    """Check a package with the keys the caller trusts (never one shipped in it)."""
    from relay.trust import Trust
    from relay.verify import verify_export

    trust = Trust() if chain_only else Trust.from_environment(pubkeys, key_fingerprints or ())
    return verify_export(
        file,
        anchor=anchor,
        workers=workers,
        trust=trust,
        previous=previous,
        chain_only=chain_only,
    )


# -- gaps ----------------------------------------------------------------------------------
def statement_keys(settings: Settings, pubkeys: list[Path]) -> list[Any]:
    """Keys that check statement signatures: the given ones, FLAGTRAIL_TRUSTED_KEYS's PEM
    keys, and the public half of the signing key when one is there (as export uses it)."""
    from relay.signing import load_private_key
    from relay.trust import Trust

    keys = list(Trust.from_environment(pubkeys).keys)
    if settings.signing_key.is_file():
        keys.append(load_private_key(settings.signing_key).public_key())
    return keys


@dataclass
class GapScan:
    since: str
    until: str
    signatures_checked: bool
    gaps: list[Gap] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # a bad line must not hide gaps

    @property
    def undocumented(self) -> list[Gap]:
        return [g for g in self.gaps if not g.documented_by]


def gap_scan(
    settings: Settings,
    start: date,
    end: date,
    lag_threshold_s: float,
    silence_threshold_h: float | None,
    clock_skew_tolerance_s: float,
    pubkeys: list[Path],
) -> GapScan:
    from relay.canonical import LineError, strict_record
    from relay.export import window_bounds
    from relay.gaps import GapFinder
    from relay.statements import CheckedGapFinder

    since, until = window_bounds(start, end)
    keys = statement_keys(settings, pubkeys)
    silence = silence_threshold_h * 3600 if silence_threshold_h else None
    finder: GapFinder
    if keys:  # a statement documents only with a good signature, as in verify
        finder = CheckedGapFinder(keys, lag_threshold_s)
        finder.silence_threshold_s = silence
        finder.clock_skew_tolerance_s = clock_skew_tolerance_s
    else:
        finder = GapFinder(lag_threshold_s, silence, clock_skew_tolerance_s)
    scan = GapScan(since, until, signatures_checked=bool(keys))
    with open_audit_log(settings) as audit_log:
        for entry in audit_log.read(since, until):
            try:
                finder.add(strict_record(entry.line))
            except LineError as exc:
                scan.unreadable.append(
                    f"log record at sequence {entry.sequence} is unreadable: {exc}"
                )
        finder.note_statements_after(audit_log, until)
    scan.gaps = finder.result()
    return scan


def gap_document(
    settings: Settings, start: datetime, end: datetime, reason: str, author: str
) -> tuple[str, dict[str, Any]]:
    """Write a signed gap_documented statement (an operator's); (event id, statement)."""
    from producers.meta import document_gap, gap_statement, require_operator
    from relay.signing import load_private_key

    statement = gap_statement(start, end, reason, author)
    outbox = open_outbox(settings)
    with outbox.engine.begin() as conn:
        # refused (and recorded) before the key is read: no key needed to be told no
        require_operator(outbox, conn, author, "gap_documented")
        key = load_private_key(settings.signing_key)
        return document_gap(outbox, conn, statement, key), statement


def rotate(settings: Settings, actor: str, reason: str) -> str:
    """Request a signed sentinel_rotation (an operator's); the event id."""
    from producers.errors import InvalidChange
    from producers.meta import request_rotation, require_operator
    from relay.signing import load_private_key

    if not reason.strip():
        raise InvalidChange("a rotation needs a --reason")
    outbox = open_outbox(settings)
    with outbox.engine.begin() as conn:
        require_operator(outbox, conn, actor, "sentinel_rotation")
        key = load_private_key(settings.signing_key)
        return request_rotation(outbox, conn, actor, reason, key)


def drift(settings: Settings, as_of: date, weeks: int, threshold: float) -> DriftReport:
    from relay.drift import check_drift

    with open_audit_log(settings) as audit_log:
        return check_drift(audit_log, as_of, weeks, threshold)
