"""One error tree at the command level: every command, fed bad input, says one sentence.

The commands are enumerated from ``build_parser()``, and the bad inputs from each
command's own options, so a new command or option is covered without editing this
file; a command none of the bad inputs applies to fails the coverage test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flagtrail.cli import build_parser
from producers.errors import EXIT_TAMPERED
from tests.conftest import FLAGTRAIL, run_cli


def _leaf_commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from _leaf_commands(child, (*prefix, name))


COMMANDS = dict(_leaf_commands(build_parser()))

# Files the bad inputs point at, created by the fixture below in the working folder.
GARBAGE = "garbage.bin"  # not JSON, not PEM, not TOML: undecodable bytes
FOLDER = "a-folder"  # a directory where a file is expected
MISSING = "missing/nothing.here"

# option -> bad values; each one is its own case, the rest of the command stays valid
BAD_OPTIONS: dict[str, list[str]] = {
    "--start": ["2026-02-30", "yesterday"],
    "--end": ["2026-13-01"],
    "--as-of": ["01/02/2026"],
    "--from": ["not-a-time"],
    "--to": ["2026-01-01T25:00:00Z"],
    "--log-url": [
        "redis://x",
        "kafka://",
        "sqlite:///missing/nothing.here/log.db",
        "sqlite:///a-folder",
        "sqlite:///garbage.bin",
    ],
    "--outbox-url": [
        "mysql://x/y",
        "::not a url::",
        "sqlite:///missing/nothing.here/outbox.db",
        "sqlite:///a-folder",
        "sqlite:///garbage.bin",
        "postgresql+psycopg://u:secretpw@127.0.0.1:1/db?connect_timeout=2",
    ],
    "--signing-key": [MISSING, FOLDER, GARBAGE],
    "--pubkey": [MISSING, FOLDER, GARBAGE],
    "--previous": [MISSING, FOLDER, GARBAGE],
    "--identities": [MISSING, FOLDER, GARBAGE],
    "--controls": ["CC9.9", ","],
    "--key-fingerprint": ["SHA256:nope"],
    "--out": [GARBAGE],
    "--dir": [GARBAGE],
    "--chain": ["../../etc", "UPPER CASE"],
    "--events": ["0", "many"],
    "--batch-size": ["-1"],
    "--before": ["{oops"],
    "--after": ["[1,"],
    "--workers": ["zero"],
    "--weeks": ["0"],
    "--metrics-port": ["http"],
    "--outbox-days": ["0", "month"],
    "--vault-days": ["-1"],
    "--tsa-url": ["ftp://x", "http://127.0.0.1:9/"],
    "--tsa-cert": [MISSING, FOLDER, GARBAGE],
    "--witness-key": ["nope", MISSING, GARBAGE],
    "--min-witnesses": ["many"],
    "--key": [MISSING, FOLDER, GARBAGE],
    "--trusted-log": ["no-equals", "a=notakey"],
    "--trusted-logs": [MISSING, FOLDER, GARBAGE],
    "--database-url": [
        "mysql://x/y",
        "::not a url::",
        "sqlite:///missing/nothing.here/unleash.db",
        "postgresql+psycopg://u:secretpw@127.0.0.1:1/db?connect_timeout=2",
    ],
    "--url": ["not a url", "ftp://example.com/"],
    "--interval": ["0", "soon", "nan"],
    "--lookback": ["-1", "nan", "1e300"],
    "--chunk": ["0"],
    "--port": ["99999", "http"],
    "--tls-cert": [MISSING, GARBAGE],
    "--max-window-days": ["0"],
    "--rate-limit": ["-5"],
    "--max-streams": ["0"],
    "--forwarded-allow-ips": ["proxy.internal", "10.0.0.1,300.1.1.1"],
    "--scope": ["flags:write"],
    "--expires": ["soon", "0d"],
}
BAD_POSITIONALS = {"file": [MISSING, FOLDER, GARBAGE]}

# valid values for required options, so that only the bad value is wrong
VALID = {
    "--start": "2026-01-01",
    "--end": "2026-01-07",
    "--from": "2026-01-01T00:00:00Z",
    "--to": "2026-01-01T01:00:00Z",
    "--events": "3",
    "--scope": "export:read",
    "--name": "ci-weekly",
}


def _required(parser: argparse.ArgumentParser, leave_out: str) -> list[str]:
    args: list[str] = []
    for action in parser._actions:
        if not action.required or leave_out in action.option_strings:
            continue
        if not action.option_strings:
            continue  # positionals are filled by the case itself
        option = action.option_strings[-1]
        value = VALID.get(option) or (action.choices[0] if action.choices else "x@example.com")
        args += [option, str(value)]
    return args


def _cases() -> Iterator[tuple[str, list[str]]]:
    for path, parser in COMMANDS.items():
        name = " ".join(path)
        positionals = [a for a in parser._actions if not a.option_strings and a.dest != "help"]
        base_positionals = ["evidence.jsonl"] * len(positionals)
        options = {o for a in parser._actions for o in a.option_strings}
        yield (
            f"{name}: nothing given",
            [*path] if any(a.required for a in parser._actions) else [*path, "--no-such-option"],
        )
        for option in sorted(options & set(BAD_OPTIONS)):
            for value in BAD_OPTIONS[option]:
                args = [*path, *base_positionals, *_required(parser, option), option, value]
                yield f"{name} {option} {value}", args
        for action in positionals:
            for value in BAD_POSITIONALS.get(action.dest, []):
                yield f"{name} {action.dest}={value}", [*path, value, *_required(parser, "")]


CASES = dict(_cases())


def test_every_command_has_bad_input_cases() -> None:
    """A new command whose options none of the bad inputs fits must add some here."""
    for path in COMMANDS:
        name = " ".join(path)
        own = [case for case in CASES if case.startswith(name + " ")]
        assert own, f"`flagtrail {name}` has no bad-input case: extend BAD_OPTIONS"


@pytest.fixture
def bad_inputs(workdir: Path) -> Path:
    (workdir / GARBAGE).write_bytes(b"\xff\xfe\x00{not json, not PEM\n-----BEGIN\n")
    (workdir / FOLDER).mkdir()
    (workdir / "evidence.jsonl").write_text("{}\n")
    return workdir


def clean_error_lines(stderr: str) -> list[str]:
    """stderr minus argparse's usage block (its error is one line after it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if line.startswith("flagtrail")]
    return lines


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_input_gives_one_clean_sentence(bad_inputs: Path, args: list[str]) -> None:
    result = run_cli(*args, cwd=bad_inputs, timeout=60)
    assert result.returncode not in (0, 120), (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = clean_error_lines(result.stderr)
    if result.returncode == EXIT_TAMPERED and not lines:
        assert result.stdout.strip()  # a verdict on the evidence (verify), not an error
        return
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flagtrail") or lines[0].startswith("blocked"), result.stderr
    assert "secretpw" not in result.stderr + result.stdout


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) for p in COMMANDS])
def test_help_works_for_every_command(path: tuple[str, ...]) -> None:
    result = run_cli(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: flagtrail {' '.join(path)}" in result.stdout


def _with_closed_stdout(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command whose stdout reader has gone away (as `| head -1` does)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        return subprocess.run(
            [*FLAGTRAIL, *args], cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)


def test_help_into_a_closed_pipe_is_quiet() -> None:
    result = _with_closed_stdout("--help")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stderr == ""


def test_summary_into_a_closed_pipe_is_quiet(bad_inputs: Path) -> None:
    from tests.test_cli import RECORD

    assert run_cli(*RECORD, "--approver", "bob@example.com", cwd=bad_inputs).returncode == 0
    assert run_cli("relay", "--once", cwd=bad_inputs).returncode == 0
    assert run_cli("keygen", cwd=bad_inputs).returncode == 0
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    exported = run_cli("export", "--start", today, "--end", today, "--out", "ev", cwd=bad_inputs)
    assert exported.returncode == 0, exported.stderr
    jsonl = next((bad_inputs / "ev").glob("*.jsonl"))
    result = _with_closed_stdout("summary", str(jsonl), cwd=bad_inputs)
    assert result.stderr == "", result.stderr
    shell = subprocess.run(
        f"{sys.executable} -m flagtrail.cli summary {jsonl} | head -1",
        shell=True,
        cwd=bad_inputs,
        capture_output=True,
        text=True,
    )
    assert shell.stdout == "SOC2 control coverage summary:\n" and shell.stderr == ""


def test_interrupt_exits_130_quietly(bad_inputs: Path) -> None:
    import signal
    import time

    process = subprocess.Popen(
        [*FLAGTRAIL, "loadgen", "--events", "100000", "--rate", "5"],
        cwd=bad_inputs,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
