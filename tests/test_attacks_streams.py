"""Attacks on streamed pulls under `flagtrail serve --workers N`: clients that stall,
servers told to stop."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.apiserver import make_token, serve
from tests.test_api import chain_folder, receipts

WIDE = {"start": "2026-01-01", "end": "2040-12-31"}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, rsa_keys: Path) -> Path:
    """A chain whose export (~15 MB) is far more than the socket buffers hold."""
    return chain_folder(tmp_path_factory.mktemp("big") / "chain", rsa_keys, records=20_000)


def stalled_pull(url: str, token: str) -> socket.socket:
    """Ask for the whole chain, read the first bytes, then read nothing more."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sendall(
        f"GET /v1/export?start={WIDE['start']}&end={WIDE['end']} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    assert client.recv(1024).startswith(b"HTTP/1.1 200")
    return client


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_serve_even_while_a_client_stalls_a_pull(big: Path, workers: str) -> None:
    """Failing on the current code: a client that stops reading a pull keeps `serve`
    (one worker or two) running after SIGTERM for as long as it likes (over 60 s here):
    uvicorn waits for every response to finish. An orchestrator then SIGKILLs it, and
    the stalled pull is never chained. Stopped after a grace period instead, the pull is
    chained as started, then once as not complete."""
    token = make_token(big, f"stall-{workers}", "export:read")
    before = len(receipts(big))
    with serve(big, "--workers", workers, "--max-window-days", "6000") as s:
        client = stalled_pull(s.url, token)
        time.sleep(1)
        s.process.send_signal(signal.SIGTERM)
        try:
            code = s.process.wait(40)
        finally:
            client.close()
    assert code in (0, -signal.SIGTERM), s.log()  # one worker: uvicorn re-raises SIGTERM
    new = receipts(big)[before:]
    assert [r["meta"]["outcome"] for r in new] == ["started", "aborted"], json.dumps(new)


def test_a_pull_cut_by_a_killed_worker_still_leaves_a_receipt(big: Path) -> None:
    """What we saw: SIGKILL the workers while a client is pulling; the supervisor
    replaces them and the port keeps answering, but the client holds megabytes of the
    evidence and the chain has no receipt of that pull at all."""
    import os

    import httpx

    from tests.test_api import auth
    from tests.test_api_workers import wait_for_workers

    token = make_token(big, "killed", "export:read")
    before = len(receipts(big))
    with serve(big, "--workers", "2", "--max-window-days", "6000") as s:
        pids = wait_for_workers(s, 2)
        client = stalled_pull(s.url, token)
        time.sleep(1)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for_workers(s, 2, gone=pids)
        client.close()  # it could still read what the kernel had buffered: 3.9 MB once
        assert httpx.get(f"{s.url}/v1/head", headers=auth(token)).status_code == 200
    [started] = receipts(big)[before:]
    assert started["meta"]["outcome"] == "started", "the pull is chained before any byte"
