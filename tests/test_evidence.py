"""Evidence packages: the seed's verifier, openssl, windows and anchors, every tamper case."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from producers import Outbox, PolicyError
from relay.export import PackagePaths, export_window
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from relay.verify import verify_export
from tests.conftest import SteppingClock
from tests.contracts import good_change

SEED = Path(__file__).parent / "seed"
H1_START, H1_END = date(2026, 1, 1), date(2026, 6, 30)


def build_chain(engine: Engine, workdir: Path, clock: SteppingClock, count: int) -> None:
    """``count`` changes (every 7th blocked) relayed into workdir/log.db."""
    outbox = Outbox(engine, str(workdir / "identities.toml"), clock=clock)
    for n in range(count):
        change = good_change(
            n,
            approver="alice@example.com" if n % 7 == 3 else "bob@example.com",
            reason="Déploiement progressif 🚀",
            after={"rollout": n / 3},
        )
        try:
            with engine.begin() as conn:
                outbox.record(conn, change)
        except PolicyError:
            pass
    relay = Relay(
        open_outbox_source(engine, outbox.chain_id), open_log(f"sqlite:///{workdir / 'log.db'}")
    )
    relay.resume()
    relay.drain()


def export(
    workdir: Path, keys: Path, start: date = H1_START, end: date = H1_END, out: str = "out"
) -> PackagePaths:
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        paths, _ = export_window(audit_log, start, end, workdir / out, keys / "audit-private.pem")
    return paths


@pytest.fixture
def h1_package(
    sqlite_engine: Engine, workdir: Path, h1_clock: SteppingClock, rsa_keys: Path
) -> PackagePaths:
    build_chain(sqlite_engine, workdir, h1_clock, 60)
    return export(workdir, rsa_keys)


def test_seed_verifier_runs_unchanged_on_an_export(h1_package: PackagePaths) -> None:
    assert h1_package.jsonl.name == "flag-audit-soc2_2026-01-01_2026-06-30.jsonl"
    result = subprocess.run(
        [sys.executable, str(SEED / "verify_chain.py")],
        cwd=h1_package.jsonl.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Chain intact: 60 records, no tampering detected."


def test_seed_summary_matches_ours(h1_package: PackagePaths) -> None:
    seed = subprocess.run(
        [sys.executable, str(SEED / "control_summary.py"), str(h1_package.jsonl)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert h1_package.summary.read_text() == seed.stdout
    assert " CC7.2: 9 events" in seed.stdout  # the 9 blocked self-approvals


@pytest.mark.parametrize("keys_fixture", ["rsa_keys", "ec_keys"])
def test_openssl_accepts_the_signature(
    sqlite_engine: Engine,
    workdir: Path,
    h1_clock: SteppingClock,
    keys_fixture: str,
    request: pytest.FixtureRequest,
) -> None:
    keys: Path = request.getfixturevalue(keys_fixture)
    build_chain(sqlite_engine, workdir, h1_clock, 10)
    paths = export(workdir, keys)
    command = [
        "openssl",
        "dgst",
        "-sha256",
        "-verify",
        str(keys / "audit-public.pem"),
        "-signature",
        str(paths.signature),
        str(paths.jsonl),
    ]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    paths.jsonl.write_bytes(paths.jsonl.read_bytes().replace(b"CHG-1", b"CHG-9", 1))
    assert subprocess.run(command, capture_output=True).returncode != 0


def test_manifest_describes_the_package(h1_package: PackagePaths, rsa_keys: Path) -> None:
    manifest = json.loads(h1_package.manifest.read_text())
    assert manifest["record_count"] == 60
    assert manifest["anchor"] == {"hash": "0" * 64, "sequence": 0}
    assert manifest["head"]["sequence"] == 60
    assert manifest["public_key_fingerprint"].startswith("SHA256:")
    assert any(c.startswith("openssl dgst -sha256 -verify") for c in manifest["verify_commands"])
    report = verify_export(h1_package.jsonl, rsa_keys / "audit-public.pem")
    assert report.ok and report.records == 60 and report.signature.startswith("valid")


def test_consecutive_windows_link_and_a_later_window_verifies_from_its_anchor(
    sqlite_engine: Engine, workdir: Path, h1_clock: SteppingClock, rsa_keys: Path
) -> None:
    build_chain(sqlite_engine, workdir, h1_clock, 400)  # 7-minute steps: ~2 days
    first = export(workdir, rsa_keys, date(2026, 1, 1), date(2026, 1, 1), "a")
    second = export(workdir, rsa_keys, date(2026, 1, 2), date(2026, 1, 31), "b")
    m1, m2 = (json.loads(p.manifest.read_text()) for p in (first, second))
    assert m1["record_count"] > 0 and m2["record_count"] > 0
    assert m1["record_count"] + m2["record_count"] == 400  # blocked attempts are events too
    assert m2["anchor"]["hash"] == m1["head"]["hash"]
    assert m2["anchor"]["sequence"] == m1["head"]["sequence"]
    assert verify_export(second.jsonl, rsa_keys / "audit-public.pem").ok  # anchor: manifest
    second.manifest.unlink()
    bare = verify_export(second.jsonl, chain_only=True)  # GENESIS is assumed: the link fails
    assert not bare.ok and bare.finding.record == 1
    assert verify_export(second.jsonl, anchor=m1["head"]["hash"], chain_only=True).ok


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit_field(lines: list[bytes]) -> list[bytes]:
    lines[9] = lines[9].replace(b'"CHG-', b'"CHX-', 1)
    return lines


def _rehash_one(lines: list[bytes]) -> list[bytes]:
    from relay.canonical import seal

    record = json.loads(lines[9])
    record["after"] = {"rollout": 100}
    prev = record.pop("prev_hash")
    record.pop("hash")
    _, line = seal(record, prev)
    lines[9] = line.encode() + b"\n"
    return lines


def _rehash_all(lines: list[bytes]) -> list[bytes]:
    from relay.canonical import seal

    out, prev = [], "0" * 64
    for n, raw in enumerate(lines):
        record = json.loads(raw)
        record.pop("prev_hash")
        record.pop("hash")
        if n == 9:
            record["approver"] = "mallory@evil.test"
        prev, line = seal(record, prev)
        out.append(line.encode() + b"\n")
    return out


TAMPERS = {
    "edited field": (_edit_field, 10),
    "deleted line": (lambda ls: ls[:9] + ls[10:], 10),
    "swapped lines": (lambda ls: [*ls[:9], ls[10], ls[9], *ls[11:]], 10),
    "duplicated line": (lambda ls: [*ls[:10], ls[9], *ls[10:]], 11),
    "inserted line": (lambda ls: [*ls[:9], ls[3], *ls[9:]], 10),
    "truncated file": (lambda ls: [*ls[:-1], ls[-1][: len(ls[-1]) // 2]], 60),
    "last lines cut": (lambda ls: ls[:50], 51),
    "own hash recomputed": (_rehash_one, 11),
}


@pytest.mark.parametrize("case", TAMPERS)
def test_tampering_is_caught_and_names_the_first_bad_record(
    h1_package: PackagePaths, case: str
) -> None:
    tamper, first_bad = TAMPERS[case]
    h1_package.jsonl.write_bytes(b"".join(tamper(_lines(h1_package.jsonl))))
    report = verify_export(h1_package.jsonl, workers=1)
    assert not report.ok
    assert report.finding.record == first_bad, str(report.finding)


def test_whole_chain_recomputed_is_caught_by_the_signature_only(
    h1_package: PackagePaths, rsa_keys: Path
) -> None:
    h1_package.jsonl.write_bytes(b"".join(_rehash_all(_lines(h1_package.jsonl))))
    public = rsa_keys / "audit-public.pem"
    chain_only = verify_export(h1_package.jsonl, chain_only=True)
    assert chain_only.ok  # the chain alone cannot tell
    report = verify_export(h1_package.jsonl, public)
    assert not report.ok and report.exit_code == 1 and report.signature == "INVALID"


def test_parallel_and_serial_verification_agree(
    sqlite_engine: Engine,
    workdir: Path,
    h1_clock: SteppingClock,
    rsa_keys: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import relay.verify

    build_chain(sqlite_engine, workdir, h1_clock, 300)
    paths = export(workdir, rsa_keys)
    monkeypatch.setattr(relay.verify, "PARALLEL_THRESHOLD_BYTES", 1)
    assert (
        verify_export(paths.jsonl, workers=2).records
        == verify_export(paths.jsonl, workers=1).records
    )
    lines = _lines(paths.jsonl)
    lines[200] = lines[200].replace(b'"CHG-', b'"CHZ-', 1)
    paths.jsonl.write_bytes(b"".join(lines))
    assert verify_export(paths.jsonl, workers=2).finding.record == 201


def test_rotation_is_accepted_only_at_a_sentinel_rotation_record(
    h1_package: PackagePaths, tmp_path: Path
) -> None:
    from relay.canonical import GENESIS, seal

    lines = _lines(h1_package.jsonl)
    last = json.loads(lines[-1])
    rotation = {
        "action": "sentinel_rotation",
        "sequence": last["sequence"] + 1,
        "timestamp_utc": last["timestamp_utc"],
        "soc2_controls": ["CC7.2", "CC8.1"],
        "meta": {
            "previous_sequence": last["sequence"],
            "previous_hash": last["hash"],
            "reason": "operator started a new epoch",
        },
    }
    digest, rot_line = seal(rotation, GENESIS)
    follower = {
        "action": "update",
        "sequence": last["sequence"] + 2,
        "timestamp_utc": last["timestamp_utc"],
    }
    _, follow_line = seal(follower, digest)
    target = tmp_path / "rotated.jsonl"
    target.write_bytes(b"".join(lines) + rot_line.encode() + b"\n" + follow_line.encode() + b"\n")
    report = verify_export(target, chain_only=True)
    assert report.ok and report.rotations == [61]
    _, fake = seal(follower, GENESIS)  # a GENESIS restart that is not a rotation record
    target.write_bytes(b"".join(lines) + fake.encode() + b"\n")
    assert verify_export(target, chain_only=True).finding.record == 61


def test_empty_window_and_bad_inputs(
    workdir: Path, rsa_keys: Path, sqlite_engine: Engine, h1_clock: SteppingClock
) -> None:
    from producers.errors import ConfigError

    build_chain(sqlite_engine, workdir, h1_clock, 3)
    paths = export(workdir, rsa_keys, date(2025, 1, 1), date(2025, 1, 2))
    assert json.loads(paths.manifest.read_text())["record_count"] == 0
    with pytest.raises(ConfigError, match="before --start"):
        export(workdir, rsa_keys, date(2026, 2, 1), date(2026, 1, 1))
    with pytest.raises(ConfigError, match="keygen"):
        export(workdir, workdir / "nowhere")
    assert not (workdir / "nowhere").exists()
    with pytest.raises(ConfigError, match="cannot read export"):
        verify_export(workdir / "missing.jsonl")


def test_openssl_is_installed() -> None:
    assert shutil.which("openssl"), "the tests use the real openssl binary"
