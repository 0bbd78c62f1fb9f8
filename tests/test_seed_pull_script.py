"""The seed's Step 2 script, unchanged but for AUDIT_API_URL, against a real `flagtrail
serve` over HTTPS with a CA the test makes: it downloads, counts, signs, prints the
manifest lines, and the result passes openssl, the seed's verification snippet, and is
byte for byte what `flagtrail export` writes for the window."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.serve_tls import chain_env, create_token, serve_available, serve_https
from tests.test_cli import RECORD
from tests.test_deploy import shellcheck
from tests.tls import TestCA, make_ca

SCRIPT = REPO / "scripts/soc2-evidence-pull.sh"
SEED_SCRIPT = REPO / "tests/seed/soc2-evidence-pull.sh"
SEED_VERIFIER = REPO / "tests/seed/verify_chain.py"
TODAY = datetime.now(UTC).date()
# the window ends tomorrow: records made after midnight (a run that crosses it) stay in
START, END = (TODAY - timedelta(days=7)).isoformat(), (TODAY + timedelta(days=1)).isoformat()
JSONL = f"flag-audit-soc2_{START}_{END}.jsonl"
needs_serve = pytest.mark.skipif(
    not serve_available(), reason="`flagtrail serve` is built in parallel (issue 8, section 1)"
)


def test_the_script_is_the_seeds_but_for_the_url() -> None:
    ours, seed = SCRIPT.read_text().splitlines(), SEED_SCRIPT.read_text().splitlines()
    changed = [(a, b) for a, b in zip(ours, seed, strict=True) if a != b]
    assert changed == [
        (
            'curl -sf "${AUDIT_API_URL:-https://audit-api.internal/v1/export}" \\',
            'curl -sf "https://audit-api.internal/v1/export" \\',
        )
    ]
    shellcheck(SCRIPT.read_text(), "bash")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from producers.identity import SAMPLE_DIRECTORY

    root = tmp_path_factory.mktemp("served")
    (root / "identities.toml").write_text(SAMPLE_DIRECTORY)
    env = chain_env(root)
    assert run_cli("keygen", "--out", "keys", cwd=root).returncode == 0
    for approver, code in (
        ("bob@example.com", 0),
        ("alice@example.com", 3),
        ("bob@example.com", 0),
    ):
        assert run_cli(*RECORD, "--approver", approver, cwd=root, env=env).returncode == code
    relayed = run_cli("relay", "--once", cwd=root, env=env)
    assert relayed.returncode == 0 and "relayed 3 events" in relayed.stdout, relayed.stderr
    return root


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def run_script(
    workdir: Path, url: str, token: str, key: Path, ca: TestCA
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "AUDIT_TOKEN": token,
        "AUDIT_SIGNING_KEY_PATH": str(key),
        "AUDIT_API_URL": url,
        "CURL_CA_BUNDLE": str(ca.ca_cert),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), START, END], cwd=workdir, env=env, capture_output=True, text=True
    )


@needs_serve
def test_the_seed_script_pulls_counts_signs_and_verifies(
    chain: Path, ca: TestCA, tmp_path: Path
) -> None:
    token = create_token(chain)
    key = chain / "keys/audit-private.pem"
    with serve_https(chain, ca) as server:
        result = run_script(tmp_path, f"{server.url}/v1/export", token, key, ca)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"Pulling audit events {START} → {END}…" in out
    assert "Events exported: 3" in out
    assert f"Evidence file : {JSONL}" in out and f"Signature file: {JSONL}.sig" in out
    digest = re.search(r"^SHA-256 : ([0-9a-f]{64})$", out, re.MULTILINE)
    assert digest is not None
    assert f"openssl dgst -sha256 -verify audit-public.pem -signature {JSONL}.sig {JSONL}" in out
    # openssl, as the seed's Verification runs it
    shutil.copy(chain / "keys/audit-public.pem", tmp_path / "audit-public.pem")
    checked = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "audit-public.pem", "-signature",
         f"{JSONL}.sig", JSONL], cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0 and "Verified OK" in checked.stdout
    # the seed's chain snippet, its file name pointed at this window
    snippet = SEED_VERIFIER.read_text().replace(
        "flag-audit-soc2_2026-01-01_2026-06-30.jsonl", JSONL
    )
    seed = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True
    )
    assert seed.returncode == 0 and "Chain intact: 3 records" in seed.stdout, seed.stderr
    # byte for byte what `flagtrail export` writes for the same window and chain
    exported = run_cli("export", "--start", START, "--end", END, "--out", str(tmp_path / "ex"),
                       cwd=chain, env=chain_env(chain))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    pulled = (tmp_path / JSONL).read_bytes()
    assert pulled == (tmp_path / "ex" / JSONL).read_bytes()
    import hashlib

    assert hashlib.sha256(pulled).hexdigest() == digest.group(1)


@needs_serve
def test_a_wrong_token_fails_the_script_and_signs_nothing(
    chain: Path, ca: TestCA, tmp_path: Path
) -> None:
    key = chain / "keys/audit-private.pem"
    with serve_https(chain, ca) as server:
        result = run_script(tmp_path, f"{server.url}/v1/export", "ft_wrong", key, ca)
    assert result.returncode == 22, result.stdout + result.stderr  # curl -f: HTTP error
    assert "Events exported" not in result.stdout
    assert not (tmp_path / f"{JSONL}.sig").exists()
    assert not (tmp_path / JSONL).exists() or (tmp_path / JSONL).stat().st_size == 0


def test_a_download_cut_short_leaves_no_signature(ca: TestCA, tmp_path: Path) -> None:
    """The server dies mid-stream (Content-Length promised, half sent): curl reports a
    partial transfer, the script stops before signing, so no signature vouches for the
    partial file."""
    from tests.hostile_server import hostile_server

    body = b"".join(b'{"line": %d}\n' % n for n in range(5000))

    def answer(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True

    from relay.signing import generate_keypair

    generate_keypair(tmp_path / "keys")
    key = tmp_path / "keys/audit-private.pem"
    with hostile_server(ca, answer) as server:
        result = run_script(tmp_path, f"{server.url}/v1/export", "ftk_x", key, ca)
    assert result.returncode == 18, result.stdout + result.stderr  # curl: partial file
    assert "Events exported" not in result.stdout
    assert not (tmp_path / f"{JSONL}.sig").exists()
