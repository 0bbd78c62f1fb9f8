"""The flagtrail command as a user meets it: help, happy path, and clear errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

COMMANDS = [
    "demo",
    "record",
    "loadgen",
    "relay",
    "export",
    "verify",
    "summary",
    "keygen",
    "rotate",
    "drift",
    "gap scan",
    "gap document",
    "pull",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_its_options(command: str) -> None:
    result = run_cli(*command.split(), "--help")
    assert result.returncode == 0
    assert "usage: flagtrail" in result.stdout and "--help" in result.stdout


def test_demo_in_a_fresh_folder_ends_verified_with_the_openssl_command(tmp_path: Path) -> None:
    result = run_cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "BLOCKED" in out and "SOC2 CC8.1: production flag change requires a distinct" in out
    assert "Chain intact: 6 records, no tampering detected." in out
    commands = [
        line.strip()
        for line in out.splitlines()
        if line.strip().startswith("openssl dgst -sha256 -verify")
    ]
    assert commands
    for command in commands:
        # the registered key, kept apart from the evidence an auditor receives
        assert "-verify keys/audit-public.pem" in command
        check = subprocess.run(
            command, shell=True, cwd=tmp_path / "demo", capture_output=True, text=True
        )
        assert check.returncode == 0 and "Verified OK" in check.stdout
    assert "Traceback" not in result.stderr


def test_demo_keeps_the_private_key_out_of_the_evidence_and_verifies_with_the_registered_key(
    tmp_path: Path,
) -> None:
    demo = tmp_path / "demo"
    result = run_cli("demo", "--dir", str(demo))
    assert result.returncode == 0, result.stderr
    private = demo / "keys" / "audit-private.pem"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert oct((demo / "keys").stat().st_mode & 0o777) == "0o700"
    evidence = demo / "evidence"
    assert next(evidence.glob("*.jsonl"))
    for file in evidence.rglob("*"):
        assert b"PRIVATE KEY" not in file.read_bytes(), file
    assert not list(demo.glob("*.pem"))
    verify = next(line for line in result.stdout.splitlines() if " verify evidence/" in line)
    assert "--pubkey keys/audit-public.pem" in verify
    # the printed command, run as printed, verifies with the registered key
    printed = next(
        line.strip()
        for line in result.stdout.splitlines()
        if line.strip().startswith("python -m flagtrail.cli verify")
    )
    args = printed.split()[3:]
    again = run_cli(*args, cwd=demo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Chain intact: 6 records" in again.stdout


RECORD = [
    "record",
    "--flag",
    "checkout-v2",
    "--env",
    "production",
    "--action",
    "update",
    "--actor",
    "alice@example.com",
    "--role",
    "release-manager",
    "--before",
    '{"enabled": false}',
    "--after",
    '{"enabled": true}',
    "--reason",
    "Rollout",
    "--change-ref",
    "CHG-1",
]


def test_record_relay_export_verify_summary_from_the_command_line(workdir: Path) -> None:
    assert run_cli("keygen", "--out", ".", "--type", "ec", cwd=workdir).returncode == 0
    ok = run_cli(*RECORD, "--approver", "bob@example.com", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    blocked = run_cli(*RECORD, "--approver", "alice@example.com", cwd=workdir)
    assert blocked.returncode == 3
    assert "SOC2 CC8.1: production flag change requires a distinct approver" in blocked.stderr
    relay = run_cli("relay", "--once", cwd=workdir)
    assert relay.returncode == 0 and "relayed 2 events" in relay.stdout
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    exported = run_cli(
        "export",
        "--start",
        today,
        "--end",
        today,
        "--controls",
        "CC6.1,CC8.1",
        "--out",
        "ev",
        cwd=workdir,
    )
    assert exported.returncode == 0, exported.stderr
    jsonl = next((workdir / "ev").glob("*.jsonl"))
    manifest = json.loads(next((workdir / "ev").glob("*.manifest.json")).read_text())
    assert manifest["controls_reported"] == ["CC6.1", "CC8.1"]
    assert manifest["record_count"] == 2  # --controls never removes records
    verified = run_cli("verify", str(jsonl), "--pubkey", "audit-public.pem", cwd=workdir)
    assert verified.returncode == 0
    assert "Chain intact: 2 records, no tampering detected." in verified.stdout
    summary = run_cli("summary", str(jsonl), cwd=workdir)
    assert summary.stdout.startswith("SOC2 control coverage summary:\n CC6.1: 2 events")
    jsonl.write_text(jsonl.read_text().replace("Rollout", "Rollback", 1))
    tampered = run_cli("verify", str(jsonl), cwd=workdir)
    assert tampered.returncode == 1 and "record 1" in tampered.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--start", "2026-13-01", "--end", "2026-01-02"], "not a date"),
        (
            ["export", "--start", "2026-01-01", "--end", "2026-01-02", "--signing-key", "no.pem"],
            "signing key no.pem not found",
        ),
        (
            ["export", "--start", "2026-01-01", "--end", "2026-01-02", "--controls", "CC9.9"],
            "unknown SOC2 control",
        ),
        (["verify", "missing.jsonl"], "cannot read export missing.jsonl"),
        (["summary", "missing.jsonl"], "not found"),
        (
            [*RECORD, "--approver", "bob@example.com", "--identities", "none.toml"],
            "identity directory none.toml not found",
        ),
        ([*RECORD[:-2], "--change-ref", "CHG-1", "--before", "{oops"], "not valid JSON"),
        (
            [
                "record",
                "--flag",
                "f",
                "--env",
                "staging",
                "--action",
                "toggle",
                "--actor",
                "a",
                "--role",
                "r",
            ],
            "invalid choice",
        ),
        (["relay", "--once", "--log-url", "redis://x"], "log URL 'redis://x' is not supported"),
        (["relay", "--once", "--outbox-url", "mysql://x/y"], "not supported"),
        (["loadgen", "--events", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error_without_a_traceback(
    workdir: Path, args: list[str], message: str
) -> None:
    result = run_cli(*args, cwd=workdir)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_actor_is_blocked_and_the_rejection_is_recorded(workdir: Path) -> None:
    result = run_cli(
        *[a if a != "alice@example.com" else "eve@example.com" for a in RECORD],
        "--approver",
        "bob@example.com",
        cwd=workdir,
    )
    assert result.returncode == 3
    assert "SOC2 CC6.1: actor 'eve@example.com' is not a known identity" in result.stderr
    relay = run_cli("relay", "--once", cwd=workdir)
    assert "relayed 1 events" in relay.stdout


def test_unreadable_export_lines_are_named(workdir: Path) -> None:
    (workdir / "x.jsonl").write_text('{"not": "a record"}\n')
    result = run_cli("verify", "x.jsonl", "--chain-only", cwd=workdir)
    assert result.returncode == 1 and "record 1: hash or prev_hash is missing" in result.stdout
    unsigned = run_cli("verify", "x.jsonl", cwd=workdir)  # no manifest: nothing binds it
    assert unsigned.returncode == 1 and "manifest" in unsigned.stderr


def test_keygen_refuses_to_overwrite(workdir: Path) -> None:
    assert run_cli("keygen", cwd=workdir).returncode == 0
    again = run_cli("keygen", cwd=workdir)
    assert again.returncode == 2 and "--force" in again.stderr
    assert oct((workdir / "audit-private.pem").stat().st_mode & 0o777) == "0o600"
