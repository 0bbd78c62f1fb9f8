"""Issue 10 §5: RFC 3161 timestamps on the manifest, from a real TSA on loopback
(`openssl ts -reply` behind deploy/local/tsa), checked by `openssl ts -verify` and by
`flagtrail verify`, and the lies each check catches."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.export import PackagePaths
from relay.stamping import token_path
from relay.timestamp import request_token
from tests.conftest import SteppingClock, run_cli
from tests.test_evidence import build_chain

REPO = Path(__file__).resolve().parents[1]
START, END = date(2026, 1, 1), date(2026, 6, 30)


@dataclass(frozen=True)
class Tsa:
    url: str
    ca: Path
    folder: Path


def _start_tsa(folder: Path) -> Tsa:
    done = subprocess.run(
        ["bash", str(REPO / "deploy/local/tsa"), str(folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    exports = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    return Tsa(exports["FLAGTRAIL_TSA_URL"], Path(exports["FLAGTRAIL_TSA_CERTS"]), folder)


def _stop_tsa(tsa: Tsa) -> None:
    subprocess.run(["bash", str(REPO / "deploy/local/tsa"), str(tsa.folder), "stop"], check=False)


@pytest.fixture(scope="session")
def tsas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tsa, Tsa]]:
    """The auditor's trusted TSA, and a rogue one with its own CA."""
    trusted = _start_tsa(tmp_path_factory.mktemp("tsa-trusted"))
    rogue = _start_tsa(tmp_path_factory.mktemp("tsa-rogue"))
    yield trusted, rogue
    _stop_tsa(trusted)
    _stop_tsa(rogue)


@pytest.fixture
def chain(sqlite_engine: Engine, workdir: Path) -> Path:
    clock = SteppingClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC), timedelta(days=2))
    build_chain(sqlite_engine, workdir, clock, 20)
    return workdir


def _export(workdir: Path, keys: Path, *extra: str, out: str = "out", start=START, end=END):
    done = run_cli(
        "export",
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--signing-key",
        str(keys / "audit-private.pem"),
        "--out",
        str(workdir / out),
        *extra,
        cwd=workdir,
    )
    stem = f"flag-audit-soc2_{start.isoformat()}_{end.isoformat()}"
    return done, PackagePaths.beside(workdir / out / f"{stem}.jsonl")


