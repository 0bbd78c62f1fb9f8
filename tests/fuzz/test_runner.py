"""The fuzz runner fails loudly: a crash or a fuzzer that ran nothing is exit 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import REPO, atheris_available

ENGINES = [
    pytest.param("atheris", marks=pytest.mark.skipif(not atheris_available(), reason="no atheris")),
    "hypothesis",
]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--out", str(tmp_path), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_a_crash_fails_the_run_and_keeps_the_input(engine: str, tmp_path: Path) -> None:
    done = run(tmp_path, "--engine", engine, "--seconds", "20", "--targets", "selftest_crash")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CRASH" in done.stdout and "self-test: the runner must report this" in done.stdout
    assert list((tmp_path / "selftest_crash").glob("crash-*")), "no crash input saved"
    assert "fuzz: FAILED" in done.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_a_clean_run_says_what_ran_and_for_how_long(engine: str, tmp_path: Path) -> None:
    done = run(
        tmp_path, "--engine", engine, "--seconds", "10", "--targets", "line_decoder", "--seed", "1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = re.search(r"fuzz: line_decoder +(\w+) +([\d.]+) s +([\d,]+) executions +ok", done.stdout)
    assert line, done.stdout
    assert line[1] == engine and float(line[2]) >= 4 and int(line[3].replace(",", "")) > 100
    assert re.search(r"fuzz: ok: [\d,]+ executions in \d+ s", done.stdout)
    assert "seed 1)" in done.stdout
