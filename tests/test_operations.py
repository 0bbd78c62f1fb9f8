"""Operating the relay on the embedded default: rotation, gaps, drift, metrics, SIGTERM, HA."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flagtrail.logs import redact_secrets
from producers import Outbox
from relay.export import export_window
from relay.logs import open_log
from relay.verify import verify_export
from tests.conftest import SteppingClock, free_port, run_cli, wait_for
from tests.contracts import good_change
from tests.crash import start_relay
from tests.pseudonymised import alias

SEED_SNIPPET = Path(__file__).resolve().parent / "seed" / "verify_chain.py"


def record_changes(workdir: Path, count: int, clock=None, start: int = 0) -> None:
    from flagtrail import settings

    engine = settings.make_engine("sqlite:///outbox.db")
    outbox = Outbox(engine, str(workdir / "identities.toml"), **({"clock": clock} if clock else {}))
    for n in range(start, start + count):
        with engine.begin() as conn:
            outbox.record(conn, good_change(n))
    engine.dispose()


def relay_once(workdir: Path) -> None:
    result = run_cli("relay", "--once", cwd=workdir)
    assert result.returncode == 0, result.stderr


def log_records() -> list[dict]:
    with open_log("sqlite:///log.db") as audit_log:
        return [json.loads(e.line) for e in audit_log.read()]


def seed_snippet(jsonl: Path) -> str:
    """The seed's ten-line verifier, unchanged, run on ``jsonl`` (it opens a fixed name)."""
    folder = jsonl.parent / "seed-check"
    folder.mkdir(exist_ok=True)
    shutil.copy(jsonl, folder / "flag-audit-soc2_2026-01-01_2026-06-30.jsonl")
    done = subprocess.run(
        [sys.executable, str(SEED_SNIPPET)], cwd=folder, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def export_today(workdir: Path, keys: Path, out: str = "ev"):
    """Export yesterday and today: a fresh log holds only this test's records, and a test
    that runs across midnight (or records an hour back) keeps them all in the window."""
    today = datetime.now(UTC).date()
    since = today - timedelta(days=1)
    with open_log("sqlite:///log.db") as audit_log:
        return export_window(audit_log, since, today, workdir / out, keys / "audit-private.pem")


def test_operator_rotation_links_to_the_record_before_it_and_is_reported(
    workdir: Path, rsa_keys: Path
) -> None:
    record_changes(workdir, 3)
    relay_once(workdir)
    rotated = run_cli(
        "rotate",
        "--reason",
        "annual key ceremony",
        "--actor",
        "bob@example.com",  # an operator (audit-admin)
        "--signing-key",
        str(rsa_keys / "audit-private.pem"),
        cwd=workdir,
    )
    assert rotated.returncode == 0, rotated.stderr
    record_changes(workdir, 2, start=3)
    relay_once(workdir)
    records = log_records()
    rotation = records[3]
    # the chain stays linked: the rotation's prev_hash is the record before it
    assert rotation["action"] == "sentinel_rotation" and rotation["sequence"] == 4
    assert rotation["prev_hash"] == records[2]["hash"]
    assert rotation["meta"]["previous_sequence"] == 3
    assert rotation["meta"]["previous_hash"] == records[2]["hash"]
    assert rotation["meta"]["rotated_by"] == alias(workdir, "bob@example.com")
    assert records[4]["prev_hash"] == rotation["hash"]
    assert [r["sequence"] for r in records] == [1, 2, 3, 4, 5, 6]
    paths, manifest = export_today(workdir, rsa_keys)
    assert [r["record"] for r in manifest["rotations"]] == [4]
    report = verify_export(paths.jsonl, rsa_keys / "audit-public.pem")
    assert report.ok and report.rotations == [4]
    assert "Chain intact: 6 records" in seed_snippet(paths.jsonl)
    assert "Sentinel rotation at record 4" in paths.summary.read_text()
    summary = run_cli("summary", str(paths.jsonl), cwd=workdir)
    assert "Sentinel rotation at record 4" in summary.stdout


def test_rotation_needs_a_known_actor_and_a_reason(workdir: Path) -> None:
    unknown = run_cli("rotate", "--reason", "x", "--actor", "eve@example.com", cwd=workdir)
    assert unknown.returncode == 3 and "not a known identity" in unknown.stderr
    blank = run_cli("rotate", "--reason", " ", "--actor", "bob@example.com", cwd=workdir)
    assert blank.returncode == 2 and "needs a --reason" in blank.stderr


def test_relay_rotates_by_itself_when_the_log_is_lost(workdir: Path, rsa_keys: Path) -> None:
    record_changes(workdir, 4)
    relay_once(workdir)
    lost_head = log_records()[-1]
    for suffix in ("", "-wal", "-shm"):
        Path(f"log.db{suffix}").unlink(missing_ok=True)
    record_changes(workdir, 2, start=4)
    relay_once(workdir)
    records = log_records()
    rotation = records[0]
    assert rotation["action"] == "sentinel_rotation" and rotation["meta"]["automatic"] is True
    assert "the log was recreated or truncated" in rotation["meta"]["reason"]
    # an empty log: the rotation starts it from GENESIS and names the lost head as trusted
    assert rotation["prev_hash"] == "0" * 64 and rotation["meta"]["previous_sequence"] == 0
    assert rotation["meta"]["last_trusted_sequence"] == lost_head["sequence"] == 4
    assert rotation["meta"]["last_trusted_hash"] == lost_head["hash"]
    assert [r["sequence"] for r in records] == [1, 2, 3]
    assert [r["flag_key"] for r in records[1:]] == ["flag-4", "flag-5"]  # old rows not re-sent
    paths, _ = export_today(workdir, rsa_keys)
    report = verify_export(paths.jsonl, rsa_keys / "audit-public.pem")
    assert report.ok and report.rotations == [1]
    assert "Chain intact: 3 records" in seed_snippet(paths.jsonl)


def test_a_tail_that_fails_its_hash_is_not_built_on(workdir: Path) -> None:
    record_changes(workdir, 3)
    relay_once(workdir)
    db = sqlite3.connect("log.db")
    db.execute("DROP TRIGGER audit_log_refuses_update")  # an attacker with file access
    db.execute("UPDATE audit_log SET line = replace(line, 'flag-2', 'flag-X') WHERE sequence = 3")
    db.commit()
    db.close()
    record_changes(workdir, 1, start=3)
    relay_once(workdir)
    records = log_records()
    assert records[3]["action"] == "sentinel_rotation"
    assert "fails its hash" in records[3]["meta"]["reason"]
    assert records[3]["meta"]["last_trusted_sequence"] == 3
    assert records[4]["prev_hash"] == records[3]["hash"]


def test_outage_gap_is_found_documented_and_listed_in_the_manifest(
    workdir: Path, rsa_keys: Path
) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    record_changes(workdir, 3, clock=SteppingClock(hour_ago, timedelta(seconds=10)))
    relay_once(workdir)  # an hour late: the relay was down
    today = datetime.now(UTC).date().isoformat()
    since = hour_ago.date().isoformat()  # yesterday, when the test runs just after midnight
    scan = run_cli("gap", "scan", "--start", since, "--end", today, cwd=workdir)
    assert scan.returncode == 0 and "relay_outage" in scan.stdout and "UNDOCUMENTED" in scan.stdout
    strict = run_cli(
        "gap", "scan", "--start", since, "--end", today, "--fail-on-undocumented", cwd=workdir
    )
    assert strict.returncode == 1
    start = (hour_ago - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    documented = run_cli(
        "gap",
        "document",
        "--from",
        start,
        "--to",
        end,
        "--reason",
        "relay host rebooted for kernel patching",
        "--author",
        "bob@example.com",
        "--signing-key",
        str(rsa_keys / "audit-private.pem"),
        cwd=workdir,
    )
    assert documented.returncode == 0, documented.stderr
    relay_once(workdir)
    scan = run_cli(
        "gap", "scan", "--start", since, "--end", today, "--fail-on-undocumented", cwd=workdir
    )
    assert scan.returncode == 0 and "documented by" in scan.stdout
    statement = log_records()[-1]
    assert statement["action"] == "gap_documented" and statement["prev_hash"] != "0" * 64
    assert statement["meta"]["author"] == alias(workdir, "bob@example.com")
    assert statement["meta"]["statement_signature"]
    _, manifest = export_today(workdir, rsa_keys)
    assert [g["kind"] for g in manifest["documented_gaps"]] == ["relay_outage"]
    assert manifest["undocumented_gaps"] == []
    assert len(manifest["gap_statements"]) == 1


def test_statement_signature_checks_with_the_public_key(workdir: Path, rsa_keys: Path) -> None:
    import base64

    from producers.meta import statement_digest
    from relay.signing import load_public_key, signature_valid

    run_cli(
        "gap",
        "document",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-02",
        "--reason",
        "broker migration",
        "--author",
        "bob@example.com",
        "--signing-key",
        str(rsa_keys / "audit-private.pem"),
        cwd=workdir,
    )
    relay_once(workdir)
    meta = log_records()[-1]["meta"]
    statement = {k: meta[k] for k in meta["signed_fields"]}
    assert set(statement) == {"chain_id", "from", "to", "reason", "author", "stated_at"}
    signature = base64.b64decode(meta["statement_signature"])
    key = load_public_key(rsa_keys / "audit-public.pem")
    assert signature_valid(statement_digest(statement), signature, key)
    statement["reason"] = "nothing happened"
    assert not signature_valid(statement_digest(statement), signature, key)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-03-02", "--to", "2026-03-01"], "must be after --from"),
        (["--from", "yesterday", "--to", "2026-03-01"], "is not a time like"),
        (
            ["--from", "2026-03-01", "--to", "2026-03-02", "--author", "eve@example.com"],
            "not a known identity",
        ),
        (
            ["--from", "2026-03-01", "--to", "2026-03-02", "--signing-key", "none.pem"],
            "signing key none.pem not found",
        ),
    ],
)
def test_gap_document_bad_input(
    workdir: Path, rsa_keys: Path, args: list[str], message: str
) -> None:
    base = {
        "--reason": "x",
        "--author": "bob@example.com",
        "--signing-key": str(rsa_keys / "audit-private.pem"),
    }
    for flag in ("--author", "--signing-key"):
        if flag in args:
            base.pop(flag)
    full = [*args, *[part for pair in base.items() for part in pair]]
    result = run_cli("gap", "document", *full, cwd=workdir)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_drift_fails_when_weekly_counts_drop(workdir: Path) -> None:
    clock = SteppingClock(datetime(2026, 3, 2, tzinfo=UTC), timedelta(hours=4))
    record_changes(workdir, 6 * 4 * 7, clock=clock)  # four steady weeks: 42 a week
    clock.step = timedelta(hours=24)
    record_changes(workdir, 7, clock=clock, start=1000)  # then 7 in a week
    relay_once(workdir)
    steady = run_cli("drift", "--as-of", "2026-03-29", "--weeks", "3", cwd=workdir)
    assert steady.returncode == 0, steady.stdout
    dropped = run_cli("drift", "--as-of", "2026-04-05", "--weeks", "4", cwd=workdir)
    assert dropped.returncode == 1 and "DRIFT" in dropped.stdout


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def daemon_log(workdir: Path, port: int) -> Path:
    return workdir / f"relay-{port}.log"


