"""Attacks on `flagtrail serve --workers N`: what an outsider, a broken deployment or a
dying process can do to the workers, their shared rate limit and their metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apiserver import env_for
from tests.conftest import FLAGTRAIL, free_port
from tests.test_api import chain_folder


@pytest.fixture
def folder(tmp_path: Path, rsa_keys: Path) -> Path:
    folder = chain_folder(tmp_path / "chain", rsa_keys, records=10)
    (folder / "tmp").mkdir()
    return folder


def serve_until_exit(folder: Path, *args: str, timeout: float = 40) -> tuple[int, str]:
    """Run `flagtrail serve` expecting it to stop by itself; kill its whole process
    group (workers too) if it does not."""
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*FLAGTRAIL, "serve", "--port", str(free_port()), *args],
            cwd=folder,
            env={**os.environ, **env_for(folder, TMPDIR=str(folder / "tmp"))},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"serve kept running {timeout} s:\n{log.read_text()[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # no worker outlives the test
            os.killpg(process.pid, signal.SIGKILL)
    return code, log.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_worker_that_cannot_start_stops_serve_with_one_sentence(
    folder: Path, workers: str
) -> None:
    """The outbox turns unreadable between `serve`'s own checks and the workers' start
    (it is only opened by the workers). Failing on the current code (workers=2): uvicorn's
    supervisor restarts the failing worker forever, printing a traceback each time, and
    `serve` never exits."""
    (folder / "outbox.db").write_bytes(b"not a database, " * 512)
    code, log = serve_until_exit(folder, "--workers", workers)
    assert code == 2, log  # ConfigError, as with one worker
    assert "Traceback" not in log, log
    said = [line for line in log.splitlines() if line.startswith("flagtrail: error:")]
    assert said == ["flagtrail: error: cannot use the outbox database: file is not a database"]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["--rate-limit", "--max-streams"])
def test_a_rate_or_stream_count_too_big_for_a_float_is_one_sentence(
    folder: Path, workers: str, option: str
) -> None:
    """Failing on the current code: --rate-limit 10**400 ends `serve` in an OverflowError
    traceback (after the banner, with two workers); --max-streams 10**400 starts, and
    then every /v1/export answers 500 (the share of slots overflows a float)."""
    code, log = serve_until_exit(folder, "--workers", workers, option, str(10**400), timeout=15)
    assert code == 2, log
    assert "Traceback" not in log and "serving" not in log, log
    said = [line for line in log.splitlines() if "error:" in line]  # argparse's, or ours
    assert len(said) == 1 and f"{option}: must be at most" in said[0], log


def test_the_limit_holds_for_the_variable_too(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGTRAIL_API_RATE_LIMIT", str(10**20))
    code, log = serve_until_exit(folder, timeout=15)
    assert code == 2, log
    assert "FLAGTRAIL_API_RATE_LIMIT: must be at most 1000000000" in log, log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_show_only_this_servers_own_counts(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Failing on the current code with one worker: PROMETHEUS_MULTIPROC_DIR left in the
    environment for another program (a gunicorn app's image sets it) makes /metrics add up
    that program's files: its metrics are shown to our metrics:read tokens, and counts
    of an earlier run of serve are added to ours."""
    import httpx

    from tests.apiserver import make_token, serve
    from tests.test_api import auth

    foreign = tmp_path / "someone-elses-metrics"
    foreign.mkdir()
    writer = (
        "from prometheus_client import Counter\n"
        "Counter('payroll_payments', 'another program').inc(7)\n"
        "Counter('flagtrail_api_requests', 'an earlier run', ['route', 'status'])"
        ".labels('/v1/head', '200').inc(1000)\n"
    )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(foreign))
    subprocess.run([sys.executable, "-c", writer], check=True)
    assert list(foreign.glob("counter_*.db"))
    reader = make_token(folder, "reader", "export:read", "metrics:read")
    with serve(folder, "--workers", workers) as s:
        assert httpx.get(f"{s.url}/v1/head", headers=auth(reader)).status_code == 200
        text = httpx.get(f"{s.url}/metrics", headers=auth(reader)).text
    assert "payroll" not in text
    heads = [
        line
        for line in text.splitlines()
        if line.startswith("flagtrail_api_requests_total{") and 'route="/v1/head"' in line
    ]
    assert [float(line.rsplit(" ", 1)[1]) for line in heads] == [1.0], heads


def test_concurrent_connections_across_workers_get_exactly_the_burst(folder: Path) -> None:
    """Held: forty requests at once on twenty connections, over two workers that take the
    same bucket under flock, let exactly the burst through, no more."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.apiserver import make_token, serve
    from tests.test_api import auth
    from tests.test_api_workers import counted_by, wait_for_workers

    busy = make_token(folder, "busy", "export:read")
    with serve(folder, "--workers", "2", "--rate-limit", "5", TMPDIR=str(folder / "tmp")) as s:
        wait_for_workers(s, 2)

        def head(_: int) -> int:
            with httpx.Client() as client:  # a connection of its own
                return client.get(f"{s.url}/v1/head", headers=auth(busy)).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(head, range(40)))
        assert len(counted_by(folder / "tmp")) == 2, "both workers answered"
    assert codes.count(200) == 5 and codes.count(429) == 35, codes


def test_a_worker_failing_on_a_bug_stops_serve_rather_than_restarting_forever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error no sentence covers (a bug) is shown once, with its traceback, and the
    worker exits as failing to start: uvicorn's supervisor then stops the server instead
    of restarting it forever."""
    from uvicorn.config import STARTUP_FAILURE

    from flagtrail.api.workers import WorkerApp, _start_failure
    from producers.errors import ConfigError

    worker = WorkerApp(None, None, "json", "info", tmp_path)  # type: ignore[arg-type]
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        with pytest.raises(SystemExit) as exited:
            worker._give_up(exc)
    assert exited.value.code == STARTUP_FAILURE
    assert "Traceback" in capsys.readouterr().err
    error = _start_failure(worker.failure)
    assert isinstance(error, ConfigError) and "RuntimeError" in str(error)
