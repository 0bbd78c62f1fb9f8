"""Passwords in URLs never reach a log line, an error sentence or a library's record."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import FLAGTRAIL, run_cli


@pytest.mark.slow  # kafka-python gives up bootstrapping after 30 s
def test_a_real_relay_log_line_names_the_broker_without_its_password(workdir: Path) -> None:
    """The relay daemon, pointed at a Kafka URL with a password, logs its outage."""
    errors = workdir / "stderr.txt"
    with errors.open("w") as sink:
        relay = subprocess.Popen(
            [
                *FLAGTRAIL,
                "--log-format",
                "json",
                "relay",
                "--log-url",
                "kafka://auditor:Hunter2pw@127.0.0.1:1/flag-audit",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        deadline = time.monotonic() + 30
        while "relay.waiting" not in errors.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
    logged = errors.read_text()
    waiting = [line for line in logged.splitlines() if "relay.waiting" in line]
    assert waiting, logged
    assert "Hunter2pw" not in logged
    assert "auditor:***@127.0.0.1:1" in waiting[0]


def test_an_error_sentence_never_shows_the_outbox_password(workdir: Path) -> None:
    result = run_cli(
        "rotate",
        "--reason",
        "r",
        "--actor",
        "a",
        "--outbox-url",
        "postgresql+psycopg://flagtrail:Sw0rdfish@127.0.0.1:1/flagtrail?connect_timeout=2",
        cwd=workdir,
    )
    assert result.returncode == 5, result.stderr  # refused: an outage, retrying may help
    assert "Sw0rdfish" not in result.stderr + result.stdout


# Every path a secret can take into a log line, in a process configured as the CLI does.
SCRIPT = textwrap.dedent(
    """
    import logging, structlog
    from flagtrail.logs import configure
    configure("json", "info", urls=["kafka://svc:Cli-Given-9@broker:9092/t"])
    log = structlog.get_logger()
    url = "postgresql+psycopg://app:T0p%2FSecret@db.internal:5432/flags"
    log.warning("relay.waiting", detail=f"cannot connect to {url}")
    log.info("nested", ctx={"urls": [url, ("x", {"deep": url})]}, n=3)
    log.info("bare value", detail="the password T0p/Secret leaked alone")
    log.info("given on the command line", detail="sasl said Cli-Given-9 was wrong")
    log.info("query style", detail="host=db user=app password=Qu3ry-Pass sslmode=require")
    try:
        raise ConnectionError(f"lost {url}")
    except ConnectionError:
        log.exception("relay.crashed")
    logging.getLogger("sqlalchemy.pool").warning("reconnecting to %s", url)
    try:
        raise RuntimeError(url)
    except RuntimeError:
        logging.getLogger("sqlalchemy.engine").error("failed", exc_info=True)
        logging.getLogger("kafka").critical("failed badly: %s", url)
    """
)


def test_every_line_is_redacted_by_value_nested_and_in_exceptions(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "FLAGTRAIL_OUTBOX_URL": "postgresql+psycopg://app:T0p%2FSecret@db.internal/flags",
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) >= 8, result.stderr
    for secret in ("T0p%2FSecret", "T0p/Secret", "Cli-Given-9", "Qu3ry-Pass"):
        assert secret not in result.stderr, secret
    assert "app:***@db.internal:5432/flags" in result.stderr
    assert "RuntimeError" in result.stderr and "ConnectionError" in result.stderr
    assert "password=***" in result.stderr
    assert "failed badly" in result.stderr  # the library's record arrives, redacted


def test_redact_text_keeps_what_is_not_a_secret() -> None:
    from flagtrail.logs import redact_text

    assert (
        redact_text("postgresql+psycopg://user:secret@host/db")
        == "postgresql+psycopg://user:***@host/db"
    )
    for kept in (
        "sqlite:///log.db",
        "kafka://kafka-0:9092,kafka-1:9092/flag-audit",
        "postgresql+psycopg://user@127.0.0.1:5432/db",
        "alice@example.com approved",
    ):
        assert redact_text(kept) == kept