def start_daemon(workdir: Path, port: int, *extra: str) -> subprocess.Popen:
    """A relay daemon serving metrics on ``port``; its JSON logs go to a file (a pipe
    nobody reads would fill and stall it)."""
    with daemon_log(workdir, port).open("w") as log_file:
        return start_relay(
            workdir,
            "--metrics-port",
            str(port),
            "--idle-wait",
            "0.2",
            *extra,
            env={"AUDIT_TOKEN": "tok-s3cr3t-value"},
            stderr=log_file,
        )


def wait_for_metrics(daemon: subprocess.Popen, workdir: Path, port: int) -> None:
    """Until the daemon serves /metrics; if it exits first, fail with its log."""

    def serving() -> bool:
        assert daemon.poll() is None, daemon_log(workdir, port).read_text()[-2000:]
        return _quiet(scrape, port)[0] == 200

    wait_for(serving, 60, f"the relay's metrics on port {port}")


def test_metrics_health_logs_and_sigterm(workdir: Path) -> None:
    from flagtrail import settings

    record_changes(workdir, 5)
    engine = settings.make_engine("sqlite:///outbox.db")
    from producers.policy import DEFAULT_POLICY, parse_policy

    # an environment the policy does not declare, accepted through a default class
    lenient = parse_policy(DEFAULT_POLICY.replace("# default_class", "default_class"), "t")
    outbox = Outbox(engine, str(workdir / "identities.toml"), policy=lenient)
    with engine.begin() as conn:  # an environment outside the known set: label "other"
        outbox.record(
            conn,
            good_change(
                0,
                actor="carol@example.com",
                role="engineer",
                approver=None,
                environment="qa-blue-42",
                action="create",
            ),
        )
    port = free_port()
    daemon = start_daemon(workdir, port)
    try:
        wait_for_metrics(daemon, workdir, port)
        wait_for(
            lambda: metric(scrape(port)[1], "flagtrail_chain_head_sequence") == 6,
            20,
            "six events relayed",
        )
        text = scrape(port)[1]
        assert metric(text, "flagtrail_relay_active") == 1
        assert 'environment="other"' in text and "qa-blue-42" not in text
        assert "flagtrail_commit_to_log_seconds_bucket" in text
        wait_for(
            lambda: metric(scrape(port)[1], "flagtrail_outbox_pending_rows") == 0,
            20,
            "the backlog gauge",
        )
        assert scrape(port, "/healthz")[0] == 200 and scrape(port, "/ready")[0] == 200
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
        logs = daemon_log(workdir, port).read_text()
    batches = [
        json.loads(line)
        for line in logs.splitlines()
        if line.startswith("{") and '"relay.batch"' in line
    ]
    assert batches and {
        "chain",
        "first_sequence",
        "last_sequence",
        "batch_size",
        "duration_ms",
    } <= set(batches[0])
    assert "tok-s3cr3t-value" not in logs


