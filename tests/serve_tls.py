"""A real `flagtrail serve` over HTTPS (a test CA's certificate) on a free loopback port,
over a real chain recorded and relayed with the CLI, and a read-only token for it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import FLAGTRAIL, free_port, run_cli
from tests.tls import TestCA


def serve_available() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "flagtrail.cli", "serve", "--help"], capture_output=True, text=True
    ).stdout
    return "--tls-cert" in help_text


def chain_env(root: Path) -> dict[str, str]:
    return {
        "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{root / 'outbox.db'}",
        "FLAGTRAIL_LOG_URL": f"sqlite:///{root / 'log.db'}",
        "FLAGTRAIL_IDENTITIES": str(root / "identities.toml"),
        "AUDIT_SIGNING_KEY_PATH": str(root / "keys/audit-private.pem"),
    }


def create_token(root: Path, name: str = "ci-weekly") -> str:
    made = run_cli(
        "token", "create", "--name", name, "--scope", "export:read", cwd=root, env=chain_env(root)
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[-1]  # the token alone on the last line


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def serve_https(root: Path, ca: TestCA) -> Iterator[Served]:
    port = free_port()
    log = (root / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [*FLAGTRAIL, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key)],
        cwd=root, env={**os.environ, **chain_env(root)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (root / f"serve-{port}.log").read_text()
            try:
                if httpx.get(
                    f"{url}/healthz",
                    verify=ssl.create_default_context(cafile=ca.ca_cert),
                    timeout=2,
                ).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "flagtrail serve did not start"
            time.sleep(0.1)
        yield Served(url, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
