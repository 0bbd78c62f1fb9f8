"""`flagtrail serve --workers N`: several processes on one port, one rate limit, one set
of metrics, one receipt per pull, and nothing left running after SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.apiserver import Server, env_for, make_token, serve
from tests.conftest import run_cli
from tests.test_api import H1, auth, chain_folder, cli_export, make_ca_and_cert, receipts


def worker_pids(server: Server) -> set[int]:
    """The serving workers: the spawned children of `flagtrail serve` (not the
    multiprocessing resource tracker)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = set()
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def wait_for_workers(
    server: Server,
    count: int,
    timeout: float = 30,
    verify: ssl.SSLContext | bool = False,
    gone: set[int] = frozenset(),  # type: ignore[assignment]
) -> set[int]:
    """The workers' pids once ``count`` answer, none of them in ``gone`` (killed ones
    stay listed for a moment after SIGKILL)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(server)
        if len(pids) == count and not pids & gone and _all_answering(server, verify):
            return pids
        assert time.monotonic() < deadline, f"{len(pids)} workers: {server.log()}"
        time.sleep(0.2)


def _all_answering(server: Server, verify: ssl.SSLContext | bool) -> bool:
    try:
        return all(
            httpx.get(f"{server.url}/healthz", timeout=2, verify=verify).status_code == 200
            for _ in range(10)
        )
    except httpx.TransportError:
        return False


def counted_by(tmp: Path) -> set[str]:
    """The processes that wrote Prometheus multiprocess files (one file per process)."""
    return {
        m.group(1)
        for path in tmp.glob("flagtrail-serve-*/metrics/counter_*.db")
        if (m := re.match(r"counter_(\d+)\.db", path.name))
    }


@pytest.fixture
def folder(tmp_path: Path, rsa_keys: Path) -> Path:
    folder = chain_folder(tmp_path / "chain", rsa_keys, records=40)
    (folder / "tmp").mkdir()
    return folder


def test_workers_share_one_rate_limit(folder: Path) -> None:
    """A per-process limiter would let a token through once per worker."""
    busy = make_token(folder, "busy", "export:read")
    with serve(folder, "--workers", "2", "--rate-limit", "3", TMPDIR=str(folder / "tmp")) as s:
        wait_for_workers(s, 2)
        codes = [httpx.get(f"{s.url}/v1/head", headers=auth(busy)).status_code for _ in range(24)]
        assert codes.count(200) == 3 and codes.count(429) == 21, codes
        assert len(counted_by(folder / "tmp")) == 2, "both workers answered"


def test_metrics_add_up_every_workers_requests(folder: Path) -> None:
    reader = make_token(folder, "reader", "export:read", "metrics:read")
    with serve(folder, "--workers", "2", TMPDIR=str(folder / "tmp")) as s:
        wait_for_workers(s, 2)
        for _ in range(30):
            assert httpx.get(f"{s.url}/v1/head", headers=auth(reader)).status_code == 200
        assert len(counted_by(folder / "tmp")) == 2, "both workers answered"
        text = httpx.get(f"{s.url}/metrics", headers=auth(reader)).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("flagtrail_api_requests_total{")
        and 'route="/v1/head"' in line
        and 'status="200"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) == 30


def test_concurrent_pulls_across_workers_each_get_the_export_and_one_receipt(
    folder: Path,
) -> None:
    """Two processes chain receipts into one SQLite outbox at once: none may be lost,
    and no pull may fail on the other's write lock."""
    token = make_token(folder, "ci", "export:read")
    expected = cli_export(folder, H1["start"], H1["end"], "cli")
    before = len(receipts(folder))
    with serve(folder, "--workers", "2", TMPDIR=str(folder / "tmp")) as s:
        wait_for_workers(s, 2)

        def pull(_: int) -> tuple[int, bytes]:
            got = httpx.get(f"{s.url}/v1/export", params=H1, headers=auth(token), timeout=60)
            return got.status_code, got.content

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(pull, range(36)))
        assert len(counted_by(folder / "tmp")) == 2, "both workers answered"
    assert [code for code, _ in results] == [200] * 36
    assert all(body == expected for _, body in results)
    assert len(receipts(folder)) - before == 36