def _quiet(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return (0, "")


def test_redaction_processor_hides_secret_fields() -> None:
    event = redact_secrets(
        None, "info", {"event": "x", "audit_token": "abc", "password": "p", "batch_size": 3}
    )
    assert event == {
        "event": "x",
        "audit_token": "[redacted]",
        "password": "[redacted]",
        "batch_size": 3,
    }


def test_standby_takes_over_within_ten_seconds_of_a_sigkill(workdir: Path) -> None:
    record_changes(workdir, 2)
    ports = [free_port(), free_port()]
    daemons = [start_daemon(workdir, port) for port in ports]
    try:
        for daemon, port in zip(daemons, ports, strict=True):
            wait_for_metrics(daemon, workdir, port)

        def actives() -> list[float | None]:
            return [metric(_quiet(scrape, p)[1], "flagtrail_relay_active") for p in ports]

        wait_for(lambda: sorted(actives()) == [0.0, 1.0], 20, "one active, one standby")
        active = actives().index(1.0)
        daemons[active].kill()
        daemons[active].wait()
        killed = time.monotonic()
        standby = ports[1 - active]
        wait_for(
            lambda: metric(_quiet(scrape, standby)[1], "flagtrail_relay_active") == 1,
            10,
            "the standby to take over",
        )
        assert time.monotonic() - killed < 10
        record_changes(workdir, 3, start=2)
        wait_for(
            lambda: metric(scrape(standby)[1], "flagtrail_chain_head_sequence") == 5,
            20,
            "the new leader relaying",
        )
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.kill()
            daemon.wait()
    assert [r["sequence"] for r in log_records()] == [1, 2, 3, 4, 5]


def test_bad_metrics_port_is_a_clear_error(workdir: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("relay", "--metrics-port", str(port), cwd=workdir, timeout=30)
    assert result.returncode == 2 and "cannot serve metrics" in result.stderr
