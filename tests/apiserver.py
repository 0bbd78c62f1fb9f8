"""A real `flagtrail serve` on a free loopback port, over a real chain, for the API tests."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import FLAGTRAIL, free_port, run_cli


@dataclass
class Server:
    url: str
    folder: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def env_for(folder: Path, **extra: str) -> dict[str, str]:
    return {
        "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{folder / 'outbox.db'}",
        "FLAGTRAIL_LOG_URL": f"sqlite:///{folder / 'log.db'}",
        "FLAGTRAIL_IDENTITIES": str(folder / "identities.toml"),
        **extra,
    }


def make_token(folder: Path, name: str, *scopes: str, expires: str = "90d") -> str:
    args = ["token", "create", "--name", name, "--expires", expires]
    for scope in scopes or ("export:read",):
        args += ["--scope", scope]
    result = run_cli(*args, cwd=folder, env=env_for(folder))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@contextmanager
def serve(
    folder: Path,
    *args: str,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = False,
    **env: str,
) -> Iterator[Server]:
    port = free_port()
    log_path = folder / f"serve-{port}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [*FLAGTRAIL, "serve", "--port", str(port), *args],
            cwd=folder,
            env={**os.environ, **env_for(folder, **env)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"{scheme}://127.0.0.1:{port}", folder, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"serve exited: {server.log()}"
            try:
                if httpx.get(f"{server.url}/healthz", verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not start: {server.log()}"
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