def _verify(paths: PackagePaths, keys: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("verify", str(paths.jsonl), "--pubkey", str(keys / "audit-public.pem"), *extra)


def _openssl_verify(paths: PackagePaths, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-data",
            str(paths.manifest),
            "-in",
            str(token_path(paths)),
            "-token_in",
            "-CAfile",
            str(ca),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def stamped(chain: Path, rsa_keys: Path, tsas: tuple[Tsa, Tsa]) -> PackagePaths:
    done, paths = _export(chain, rsa_keys, "--tsa-url", tsas[0].url)
    assert done.returncode == 0, done.stderr
    return paths


def test_a_stamped_package_passes_openssl_and_flagtrail(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    manifest = json.loads(stamped.manifest.read_bytes())
    assert manifest["timestamp"]["tsa_url"] == tsas[0].url
    assert manifest["timestamp"]["token_file"] == token_path(stamped).name
    openssl = _openssl_verify(stamped, tsas[0].ca)
    assert openssl.returncode == 0 and "Verification: OK" in openssl.stdout, openssl.stderr
    done = _verify(stamped, rsa_keys, "--tsa-cert", str(tsas[0].ca))
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("Timestamp:"))
    assert "valid RFC 3161 token" in line and f"genTime {date.today().isoformat()}" in line
    # without a trusted TSA the token still must cover the manifest, and says it is unchecked
    plain = _verify(stamped, rsa_keys)
    assert plain.returncode == 0 and "its TSA is NOT checked" in plain.stdout


def _fails_both(paths: PackagePaths, keys: Path, ca: Path, words: str) -> None:
    done = _verify(paths, keys, "--tsa-cert", str(ca))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "timestamp:" in done.stdout and words in done.stdout, done.stdout
    assert _openssl_verify(paths, ca).returncode != 0


def test_a_token_for_another_digest_fails(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    nonce = int(json.loads(stamped.manifest.read_bytes())["timestamp"]["nonce"])
    other = hashlib.sha256(stamped.manifest.read_bytes() + b" ").digest()
    token_path(stamped).write_bytes(request_token(tsas[0].url, other, nonce))
    _fails_both(stamped, rsa_keys, tsas[0].ca, "another digest")


def test_a_token_with_another_nonce_fails(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    nonce = int(json.loads(stamped.manifest.read_bytes())["timestamp"]["nonce"])
    digest = hashlib.sha256(stamped.manifest.read_bytes()).digest()
    token_path(stamped).write_bytes(request_token(tsas[0].url, digest, nonce + 1))
    assert _openssl_verify(stamped, tsas[0].ca).returncode == 0  # openssl does not know it…
    done = _verify(stamped, rsa_keys, "--tsa-cert", str(tsas[0].ca))  # …the signed manifest does
    assert done.returncode == 1 and "nonce" in done.stdout, done.stdout


def test_a_token_from_an_untrusted_tsa_fails(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    nonce = int(json.loads(stamped.manifest.read_bytes())["timestamp"]["nonce"])
    digest = hashlib.sha256(stamped.manifest.read_bytes()).digest()
    token_path(stamped).write_bytes(request_token(tsas[1].url, digest, nonce))
    assert _openssl_verify(stamped, tsas[1].ca).returncode == 0  # a well-made token…
    _fails_both(stamped, rsa_keys, tsas[0].ca, "does not chain to a trusted TSA")  # …of a stranger


def test_a_token_whose_signature_was_edited_fails(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    token = bytearray(token_path(stamped).read_bytes())
    token[-3] ^= 0x01  # inside the SignerInfo's signature, the token's last field
    token_path(stamped).write_bytes(bytes(token))
    _fails_both(stamped, rsa_keys, tsas[0].ca, "signature does not check")


def test_a_token_whose_gen_time_was_edited_fails(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    token = token_path(stamped).read_bytes()
    year = str(date.today().year).encode()
    at = token.index(year + b"1")  # the GeneralizedTime genTime, YYYYMMDDhhmmssZ
    moved = token[:at] + b"2019" + token[at + 4 :]  # back-dated
    token_path(stamped).write_bytes(moved)
    _fails_both(stamped, rsa_keys, tsas[0].ca, "altered")


def test_a_truncated_or_garbage_token_is_a_finding_not_a_crash(
    stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    token = token_path(stamped).read_bytes()
    for bad in (token[: len(token) // 2], b"\x30\x03\x02\x01\x00", b"not DER at all"):
        token_path(stamped).write_bytes(bad)
        done = _verify(stamped, rsa_keys, "--tsa-cert", str(tsas[0].ca))
        assert done.returncode == 1 and "timestamp" in done.stdout, done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def test_a_token_moved_from_another_package_fails(
    chain: Path, stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    done, other = _export(
        chain, rsa_keys, "--tsa-url", tsas[0].url, out="q1", end=date(2026, 3, 31)
    )
    assert done.returncode == 0, done.stderr
    shutil.copy(token_path(other), token_path(stamped))
    _fails_both(stamped, rsa_keys, tsas[0].ca, "another digest")


def test_a_removed_token_fails(stamped: PackagePaths, rsa_keys: Path, tsas: tuple[Tsa, Tsa]):
    token_path(stamped).unlink()
    done = _verify(stamped, rsa_keys)
    assert done.returncode == 1 and "timestamp token" in done.stdout and "missing" in done.stdout


def test_a_tsa_outage_exports_nothing_unless_no_timestamp(
    chain: Path, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    dead = "http://127.0.0.1:9/"  # discard port: nothing listens on loopback
    done, paths = _export(chain, rsa_keys, "--tsa-url", dead)
    assert done.returncode == 5, done.stderr
    assert "TSA" in done.stderr and "nothing was exported" in done.stderr
    assert "Traceback" not in done.stderr
    assert not paths.jsonl.exists() and not paths.manifest.exists()
    # the environment variable configures it as well: still no silent unstamped package
    env_done = run_cli(
        "export",
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--signing-key",
        str(rsa_keys / "audit-private.pem"),
        "--out",
        str(chain / "out"),
        cwd=chain,
        env={"FLAGTRAIL_TSA_URL": dead},
    )
    assert env_done.returncode == 5 and not paths.jsonl.exists(), env_done.stderr
    done, paths = _export(chain, rsa_keys, "--tsa-url", dead, "--no-timestamp")
    assert done.returncode == 0, done.stderr
    assert json.loads(paths.manifest.read_bytes())["timestamp"] is None
    assert "Timestamp: none" in _verify(paths, rsa_keys).stdout
    # an auditor who requires a trusted TSA refuses an unstamped package
    required = _verify(paths, rsa_keys, "--tsa-cert", str(tsas[0].ca))
    assert required.returncode == 1 and "no timestamp token" in required.stdout


def test_bad_tsa_settings_are_one_sentence(chain: Path, rsa_keys: Path, tmp_path: Path) -> None:
    done, _ = _export(chain, rsa_keys, "--tsa-url", "ftp://example.invalid/")
    assert done.returncode == 2 and "not an http(s) URL" in done.stderr
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("nothing")
    done = run_cli("verify", str(chain / "none.jsonl"), "--tsa-cert", str(not_pem))
    assert done.returncode == 2 and "no PEM certificate" in done.stderr
    assert "Traceback" not in done.stderr


# -- checkpoints, when configured ----------------------------------------------------------------
def test_checkpoints_are_stamped_when_configured(
    chain: Path, rsa_keys: Path, tsas: tuple[Tsa, Tsa], tmp_path: Path
) -> None:
    from relay.manifest import write_signed
    from relay.proofs.note import split_note
    from relay.signing import load_private_key
    from relay.tree import generate_note_key

    generate_note_key(chain, "log.example")
    env = {
        "FLAGTRAIL_NOTE_KEY_PATH": str(chain / "note-private.key"),
        "FLAGTRAIL_TSA_URL": tsas[0].url,
        "FLAGTRAIL_TSA_CHECKPOINTS": "1",
    }
    done = run_cli("relay", "--once", cwd=chain, env=env)
    assert done.returncode == 0, done.stderr
    done, paths = _export(chain, rsa_keys, "--tsa-url", tsas[0].url)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(paths.manifest.read_bytes())
    stamp = manifest["checkpoint_timestamp"]
    assert stamp and stamp["token"]
    # openssl agrees: the token stamps the checkpoint's note text
    text = tmp_path / "checkpoint.txt"
    text.write_bytes(split_note(manifest["merkle"]["checkpoint"].encode())[0])
    token = tmp_path / "checkpoint.tsr"
    token.write_bytes(base64.b64decode(stamp["token"]))
    openssl = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(text), "-in", str(token), "-token_in",
         "-CAfile", str(tsas[0].ca)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert openssl.returncode == 0, openssl.stderr
    ok = _verify(paths, rsa_keys, "--tsa-cert", str(tsas[0].ca))
    assert ok.returncode == 0 and "the checkpoint existed at" in ok.stdout, ok.stdout
    # an insider swaps in a token of the rogue TSA (and re-signs the manifest)
    digest = hashlib.sha256(text.read_bytes()).digest()
    rogue = request_token(tsas[1].url, digest, int(stamp["nonce"]))
    manifest["checkpoint_timestamp"]["token"] = base64.b64encode(rogue).decode()
    write_signed(
        paths.manifest, paths.manifest_signature, manifest,
        load_private_key(rsa_keys / "audit-private.pem"),
    )  # fmt: skip
    token_path(paths).write_bytes(  # and re-stamps the re-signed manifest with the real TSA
        request_token(
            tsas[0].url,
            hashlib.sha256(paths.manifest.read_bytes()).digest(),
            int(manifest["timestamp"]["nonce"]),
        )
    )
    bad = _verify(paths, rsa_keys, "--tsa-cert", str(tsas[0].ca))
    assert bad.returncode == 1 and "checkpoint's timestamp" in bad.stdout, bad.stdout
    # configured without a TSA: one sentence, exit 2
    missing = run_cli("relay", "--once", cwd=chain, env={**env, "FLAGTRAIL_TSA_URL": ""})
    assert missing.returncode == 2 and "FLAGTRAIL_TSA_CHECKPOINTS" in missing.stderr