def test_every_worker_serves_https(folder: Path, tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    trusting = ssl.create_default_context(cafile=str(ca))
    token = make_token(folder, "ci", "export:read")
    expected = cli_export(folder, H1["start"], H1["end"], "cli")
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with serve(
        folder, "--workers", "2", *tls, scheme="https", verify=trusting,
        TMPDIR=str(folder / "tmp"),
    ) as s:  # fmt: skip
        wait_for_workers(s, 2, verify=trusting)
        for _ in range(12):
            got = httpx.get(f"{s.url}/v1/export", params=H1, headers=auth(token), verify=trusting)
            assert got.status_code == 200 and got.content == expected
        assert len(counted_by(folder / "tmp")) == 2, "both workers answered"


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(folder: Path) -> None:
    token = make_token(folder, "ci", "export:read")
    with serve(folder, "--workers", "2") as s:
        first = wait_for_workers(s, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        after = wait_for_workers(s, 2, gone={victim})
        assert victim not in after and len(after - first) == 1
        for _ in range(10):
            assert httpx.get(f"{s.url}/v1/head", headers=auth(token)).status_code == 200


def test_sigterm_stops_every_worker(folder: Path) -> None:
    with serve(folder, "--workers", "2") as s:
        pids = wait_for_workers(s, 2)
        s.process.send_signal(signal.SIGTERM)
        assert s.process.wait(30) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"worker {pid} outlived"
    leftovers = list((folder).glob("tmp/flagtrail-serve-*"))
    assert leftovers == [], "the shared folder is removed"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_bad_workers_setting_is_one_sentence(folder: Path) -> None:
    result = run_cli("serve", cwd=folder, env=env_for(folder, FLAGTRAIL_API_WORKERS="two"))
    assert result.returncode == 2
    assert "FLAGTRAIL_API_WORKERS: 'two' is not a whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_stream_slots_are_divided_between_workers(folder: Path) -> None:
    import asyncio

    from flagtrail.api.config import ApiConfig
    from flagtrail.api.context import ApiContext
    from flagtrail.settings import Settings

    env = env_for(folder)
    settings = Settings.resolve(env["FLAGTRAIL_OUTBOX_URL"], env["FLAGTRAIL_LOG_URL"])
    ctx = ApiContext.build(ApiConfig(settings=settings, max_streams=5, workers=2))

    async def share() -> int:
        held = 0
        slots = [ctx.stream_slot() for _ in range(5)]
        for slot in slots:
            try:
                await asyncio.wait_for(slot.__aenter__(), 0.05)
                held += 1
            except TimeoutError:
                break
        return held

    assert asyncio.run(share()) == 2  # five slots between two workers: never more than 5
    ctx.engine.dispose()


def test_the_banner_says_how_many_workers_serve(folder: Path) -> None:
    with serve(folder, "--workers", "2") as s:
        wait_for_workers(s, 2)
        assert "2 workers" in s.log()


def test_a_forwarded_address_does_not_dodge_the_limit_on_guessing(folder: Path) -> None:
    """Refused requests are limited per client address. Without a proxy in front, a
    client that names a new X-Forwarded-For each time must not get a new bucket each
    time; behind a proxy the operator names it, and its forwarded addresses count."""
    url = "/v1/head"

    def guesses(server: Server) -> list[int]:
        return [
            httpx.get(
                f"{server.url}{url}",
                headers={**auth(f"ftk_guess{n}"), "X-Forwarded-For": f"203.0.113.{n}"},
            ).status_code
            for n in range(5)
        ]

    with serve(folder, "--rate-limit", "3") as s:
        assert guesses(s) == [401, 401, 401, 429, 429]
    with serve(folder, "--rate-limit", "3", "--forwarded-allow-ips", "127.0.0.1") as s:
        assert guesses(s) == [401] * 5  # five clients behind the proxy, one guess each
