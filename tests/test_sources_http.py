"""The webhook receivers behind a real `flagtrail serve`: what a platform's delivery
gets back over HTTP (the mapping and the outbox are tests/test_sources.py's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from producers.sources.webhooks import sign
from tests.apiserver import serve
from tests.conftest import run_cli
from tests.test_sources import FS_AUDIT, LD_ENTRY, SECRET, flagsmith_body

SECRETS = {"FLAGTRAIL_LAUNCHDARKLY_WEBHOOK_SECRET": SECRET}


def outbox_actions(folder: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(folder / "outbox.db") as conn:
        rows = conn.execute("SELECT payload FROM flagtrail_outbox ORDER BY id").fetchall()
    return [json.loads(p)["action"] for (p,) in rows]


def test_launchdarkly_deliveries_over_http(workdir: Path, rsa_keys: Path) -> None:
    shutil.copy(rsa_keys / "audit-private.pem", workdir / "audit-private.pem")
    assert run_cli("relay", "--once", cwd=workdir).returncode == 0  # serve needs a log
    with serve(workdir, **SECRETS) as server:
        url = f"{server.url}/v1/sources/launchdarkly"
        body = json.dumps(LD_ENTRY).encode()
        headers = {"X-LD-Signature": sign(SECRET, body), "Content-Type": "application/json"}
        first = httpx.post(url, content=body, headers=headers)
        assert first.status_code == 200 and first.json()["duplicate"] is False
        assert outbox_actions(workdir) == ["update"]  # durable when 200 arrived
        replay = httpx.post(url, content=body, headers=headers)
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
        forged = httpx.post(url, content=body + b" ", headers=headers)
        assert forged.status_code == 401
        assert forged.headers["content-type"] == "application/problem+json"
        assert forged.json()["type"].endswith("bad-signature")
        bad = b'{"kind": "flag"'
        malformed = httpx.post(url, content=bad, headers={"X-LD-Signature": sign(SECRET, bad)})
        assert malformed.status_code == 400 and malformed.json()["status"] == 400
        huge = b"[" * (2 * 1024 * 1024)
        too_big = httpx.post(url, content=huge, headers={"X-LD-Signature": sign(SECRET, huge)})
        assert too_big.status_code == 413
        # Flagsmith has no secret here: no receiver, rather than one accepting anything
        fs_body = flagsmith_body(FS_AUDIT)
        unset = httpx.post(
            f"{server.url}/v1/sources/flagsmith",
            content=fs_body,
            headers={"X-Flagsmith-Signature": sign(SECRET, fs_body)},
        )
        assert unset.status_code == 404
    assert outbox_actions(workdir) == ["update", "rejected"]
