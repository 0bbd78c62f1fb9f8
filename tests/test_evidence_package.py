"""Issue 7, evidence side: trusted keys, the signed manifest, linked exports, rotations,
signed statements, and private keys that stay 0600."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from producers.errors import EvidenceError
from producers.events import canonical_json, format_timestamp
from relay.canonical import GENESIS, seal
from relay.export import PackagePaths, export_window
from relay.logs import open_log
from relay.logs.base import LogEntry
from relay.manifest import manifest_bytes, write_signed
from relay.signing import (
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_digest,
)
from relay.verify import render, verify_export
from tests.conftest import SteppingClock, run_cli
from tests.test_evidence import build_chain, export

SEED = Path(__file__).parent / "seed"
DAY1, DAY2, DAY3 = date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)


def verify_code(path: Path, **kwargs: Any) -> int:
    """What `flagtrail verify` exits with (main() maps a raised error to its exit code)."""
    try:
        return verify_export(path, **kwargs).exit_code
    except EvidenceError as exc:
        return exc.exit_code


@pytest.fixture(scope="module")
def mallory_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mallory")
    generate_keypair(folder, "ec")
    return folder


@pytest.fixture
def package(
    sqlite_engine: Engine, workdir: Path, h1_clock: SteppingClock, rsa_keys: Path
) -> PackagePaths:
    build_chain(sqlite_engine, workdir, h1_clock, 30)
    return export(workdir, rsa_keys)


# -- 14. keys -----------------------------------------------------------------------------------
def test_overwritten_private_key_is_0600_even_if_the_old_file_was_wider(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path, "ec")
    os.chmod(private, 0o644)
    old = private.read_bytes()
    private, _ = generate_keypair(tmp_path, "ec", overwrite=True)
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_bytes() != old
    assert not list(tmp_path.glob("*.new"))


# -- 1. trusted keys only -----------------------------------------------------------------------
def test_a_key_found_only_in_the_package_is_not_trusted(package: PackagePaths) -> None:
    result = run_cli("verify", str(package.jsonl))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Chain intact: 30 records" in result.stdout
    key = load_public_key(package.public_key)
    assert f"signed by an untrusted key {fingerprint(key)} — compare with the registered key" in (
        result.stdout
    )


def test_each_trust_source_makes_it_verified(
    package: PackagePaths, rsa_keys: Path, mallory_keys: Path, tmp_path: Path
) -> None:
    public = rsa_keys / "audit-public.pem"
    mark = fingerprint(load_public_key(public))
    assert run_cli("verify", str(package.jsonl), "--pubkey", str(public)).returncode == 0
    assert run_cli("verify", str(package.jsonl), "--key-fingerprint", mark).returncode == 0
    other = fingerprint(load_public_key(mallory_keys / "audit-public.pem"))
    assert run_cli("verify", str(package.jsonl), "--key-fingerprint", other).returncode == 4
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes((mallory_keys / "audit-public.pem").read_bytes() + public.read_bytes())
    env = {"FLAGTRAIL_TRUSTED_KEYS": str(bundle)}
    assert run_cli("verify", str(package.jsonl), env=env).returncode == 0
    prints = tmp_path / "trusted.txt"
    prints.write_text(f"# registered 2026\n{mark.upper().replace('SHA256:', '')} audit key\n")
    ok = run_cli("verify", str(package.jsonl), env={"FLAGTRAIL_TRUSTED_KEYS": str(prints)})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"signed by a trusted key {mark}" in ok.stdout
    bad = run_cli("verify", str(package.jsonl), "--key-fingerprint", "SHA256:nothex")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "other file's"])
def test_a_signature_that_cannot_be_checked_fails_unless_chain_only(
    package: PackagePaths, rsa_keys: Path, damage: str
) -> None:
    public = str(rsa_keys / "audit-public.pem")
    if damage == "missing":
        package.signature.unlink()
    elif damage == "empty":
        package.signature.write_bytes(b"")
    elif damage == "garbage":
        package.signature.write_bytes(os.urandom(384))
    else:
        package.signature.write_bytes(package.manifest_signature.read_bytes())
    result = run_cli("verify", str(package.jsonl), "--pubkey", public)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    chain_only = run_cli("verify", str(package.jsonl), "--chain-only")
    assert chain_only.returncode == 0
    assert "nothing about the signer, the manifest or the window was checked" in chain_only.stdout
    assert "trusted key" not in chain_only.stdout


def test_manifest_is_canonical_and_openssl_verifiable(
    package: PackagePaths, rsa_keys: Path
) -> None:
    data = package.manifest.read_bytes()
    assert data == canonical_json(json.loads(data)).encode()
    command = [
        "openssl",
        "dgst",
        "-sha256",
        "-verify",
        str(rsa_keys / "audit-public.pem"),
        "-signature",
        str(package.manifest_signature),
        str(package.manifest),
    ]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    manifest = json.loads(data)
    assert any("REGISTERED" in c and "--pubkey" in c for c in manifest["verify_commands"])
    assert any("--key-fingerprint SHA256:" in c for c in manifest["verify_commands"])


# -- 2. the manifest binds the package ----------------------------------------------------------
def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    if isinstance(value, list):
        return [*value[:-1]] if value else ["x"]
    if isinstance(value, dict):
        key = next(iter(value))
        return {**value, key: _changed(value[key])}
    return {"sequence": 1, "hash": "1" * 64}


MANIFEST_FIELDS = [
    "anchor",
    "chain_head_at_export",
    "chain_id",
    "checkpoint_timestamp",
    "control_counts",
    "controls_reported",
    "documented_gaps",
    "evidence_file",
    "first_timestamp_utc",
    "gap_statements",
    "gap_thresholds",
    "generated_at",
    "generator",
    "head",
    "last_timestamp_utc",
    "link",
    "manifest_signature_file",
    "manifest_version",
    "merkle",
    "previous_export",
    "public_key",
    "public_key_fingerprint",
    "record_count",
    "rotations",
    "sha256",
    "signature_file",
    "statements_after_window",
    "summary_file",
    "summary_sha256",
    "timestamp",
    "undocumented_gaps",
    "verify_commands",
    "window",
]
# an insider holding the signing key can restate these (README: Threat model); every
# other field is recomputed from the package
RESTATABLE = {
    "generated_at",
    "generator",
    "chain_head_at_export",
    "public_key",
    "previous_export",
    "gap_thresholds",  # the exporter's choice; verify reports one that is not the default
}


def test_the_field_list_is_the_manifest(package: PackagePaths) -> None:
    assert sorted(json.loads(package.manifest.read_bytes())) == MANIFEST_FIELDS


@pytest.mark.parametrize("name", MANIFEST_FIELDS)
def test_a_manifest_with_one_field_edited_fails(
    sqlite_engine: Engine,
    workdir: Path,
    h1_clock: SteppingClock,
    rsa_keys: Path,
    mallory_keys: Path,
    name: str,
) -> None:
    build_chain(sqlite_engine, workdir, h1_clock, 20)
    paths = export(workdir, rsa_keys)
    public = rsa_keys / "audit-public.pem"
    assert verify_code(paths.jsonl, pubkey=public) == 0
    manifest = json.loads(paths.manifest.read_bytes())
    manifest[name] = _changed(manifest[name])
    paths.manifest.write_bytes(manifest_bytes(manifest))  # not re-signed
    assert verify_code(paths.jsonl, pubkey=public) == 1
    write_signed(  # re-signed by someone else: never trusted
        paths.manifest,
        paths.manifest_signature,
        manifest,
        load_private_key(mallory_keys / "audit-private.pem"),
    )
    assert verify_code(paths.jsonl, pubkey=public) in (1, 4)
    if name not in RESTATABLE:  # re-signed with the registered key: recomputed, caught
        write_signed(
            paths.manifest,
            paths.manifest_signature,
            manifest,
            load_private_key(rsa_keys / "audit-private.pem"),
        )
        assert verify_code(paths.jsonl, pubkey=public) == 1


def test_a_package_resigned_by_an_untrusted_key_exits_4(
    package: PackagePaths, rsa_keys: Path, mallory_keys: Path
) -> None:
    mallory = load_private_key(mallory_keys / "audit-private.pem")
    manifest = json.loads(package.manifest.read_bytes())
    lines = package.jsonl.read_bytes()
    package.signature.write_bytes(sign_digest(hashlib.sha256(lines).digest(), mallory))
    manifest["public_key_fingerprint"] = fingerprint(mallory.public_key())
    manifest["verify_commands"][-1] = manifest["verify_commands"][-1].rsplit(" ", 1)[0] + (
        " " + fingerprint(mallory.public_key())
    )
    write_signed(package.manifest, package.manifest_signature, manifest, mallory)
    shutil.copy(mallory_keys / "audit-public.pem", package.public_key)
    result = run_cli("verify", str(package.jsonl), "--pubkey", str(rsa_keys / "audit-public.pem"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "untrusted key" in result.stdout


def test_a_quiet_week_renamed_as_another_week_fails(
    sqlite_engine: Engine, workdir: Path, h1_clock: SteppingClock, rsa_keys: Path
) -> None:
    build_chain(sqlite_engine, workdir, h1_clock, 5)  # all on 2026-01-01
    quiet = export(workdir, rsa_keys, date(2026, 2, 2), date(2026, 2, 8), "q")
    manifest = json.loads(quiet.manifest.read_bytes())
    assert manifest["record_count"] == 0
    assert manifest["head"]["sequence"] == 5 and manifest["anchor"]["sequence"] == 5
    assert manifest["chain_head_at_export"]["sequence"] == 5
    public = rsa_keys / "audit-public.pem"
    assert verify_code(quiet.jsonl, pubkey=public) == 0
    other = PackagePaths.for_window(workdir / "q", date(2026, 2, 9), date(2026, 2, 15))
    for source, target in zip(
        (quiet.jsonl, quiet.signature, quiet.manifest, quiet.manifest_signature, quiet.summary),
        (other.jsonl, other.signature, other.manifest, other.manifest_signature, other.summary),
        strict=True,
    ):
        source.rename(target)
    report = verify_export(other.jsonl, public)
    assert report.exit_code == 1 and "renamed" in report.finding.reason


def test_a_record_outside_the_window_fails(
    sqlite_engine: Engine, workdir: Path, h1_clock: SteppingClock, rsa_keys: Path
) -> None:
    """A longer window's records handed over as a shorter window's: every timestamp counts."""
    build_chain(sqlite_engine, workdir, h1_clock, 400)  # two days
    one_day = export(workdir, rsa_keys, date(2026, 1, 1), date(2026, 1, 1), "one")
    two_days = export(workdir, rsa_keys, date(2026, 1, 1), date(2026, 1, 2), "two")
    shutil.copy(two_days.jsonl, one_day.jsonl)
    report = verify_export(one_day.jsonl, rsa_keys / "audit-public.pem")
    first_outside = json.loads(one_day.manifest.read_bytes())["record_count"] + 1
    assert report.exit_code == 1 and "outside the window" in report.finding.reason
    assert report.finding.record == first_outside


# -- 3. linked exports --------------------------------------------------------------------------
def _three_days(sqlite_engine: Engine, workdir: Path) -> None:
    clock = SteppingClock(datetime(2026, 3, 2, 6, 0, tzinfo=UTC), timedelta(hours=2))
    build_chain(sqlite_engine, workdir, clock, 30)  # 2026-03-02 08:00 → 2026-03-04 14:00


def _export(workdir: Path, keys: Path, day: date, out: str, previous: Path | None = None):
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        return export_window(
            audit_log, day, day, workdir / out, keys / "audit-private.pem", previous=previous
        )


def test_consecutive_exports_link_and_verify_with_previous(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    _three_days(sqlite_engine, workdir)
    first, m1 = _export(workdir, rsa_keys, DAY1, "a")
    second, m2 = _export(workdir, rsa_keys, DAY2, "b", previous=first.manifest)
    assert m2["previous_export"] == {
        "sequence": m1["head"]["sequence"],
        "hash": m1["head"]["hash"],
        "manifest_sha256": hashlib.sha256(first.manifest.read_bytes()).hexdigest(),
        "evidence_file": first.jsonl.name,
    }
    assert m2["link"] is None
    public = rsa_keys / "audit-public.pem"
    report = verify_export(second.jsonl, public, previous=first.manifest)
    assert report.ok, render(report)
    assert f"continues {first.manifest.name}" in render(report)
    result = run_cli(
        "verify", str(second.jsonl), "--pubkey", str(public), "--previous", str(first.manifest)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_export_after_a_skipped_window_carries_the_linking_records(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    _three_days(sqlite_engine, workdir)
    first, m1 = _export(workdir, rsa_keys, DAY1, "a")
    third, m3 = _export(workdir, rsa_keys, DAY3, "c", previous=first.manifest)
    link = m3["link"]
    assert link["from_sequence"] == m1["head"]["sequence"]
    assert link["to_sequence"] == m3["anchor"]["sequence"] and link["record_count"] == 12
    public = rsa_keys / "audit-public.pem"
    assert verify_export(third.jsonl, public, previous=first.manifest).ok
    lines = third.link.read_bytes().splitlines(keepends=True)
    third.link.write_bytes(b"".join(lines[:5] + lines[6:]))
    assert verify_code(third.jsonl, pubkey=public, previous=first.manifest) == 1


def test_a_log_rewritten_between_two_exports_fails(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    import sqlite3

    _three_days(sqlite_engine, workdir)
    first, _ = _export(workdir, rsa_keys, DAY1, "a")
    db = sqlite3.connect(workdir / "log.db")  # an attacker with file access and the key
    db.execute("DROP TRIGGER audit_log_refuses_update")
    rows = db.execute("SELECT sequence, line FROM audit_log ORDER BY sequence").fetchall()
    prev = GENESIS
    for sequence, line in rows:
        record = json.loads(line)
        record.pop("prev_hash"), record.pop("hash")
        if sequence == 3:
            record["approver"] = "mallory@evil.test"
        prev, new_line = seal(record, prev)
        db.execute(
            "UPDATE audit_log SET line = ?, hash = ? WHERE sequence = ?",
            (new_line, prev, sequence),
        )
    db.commit()
    db.close()
    second, _ = _export(workdir, rsa_keys, DAY2, "b", previous=first.manifest)
    public = rsa_keys / "audit-public.pem"
    assert verify_export(second.jsonl, public).ok  # alone, the rewritten export looks fine
    report = verify_export(second.jsonl, public, previous=first.manifest)
    assert report.exit_code == 1 and "rewritten" in report.finding.reason


# -- 4 and 10. rotations and signed statements ---------------------------------------------------
class ChainWriter:
    """Appends hand-made records to a real SQLite log, as a relay (or a forger) would."""

    def __init__(self, workdir: Path) -> None:
        self.log = open_log(f"sqlite:///{workdir / 'log.db'}")
        self.prev, self.sequence, self.entries = GENESIS, 0, 0
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def add(self, action: str = "update", meta: dict | None = None, **changes: Any) -> dict:
        prev = changes.pop("prev_hash", None) or self.prev
        self.sequence += 1
        self.now += timedelta(minutes=5)
        stamp = format_timestamp(self.now)
        record = {
            "schema_version": 1,
            "chain_id": "flag-audit",
            "event_id": str(uuid.uuid4()),
            "recorded_at": stamp,
            "relayed_at": stamp,
            "timestamp_utc": stamp,
            "sequence": self.sequence,
            "actor": "alice@example.com",
            "approver": None,
            "role": "release-manager",
            "flag_key": f"flag-{self.sequence}",
            "environment": "staging",
            "action": action,
            "before": None,
            "after": None,
            "reason": "test",
            "change_ref": "",
            "soc2_controls": ["CC6.1", "CC6.6"],
            "meta": meta,
            **changes,
        }
        self.sequence = record["sequence"]
        digest, line = seal(record, prev)
        # the log's row number: the record's, unless a forged record reuses one
        row = max(record["sequence"], self.entries + 1)
        self.log.append([LogEntry(row, record["timestamp_utc"], digest, line, None)], self.entries)
        self.entries = row
        self.prev = digest
        return {**record, "hash": digest, "prev_hash": prev}

    def rotation_meta(self, **extra: Any) -> dict:
        return {
            "previous_sequence": self.sequence,
            "previous_hash": self.prev,
            "reason": "annual key ceremony",
            "rotated_by": "alice@example.com",
            "automatic": False,
            "chain_id": "flag-audit",
            **extra,
        }


def signed(meta: dict, fields: list[str], keys: Path) -> dict:
    key = load_private_key(keys / "audit-private.pem")
    statement = {f: meta[f] for f in fields}
    digest = hashlib.sha256(canonical_json(statement).encode()).digest()
    return {
        **meta,
        "signed_fields": fields,
        "signing_key_fingerprint": fingerprint(key.public_key()),
        "statement_signature": base64.b64encode(sign_digest(digest, key)).decode(),
    }


def _verify_day(workdir: Path, keys: Path):
    paths, manifest = _export(workdir, keys, DAY1, "ev")
    return paths, manifest, verify_export(paths.jsonl, keys / "audit-public.pem")


ROTATION_FIELDS = [
    "chain_id",
    "previous_sequence",
    "previous_hash",
    "reason",
    "rotated_by",
    "automatic",
]


def test_a_linked_rotation_passes_the_seed_snippet_and_is_reported(
    workdir: Path, rsa_keys: Path
) -> None:
    chain = ChainWriter(workdir)
    for _ in range(3):
        chain.add()
    chain.add("sentinel_rotation", signed(chain.rotation_meta(), ROTATION_FIELDS, rsa_keys))
    chain.add()
    legacy_meta = chain.rotation_meta()
    chain.add("sentinel_rotation", legacy_meta, prev_hash=GENESIS)  # before the contract
    chain.add()
    paths, manifest, report = _verify_day(workdir, rsa_keys)
    assert report.ok, render(report)
    assert [r["record"] for r in manifest["rotations"]] == [4, 6]
    text = render(report)
    assert "record 4 (sequence 4): operator alice@example.com, signed by a trusted key" in text
    assert "Rotation at record 6 is not signed by a trusted key" in text
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [6]
    shutil.copy(paths.jsonl, workdir / "flag-audit-soc2_2026-01-01_2026-06-30.jsonl")
    seed = subprocess.run(
        [sys.executable, str(SEED / "verify_chain.py")], cwd=workdir, capture_output=True
    )
    assert b"Chain break at record 6" in seed.stderr  # the legacy rotation; the new one links


@pytest.mark.parametrize(
    "forge",
    ["names another record", "names a later hash", "reuses a sequence", "restarts from GENESIS"],
)
def test_a_rotation_forged_mid_file_fails(
    workdir: Path, rsa_keys: Path, forge: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = ChainWriter(workdir)
    for _ in range(4):
        chain.add()
    meta = chain.rotation_meta()
    extra: dict[str, Any] = {}
    if forge == "names another record":
        meta["previous_sequence"] = 2
    elif forge == "names a later hash":
        meta["previous_hash"] = "f" * 64
    elif forge == "reuses a sequence":
        extra["sequence"] = chain.sequence
    else:
        meta["previous_hash"] = GENESIS
        extra["prev_hash"] = GENESIS
    chain.add("sentinel_rotation", signed(meta, ROTATION_FIELDS, rsa_keys), **extra)
    with pytest.raises(EvidenceError, match="record 5"):
        _verify_day(workdir, rsa_keys)  # our export refuses to sign it
    import relay.export

    # an insider's own exporter signs it anyway: verify, holding the same key, still fails
    monkeypatch.setattr(relay.export, "rotation_problem", lambda *_, **__: None)
    _, _, report = _verify_day(workdir, rsa_keys)
    assert report.exit_code == 1 and report.finding.record == 5, render(report)


def test_automatic_rotation_is_an_undocumented_gap_until_a_signed_statement_covers_it(
    workdir: Path, rsa_keys: Path, mallory_keys: Path
) -> None:
    chain = ChainWriter(workdir)
    chain.add()
    rotation = chain.add(
        "sentinel_rotation",
        chain.rotation_meta(automatic=True, rotated_by="flagtrail-relay (automatic)"),
    )
    chain.add()
    statement = {
        "from": format_timestamp(chain.now - timedelta(hours=1)),
        "to": format_timestamp(chain.now),
        "reason": "relay found the log truncated",
        "author": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
        "chain_id": "flag-audit",
    }
    chain.add("gap_documented", signed(statement, list(statement), mallory_keys))
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert report.ok, render(report)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]
    assert "no valid signature by a trusted key: it documents nothing" in render(report)
    chain.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # documented days later
    chain.add("gap_documented", signed(statement, list(statement), rsa_keys))
    paths, manifest, report = _verify_day(workdir, rsa_keys)
    assert report.ok, render(report)
    assert manifest["undocumented_gaps"] == []
    assert [g["sequence"] for g in manifest["documented_gaps"]] == [rotation["sequence"]]
    assert len(manifest["statements_after_window"]) == 1
    forged = json.loads(paths.manifest.read_bytes())  # an insider edits the late statement
    forged["statements_after_window"][0] = forged["statements_after_window"][0].replace(
        "truncated", "rebooted"
    )
    write_signed(
        paths.manifest,
        paths.manifest_signature,
        forged,
        load_private_key(rsa_keys / "audit-private.pem"),
    )
    assert verify_code(paths.jsonl, pubkey=rsa_keys / "audit-public.pem") == 1


def test_summary_command_reads_with_the_strict_decoder(workdir: Path) -> None:
    (workdir / "x.jsonl").write_text('{"soc2_controls": ["CC6.1"], "n": 1' + "0" * 30 + "}\n")
    ok = run_cli("summary", "x.jsonl", cwd=workdir)
    assert ok.returncode == 0 and " CC6.1: 1 events" in ok.stdout
    (workdir / "y.jsonl").write_text('{"soc2_controls": "CC6.1"}\n')
    bad = run_cli("summary", "y.jsonl", cwd=workdir)
    assert bad.returncode == 1 and "record 1" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("parallel", [False, True])
def test_verify_recomputes_the_exports_gaps_also_in_parallel(
    workdir: Path, rsa_keys: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    """Late runs, on-time runs, clamped times and rotations, cut into chunks anywhere:
    verify's shortened gap analysis must agree with the export's full one."""
    import relay.verify

    chain = ChainWriter(workdir)
    for n in range(120):
        stamp = format_timestamp(chain.now + timedelta(minutes=5))
        late = format_timestamp(chain.now + timedelta(minutes=5 + (n % 7) * 3))
        if n % 40 == 17:
            chain.add("sentinel_rotation", chain.rotation_meta(automatic=True))
        elif n % 11 < 4:
            chain.add(relayed_at=late)  # late by 0 to 18 minutes
        elif n % 13 == 5:
            chain.add(recorded_at=format_timestamp(chain.now + timedelta(hours=1)))  # clamped
        else:
            chain.add(relayed_at=stamp)
    if parallel:
        monkeypatch.setattr(relay.verify, "PARALLEL_THRESHOLD_BYTES", 1)
    paths, manifest = _export(workdir, rsa_keys, DAY1, "ev")
    assert len(manifest["undocumented_gaps"]) > 5
    assert {g["kind"] for g in manifest["undocumented_gaps"]} >= {"relay_outage", "rotation"}
    report = verify_export(paths.jsonl, rsa_keys / "audit-public.pem", workers=2)
    assert report.ok, render(report)
    assert sum("Undocumented gap" in f for f in report.findings) == len(
        manifest["undocumented_gaps"]
    )


def test_export_and_verify_previous_from_the_command_line(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    _three_days(sqlite_engine, workdir)
    key, public = str(rsa_keys / "audit-private.pem"), str(rsa_keys / "audit-public.pem")
    day = ["--signing-key", key, "--start"]
    first = run_cli("export", *day, "2026-03-02", "--end", "2026-03-02", "--out", "a", cwd=workdir)
    assert first.returncode == 0, first.stderr
    old = next((workdir / "a").glob("*.manifest.json"))
    third = run_cli(
        "export",
        *day,
        "2026-03-04",
        "--end",
        "2026-03-04",
        "--out",
        "c",
        "--previous",
        str(old),
        cwd=workdir,
    )
    assert third.returncode == 0, third.stderr
    assert "Linking records" in third.stdout
    new = next((workdir / "c").glob("*.jsonl"))
    if new.name.endswith(".link.jsonl"):
        new = next(p for p in (workdir / "c").glob("*.jsonl") if ".link." not in p.name)
    checked = run_cli("verify", str(new), "--pubkey", public, "--previous", str(old))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Previous export: continues" in checked.stdout
    missing = run_cli("verify", str(new), env={"FLAGTRAIL_TRUSTED_KEYS": "nowhere.pem"})
    assert missing.returncode == 2 and "FLAGTRAIL_TRUSTED_KEYS" in missing.stderr


def test_a_rotation_may_skip_sequence_numbers_and_the_jump_is_a_gap(
    workdir: Path, rsa_keys: Path
) -> None:
    """A relay that lost the log's tail continues numbering after its checkpoint."""
    chain = ChainWriter(workdir)
    for _ in range(3):
        chain.add()
    meta = chain.rotation_meta(automatic=True, last_trusted_sequence=5, last_trusted_hash="a" * 64)
    chain.add("sentinel_rotation", meta, sequence=6)
    chain.add()
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert report.ok, render(report)
    kinds = {(g["kind"], g["sequence"]) for g in manifest["undocumented_gaps"]}
    assert {("rotation", 6), ("sequence_jump", 6)} <= kinds


def test_an_unreadable_statement_after_the_window_documents_nothing_and_export_goes_on(
    workdir: Path, rsa_keys: Path
) -> None:
    """A gap_documented line after the window that no strict reader accepts (here a NaN,
    written by someone with access to the log file) must neither crash the export nor
    document anything: export and verify read the statements after the window alike."""
    chain = ChainWriter(workdir)
    chain.add()
    chain.add()
    poison = '{"action":"gap_documented","chain_id":"flag-audit","meta":{"from":NaN}}'
    chain.log.append(
        [LogEntry(3, "2026-03-04T00:00:00.000000Z", "0" * 64, poison, None)], chain.entries
    )
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert report.ok, render(report)
    assert manifest["statements_after_window"] == []
