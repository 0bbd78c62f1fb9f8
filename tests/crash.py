"""Helpers for tests that SIGKILL a real relay process and check what survived."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from relay.canonical import GENESIS, chain_hash, line_parts

RELAY = [sys.executable, "-m", "flagtrail.cli", "--log-format", "json", "relay"]


def start_relay(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen:
    """The relay daemon as a real process (JSON logs on ``stderr``)."""
    return subprocess.Popen(
        [*RELAY, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def kill_repeatedly(
    cwd: Path,
    kills: int,
    rng: random.Random,
    progress: Callable[[], int],
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> list[int]:
    """Start the relay daemon and SIGKILL it at a random moment once it is moving rows,
    ``kills`` times. Returns ``progress()`` (rows relayed) after each kill."""
    seen = []
    for _ in range(kills):
        before = progress()
        process = start_relay(cwd, *args, env=env)
        deadline = time.monotonic() + timeout
        while progress() == before and process.poll() is None:
            assert time.monotonic() < deadline, "the relay made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))  # somewhere inside a batch, or between two
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        seen.append(progress())
    return seen


def check_chain(lines: Iterable[str]) -> list[dict]:
    """Every link and hash, as the seed's verifier would; returns the records."""
    records, prev = [], GENESIS
    for number, line in enumerate(lines, 1):
        ref, payload, digest = line_parts(line.encode())
        assert ref == prev, f"chain break at record {number}"
        assert chain_hash(prev, payload.decode()) == digest, f"bad hash at record {number}"
        records.append(json.loads(line))
        prev = digest
    return records
