"""`flagtrail pull` against a real `flagtrail serve` over HTTPS: the package lands,
verifies against the registered key and is the package `flagtrail export` writes; a
refused token is one sentence and exit 7."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.witness.cosignature import generate_witness_key
from tests.conftest import run_cli
from tests.serve_tls import chain_env, create_token, serve_available, serve_https
from tests.test_cli import RECORD
from tests.tls import TestCA, make_ca

TODAY = datetime.now(UTC).date()
# the window ends tomorrow: records made after midnight (a run that crosses it) stay in
START, END = (TODAY - timedelta(days=7)).isoformat(), (TODAY + timedelta(days=1)).isoformat()
STEM = f"flag-audit-soc2_{START}_{END}"
pytestmark = pytest.mark.skipif(
    not serve_available(), reason="`flagtrail serve` is built in parallel (issue 8, section 1)"
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from producers.identity import SAMPLE_DIRECTORY

    root = tmp_path_factory.mktemp("served")
    (root / "identities.toml").write_text(SAMPLE_DIRECTORY)
    env = chain_env(root)
    assert run_cli("keygen", "--out", "keys", cwd=root).returncode == 0
    assert run_cli(*RECORD, "--approver", "bob@example.com", cwd=root, env=env).returncode == 0
    assert run_cli(*RECORD, "--approver", "alice@example.com", cwd=root, env=env).returncode == 3
    assert run_cli("relay", "--once", cwd=root, env=env).returncode == 0
    return root


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def pull(url: str, out: Path, chain: Path, token: str, ca: TestCA, *args: str):
    return run_cli(
        "pull", "--api", url, "--start", START, "--end", END, "--out", str(out),
        "--pubkey", str(chain / "keys/audit-public.pem"), *args,
        env={"AUDIT_TOKEN": token, "CURL_CA_BUNDLE": str(ca.ca_cert)},
    )  # fmt: skip


def test_pull_from_serve_lands_the_exported_package_verified(
    chain: Path, ca: TestCA, tmp_path: Path
) -> None:
    token = create_token(chain, "puller")
    with serve_https(chain, ca) as server:
        result = pull(server.url, tmp_path / "pulled", chain, token, ca)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Chain intact: 2 records" in result.stdout
    assert "Signature: valid, signed by a trusted key" in result.stdout
    exported = run_cli(
        "export", "--start", START, "--end", END, "--out", str(tmp_path / "exported"),
        cwd=chain, env=chain_env(chain),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    for suffix in (".jsonl", ".jsonl.sig", ".summary.txt"):
        pulled = (tmp_path / "pulled" / f"{STEM}{suffix}").read_bytes()
        assert pulled == (tmp_path / "exported" / f"{STEM}{suffix}").read_bytes(), suffix
    assert not list((tmp_path / "pulled").glob("*.partial"))


@pytest.mark.parametrize("revoked", [False, True], ids=["unknown", "revoked"])
def test_pull_with_a_refused_token_exits_7_in_one_sentence(
    chain: Path, ca: TestCA, tmp_path: Path, revoked: bool
) -> None:
    token = "ftk_" + "0" * 43  # the shape of a token, but none issued
    if revoked:
        token = create_token(chain, "leaver")
        gone = run_cli("token", "revoke", "leaver", cwd=chain, env=chain_env(chain))
        assert gone.returncode == 0, gone.stderr
    with serve_https(chain, ca) as server:
        result = pull(server.url, tmp_path, chain, token, ca)
    assert result.returncode == 7, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "answered 401" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def proven_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chain whose relay signs Merkle checkpoints: /v1/package carries proofs."""
    from producers.identity import SAMPLE_DIRECTORY

    root = tmp_path_factory.mktemp("proven")
    (root / "identities.toml").write_text(SAMPLE_DIRECTORY)
    env = proven_env(root)
    for command in (
        ["keygen", "--out", "keys"],
        ["keygen", "--type", "note", "--name", "log.example", "--out", "keys"],
        ["keygen", "--type", "note", "--name", "log.example", "--out", "other"],
        [*RECORD, "--approver", "bob@example.com"],
        ["relay", "--once"],
    ):
        done = run_cli(*command, cwd=root, env=env)
        assert done.returncode == 0, done.stderr
    return root


def proven_env(root: Path) -> dict[str, str]:
    return {
        **chain_env(root),
        "FLAGTRAIL_NOTE_KEY_PATH": str(root / "keys/note-private.key"),
        "FLAGTRAIL_PSEUDONYM_KEY_PATH": str(root / "pseudonym.key"),
        "FLAGTRAIL_VAULT_KEY_PATH": str(root / "vault.key"),
    }


def test_pull_checks_the_packages_proofs_with_the_keys_it_is_given(
    proven_chain: Path, ca: TestCA, tmp_path: Path
) -> None:
    """pull took no note, witness or TSA keys: a package's Merkle proofs were never
    checked against the log's key and witnesses could not be required."""
    root = proven_chain
    token = create_token(root, "prover")
    _, witness_key = generate_witness_key("witness.example")  # a witness that never cosigned
    with serve_https(root, ca) as server:
        right = pull(server.url, tmp_path / "right", root, token, ca,
                     "--note-key", str(root / "keys/note-public.vkey"))  # fmt: skip
        wrong = pull(server.url, tmp_path / "wrong", root, token, ca,
                     "--note-key", str(root / "other/note-public.vkey"))  # fmt: skip
        unwitnessed = pull(server.url, tmp_path / "unwitnessed", root, token, ca,
                           "--witness-key", witness_key, "--min-witnesses", "1")  # fmt: skip
    assert right.returncode == 0, right.stdout + right.stderr
    assert "signed by a trusted note key" in right.stdout
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert unwitnessed.returncode == 1, unwitnessed.stdout + unwitnessed.stderr
