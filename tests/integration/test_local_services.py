"""deploy/local/up: idempotent, eval-able, one PostgreSQL and one Kafka."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Services

pytestmark = pytest.mark.integration


def test_up_twice_leaves_one_of_each_and_prints_exports(services: Services) -> None:
    if not services.local:
        pytest.skip("only for servers started by deploy/local")

    def up() -> str:
        return subprocess.run(
            ["bash", str(REPO / "deploy/local/up")],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout

    first = up()
    state = Path(first.strip().splitlines()[-1].split(": ", 1)[1])

    def server_pids() -> tuple[str, str]:
        postmaster = (state / "pg/data/postmaster.pid").read_text().splitlines()[0]
        return postmaster, (state / "kafka/kafka.pid").read_text().strip()

    before = server_pids()
    second = up()
    assert first == second
    assert server_pids() == before  # the same processes: nothing was started again
    for pid in before:
        assert Path(f"/proc/{pid}").exists()
    lines = second.strip().splitlines()
    assert lines[0].startswith("export FLAGTRAIL_OUTBOX_URL=postgresql+psycopg://")
    assert lines[1].startswith("export FLAGTRAIL_LOG_URL=kafka://127.0.0.1:")
    assert lines[1].endswith("/flag-audit")
