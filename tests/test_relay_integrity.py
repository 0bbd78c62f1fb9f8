"""The relay as an attacker meets it: a tampered log, poison outbox rows, a lying clock."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from flagtrail import settings
from producers import Outbox
from producers.events import canonical_json, event_record
from relay.canonical import seal
from relay.logs import open_log
from relay.metrics import RelayMetrics
from relay.outbox import open_outbox_source
from relay.outbox.base import OutboxPosition, OutboxRow
from relay.quarantine import decode_row
from relay.relay import ChainHead, Relay, seal_records
from relay.verify import verify_export
from tests.conftest import SteppingClock, run_cli
from tests.contracts import good_change
from tests.crash import check_chain
from tests.test_operations import export_today, log_records, record_changes, seed_snippet

CHAIN = "flag-audit"


def relay_in_process(**kwargs: object) -> RelayMetrics:
    """One ``relay --once`` in this process, so its metrics can be read."""
    engine = settings.make_engine("sqlite:///outbox.db")
    metrics = RelayMetrics(CHAIN)
    relay = Relay(
        open_outbox_source(engine, CHAIN),
        open_log("sqlite:///log.db"),
        observer=metrics,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        relay.resume()
        relay.drain()
    finally:
        relay.log.close()
        engine.dispose()
    return metrics


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def tamper(sql: str, *params: object) -> None:
    """An attacker with write access to the log file: drop the triggers, edit."""
    db = sqlite3.connect("log.db")
    db.execute("DROP TRIGGER IF EXISTS audit_log_refuses_update")
    db.execute("DROP TRIGGER IF EXISTS audit_log_refuses_delete")
    db.execute(sql, params)
    db.commit()
    db.close()


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def gap_scan(workdir: Path, *extra: str):
    return run_cli("gap", "scan", "--start", today(), "--end", today(), *extra, cwd=workdir)


# -- 5. the relay notices a tampered log ------------------------------------------------
def test_truncated_log_rotates_naming_both_heads_and_stays_undocumented_until_stated(
    workdir: Path, rsa_keys: Path
) -> None:
    record_changes(workdir, 5)
    relay_in_process()
    before = log_records()
    tamper("DELETE FROM audit_log WHERE sequence > 3")  # records 4 and 5 vanish
    record_changes(workdir, 2, start=5)
    metrics = relay_in_process()

    records = log_records()
    rotation = records[3]
    assert rotation["action"] == "sentinel_rotation" and rotation["sequence"] == 4
    meta = rotation["meta"]
    assert meta["automatic"] is True and rotation["actor"] == "flagtrail-relay"
    assert (meta["previous_sequence"], meta["previous_hash"]) == (3, before[2]["hash"])
    assert (meta["last_trusted_sequence"], meta["last_trusted_hash"]) == (5, before[4]["hash"])
    assert "ends at sequence 3, before sequence 5" in meta["reason"]
    assert rotation["prev_hash"] == before[2]["hash"]
    # the new rows flow after it; the lost ones are not silently re-sent
    assert [r["flag_key"] for r in records[4:]] == ["flag-5", "flag-6"]
    check_chain(json.dumps(r) for r in records)  # one linked chain, as the seed reads it
    assert sample(metrics, "flagtrail_chain_verification_failures_total") == 1
    assert sample(metrics, "flagtrail_sentinel_rotations_total") == 1
    assert sample(metrics, "flagtrail_undocumented_gaps") == 1

    paths, manifest = export_today(workdir, rsa_keys)
    assert "Chain intact: 6 records" in seed_snippet(paths.jsonl)
    assert verify_export(paths.jsonl, rsa_keys / "audit-public.pem").ok
    assert [g["kind"] for g in manifest["undocumented_gaps"]] == ["rotation"]

    scan = gap_scan(workdir, "--fail-on-undocumented")
    assert scan.returncode == 1 and "rotation" in scan.stdout and "UNDOCUMENTED" in scan.stdout
    window = (
        (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    documented = run_cli(
        "gap", "document", "--from", window[0], "--to", window[1],
        "--reason", "log volume restored from a stale snapshot; records 4-5 re-entered by hand",
        "--author", "bob@example.com", "--signing-key", str(rsa_keys / "audit-private.pem"),
        cwd=workdir,
    )  # fmt: skip
    assert documented.returncode == 0, documented.stderr
    relay_in_process()
    scan = gap_scan(workdir, "--fail-on-undocumented")
    assert scan.returncode == 0 and "documented by" in scan.stdout, scan.stdout


def test_an_edited_record_with_a_recomputed_hash_at_the_checkpoint_is_found(
    workdir: Path,
) -> None:
    record_changes(workdir, 3)
    relay_in_process()
    original = log_records()
    forged = {k: v for k, v in original[2].items() if k not in ("hash", "prev_hash")}
    forged["after"] = {"enabled": False}  # a self-consistent record: its own hash checks
    digest, line = seal(forged, original[2]["prev_hash"])
    tamper("UPDATE audit_log SET line = ?, hash = ? WHERE sequence = 3", line, digest)
    record_changes(workdir, 1, start=3)
    metrics = relay_in_process()

    records = log_records()
    rotation = records[3]
    assert rotation["action"] == "sentinel_rotation"
    assert "the log was edited or replaced" in rotation["meta"]["reason"]
    assert rotation["meta"]["last_trusted_hash"] == original[2]["hash"]
    assert rotation["meta"]["previous_hash"] == digest == rotation["prev_hash"]
    assert records[4]["flag_key"] == "flag-3"
    assert sample(metrics, "flagtrail_chain_verification_failures_total") == 1


def test_a_log_replaced_by_another_chains_file_is_not_continued(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    record_changes(workdir, 3)
    relay_in_process()
    ours = log_records()
    other = tmp_path_factory.mktemp("other")
    shutil.copy(workdir / "identities.toml", other)
    run_cli("loadgen", "--events", "6", cwd=other)
    assert run_cli("relay", "--once", cwd=other).returncode == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"log.db{suffix}").unlink(missing_ok=True)
    shutil.copy(other / "log.db", workdir / "log.db")
    record_changes(workdir, 1, start=3)
    metrics = relay_in_process()

    records = log_records()
    rotation = records[-2]
    assert rotation["action"] == "sentinel_rotation" and rotation["sequence"] == 7
    assert "the log was edited or replaced" in rotation["meta"]["reason"]
    assert rotation["meta"]["last_trusted_hash"] == ours[2]["hash"]
    assert rotation["meta"]["previous_sequence"] == 6
    assert records[-1]["flag_key"] == "flag-3"
    assert sample(metrics, "flagtrail_chain_verification_failures_total") == 1


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("timestamp_utc", "9999-12-31T00:00:00.000000Z"),  # would hold every later stamp
        ("outbox_id", 10**9),  # would mark every pending row relayed without relaying it
    ],
)
def test_the_tails_index_columns_are_checked_against_its_line(
    workdir: Path, column: str, value: object
) -> None:
    record_changes(workdir, 2)
    relay_in_process()
    tamper(f"UPDATE audit_log SET {column} = ? WHERE sequence = 2", value)
    record_changes(workdir, 2, start=2)
    relay_in_process()
    records = log_records()
    assert records[2]["action"] == "sentinel_rotation"
    assert [r["flag_key"] for r in records[3:]] == ["flag-2", "flag-3"]  # nothing skipped
    assert all(r["timestamp_utc"].startswith(today()) for r in records)


def test_a_healthy_restart_is_not_a_rotation(workdir: Path) -> None:
    record_changes(workdir, 2)
    relay_in_process()
    record_changes(workdir, 2, start=2)
    metrics = relay_in_process()
    assert [r["action"] for r in log_records()] == ["update"] * 4
    assert sample(metrics, "flagtrail_chain_verification_failures_total") == 0


# -- 6. no poison pill -------------------------------------------------------------------
MARKER = "PAYLOAD-MUST-NOT-LEAK"


def good_record(n: int, **changes: object) -> dict:
    record = event_record(
        event_id=f"raw-{n}",
        chain_id=CHAIN,
        recorded_at=datetime.now(UTC),
        action="update",
        controls=["CC6.1", "CC6.6"],
        actor="alice@example.com",
        role="engineer",
        flag_key=f"raw-flag-{n}",
        environment="staging",
        before={"enabled": False},
        after={"enabled": True, "note": MARKER},
        reason="raw row",
    )
    record.update(changes)
    return record


POISON: list[tuple[str, object, str]] = [
    ("undecodable", "{not json " + MARKER, "not a readable record"),
    ("invalid-utf8", b'{"event_id":"x","note":"\xff\xfe' + MARKER.encode() + b'"}', "readable"),
    ("not-object", json.dumps([MARKER]), "not a JSON object"),
    ("missing", canonical_json({"event_id": "raw-missing", "note": MARKER}), "'recorded_at'"),
    (
        "mistyped",
        canonical_json(good_record(1, soc2_controls="CC6.1")),
        "'soc2_controls' has the wrong type",
    ),
    (
        "surrogate",
        canonical_json(good_record(2, reason="\ud800" + MARKER)),
        "lone surrogate",
    ),
    ("not-canonical", json.dumps(good_record(3)), "not canonical JSON"),
    ("duplicate-key", canonical_json(good_record(4))[:-1] + ',"actor":"mallory"}', "canonical"),
    ("oversize", canonical_json(good_record(5, after="x" * 300_000)), "over the"),
    ("relay-only", canonical_json(good_record(6, action="quarantined")), "only by the relay"),
    ("other-chain", canonical_json(good_record(7, chain_id="payments")), "belongs to chain"),
    ("bad-time", canonical_json(good_record(8, recorded_at="2026-13-45T99:00:00.000000Z")), "real"),
    (
        "forged-rotation",
        canonical_json(
            good_record(9, action="sentinel_rotation", meta={"automatic": True, "reason": "x"})
        ),
        "automatic sentinel_rotation is written only by the relay",
    ),
]


def insert_raw(payload: str | bytes, event_id: str) -> None:
    db = sqlite3.connect("outbox.db")
    db.execute(
        "INSERT INTO flagtrail_outbox (chain_id, event_id, recorded_at_us, payload) "
        "VALUES (?, ?, ?, ?)",
        (CHAIN, event_id, int(datetime.now(UTC).timestamp() * 1e6), payload),
    )
    db.commit()
    db.close()


def test_rows_the_relay_cannot_seal_are_quarantined_and_the_rows_after_them_flow(
    workdir: Path, rsa_keys: Path
) -> None:
    record_changes(workdir, 1)
    for n, (name, payload, _) in enumerate(POISON):
        insert_raw(payload, f"poison-{name}")
        record_changes(workdir, 1, start=100 + n)  # a good row after each
    huge = 2**70 + 1  # exact beyond 64 bits: sealed, never turned into a float
    insert_raw(canonical_json(good_record(99, after={"limit": huge})), "raw-99")
    metrics = relay_in_process()

    records = log_records()
    assert len(records) == 2 + 2 * len(POISON)
    quarantined = [r for r in records if r["action"] == "quarantined"]
    assert len(quarantined) == len(POISON)
    assert sample(metrics, "flagtrail_quarantined_rows_total") == len(POISON)
    engine = settings.make_engine("sqlite:///outbox.db")
    with engine.connect() as conn:
        rows = {
            r.event_id: (r.id, r.payload, r.relayed_at_us)
            for r in conn.execute(text("SELECT * FROM flagtrail_outbox"))
        }
    assert all(marked is not None for _, _, marked in rows.values())  # nothing left behind
    for (name, payload, why), record in zip(POISON, quarantined, strict=True):
        row_id, stored, _ = rows[f"poison-{name}"]
        raw = stored if isinstance(stored, bytes) else stored.encode("utf-8", "surrogatepass")
        assert raw == (payload if isinstance(payload, bytes) else payload.encode()), name
        meta = record["meta"]
        assert meta["outbox_position"] == f"0:{row_id}", name
        assert why in meta["reason"] and why in record["reason"], (name, meta["reason"])
        assert meta["payload_sha256"] == hashlib.sha256(raw).hexdigest(), name
        assert meta["payload_bytes"] == len(raw), name
        assert record["actor"] == "flagtrail-relay" and "CC7.2" in record["soc2_controls"]
    by_id = {r["meta"]["outbox_position"]: r["meta"]["event_id"] for r in quarantined}
    assert by_id[f"0:{rows['poison-mistyped'][0]}"] == "raw-1"  # readable: named
    assert by_id[f"0:{rows['poison-undecodable'][0]}"] is None
    # each quarantine record sits where its row was, between the good rows around it
    actions = [r["action"] for r in records]
    assert actions == ["update"] + ["quarantined", "update"] * len(POISON) + ["update"]

    with open_log("sqlite:///log.db") as audit_log:
        lines = [e.line for e in audit_log.read()]
    assert not any(MARKER in line for line in lines if '"quarantined"' in line)
    assert f'"limit":{huge}' in lines[-1]  # the exact integer was hashed
    check_chain(lines)
    paths, _ = export_today(workdir, rsa_keys)
    assert verify_export(paths.jsonl, rsa_keys / "audit-public.pem").ok
    assert "Chain intact" in seed_snippet(paths.jsonl)
    scan = gap_scan(workdir, "--fail-on-undocumented")  # evidence an auditor must hear of
    assert scan.returncode == 1
    findings = [line for line in scan.stdout.splitlines() if line.startswith("quarantined ")]
    assert len(findings) == len(POISON), scan.stdout


def test_gap_scan_and_drift_report_an_unreadable_log_line_without_crashing(
    workdir: Path,
) -> None:
    record_changes(workdir, 3)
    relay_in_process()
    tamper("UPDATE audit_log SET line = ? WHERE sequence = 2", '{"sequence": 2, "recorded_at": 5')
    scan = gap_scan(workdir)
    assert scan.returncode == 1 and "Traceback" not in scan.stderr
    assert "sequence 2 is unreadable" in scan.stdout
    tamper(
        "UPDATE audit_log SET line = ? WHERE sequence = 3",
        '{"sequence":3,"timestamp_utc":"2026-01-01T00:00:00.000000Z","recorded_at":7}',
    )
    scan = gap_scan(workdir)
    assert scan.returncode == 1 and "Traceback" not in scan.stderr
    assert "sequence 3 is unreadable: field 'recorded_at'" in scan.stdout
    drift = run_cli("drift", "--as-of", today(), cwd=workdir)
    assert drift.returncode == 1 and "Traceback" not in drift.stderr
    assert "sequence 2 is unreadable" in drift.stderr


# -- 7. time ----------------------------------------------------------------------------
def test_a_producer_ten_years_ahead_hides_nothing_from_any_window(
    workdir: Path, rsa_keys: Path
) -> None:
    record_changes(workdir, 2)
    ahead = datetime.now(UTC) + timedelta(days=3653)
    record_changes(workdir, 1, clock=SteppingClock(ahead), start=2)
    record_changes(workdir, 2, start=3)
    metrics = relay_in_process()

    records = log_records()
    assert [r["flag_key"] for r in records] == [f"flag-{n}" for n in range(5)]
    skewed = records[2]
    assert skewed["recorded_at"] > "2036"  # the producer's claim is kept as evidence
    assert all(r["timestamp_utc"] <= r["relayed_at"] for r in records)
    stamps = [r["timestamp_utc"] for r in records]
    assert stamps == sorted(stamps) and all(s.startswith(today()) for s in stamps)
    assert sample(metrics, "flagtrail_producer_clock_skew_total") == 1

    paths, manifest = export_today(workdir, rsa_keys)
    assert manifest["record_count"] == 5  # every event, the skewed one included
    assert "Chain intact: 5 records" in seed_snippet(paths.jsonl)
    scan = gap_scan(workdir, "--fail-on-undocumented")
    assert scan.returncode == 1 and "clock_skew" in scan.stdout
    assert "1 event(s) recorded by a producer clock" in scan.stdout
    tolerant = gap_scan(workdir, "--clock-skew-tolerance", str(3654 * 86400))
    assert "clock_skew" not in tolerant.stdout


def test_a_producer_clock_behind_keeps_its_time_and_never_moves_stamps_back(
    workdir: Path, h1_clock: SteppingClock
) -> None:
    record_changes(workdir, 2, clock=h1_clock)
    engine = settings.make_engine("sqlite:///outbox.db")
    early = Outbox(engine, str(workdir / "identities.toml"), clock=lambda: h1_clock.now)
    with engine.begin() as conn:  # the same moment again: stamps stay monotonic
        early.record(conn, good_change(9))
    relay_in_process()
    records = log_records()
    assert [r["timestamp_utc"] for r in records] == [r["recorded_at"] for r in records]
    assert sample(relay_in_process(), "flagtrail_producer_clock_skew_total") == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


@given(before=json_values, after=json_values, reason=st.text(max_size=20))
@hypothesis_settings(max_examples=300, deadline=None)
def test_rows_sealed_with_orjson_get_the_bytes_json_would_give(before, after, reason) -> None:
    record = good_record(1, before=before, after=after, reason=reason)
    row = OutboxRow(OutboxPosition(0, 1), 0, canonical_json(record))
    decoded, fast = decode_row(row, CHAIN)
    assert canonical_json(decoded) == row.payload  # nothing a value could change
    relayed_at = "2026-11-27T10:00:00.000000Z"
    head = ChainHead(41, "ab" * 32, "2026-11-27T09:00:00.000000Z", None)
    quick = seal_records(head, [(dict(decoded), None)], relayed_at, [fast])
    exact = seal_records(head, [(dict(decoded), None)], relayed_at, [False])
    assert quick == exact
