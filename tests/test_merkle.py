"""Issue 10, sections 1-3: the relay's Merkle tree, its signed checkpoints, and the
proofs every export carries, against the lies of whoever holds the log or a key."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from producers import Outbox
from producers.errors import ConfigError, EvidenceError
from relay.export import export_window
from relay.logs import open_log
from relay.manifest import PackagePaths, write_signed
from relay.outbox import open_outbox_source
from relay.package_proofs import ProofMismatch
from relay.proofs.checkpoint import Checkpoint, parse_checkpoint, signed_time
from relay.proofs.merkle import tree_hash
from relay.proofs.note import parse_signer_key, parse_vkey, sign_note, split_note
from relay.proofs.package import parse_proof_file
from relay.relay import Relay
from relay.signing import load_private_key
from relay.tree import (
    CheckpointPolicy,
    TreeMismatch,
    TreeReader,
    TreeWriter,
    check_against_log,
    generate_note_key,
    load_note_signer,
    open_store,
    rebuild_root,
)
from relay.verify import render, verify_export
from tests.conftest import SteppingClock, run_cli
from tests.contracts import good_change

DAY1, DAY2, DAY3 = date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Chain:
    """An outbox, a SQLite log with its tree, a note key, an audit key: one chain."""

    def __init__(
        self,
        engine: Engine,
        workdir: Path,
        rsa_keys: Path,
        chain: str = "flag-audit",
        log_url: str | None = None,
        tree_url: str | None = None,
    ):
        self.workdir, self.keys, self.chain = workdir, rsa_keys, chain
        self.log_url = log_url or f"sqlite:///{workdir / 'log.db'}"
        self.tree_url = tree_url or self.log_url
        if not (workdir / "note-private.key").exists():
            generate_note_key(workdir, "log.example")
        self.vkey = (workdir / "note-public.vkey").read_text().strip()
        self.outbox = Outbox(engine, str(workdir / "identities.toml"), chain_id=chain)
        self.engine = engine
        self.clock = SteppingClock(datetime(2026, 3, 2, 1, 0, tzinfo=UTC), timedelta(hours=2))
        self.tree_clock = FakeClock()
        self.count = 0

    def writer(self, policy: CheckpointPolicy | None = None) -> TreeWriter:
        return TreeWriter(
            open_store(self.tree_url, self.chain),
            load_note_signer(self.workdir / "note-private.key"),
            policy,
            clock=self.tree_clock,
        )

    def relay(self, tree: TreeWriter | None = None) -> Relay:
        return Relay(
            open_outbox_source(self.engine, self.chain),
            open_log(self.log_url, self.chain),
            tree=tree,
        )

    def record(self, n: int, tree: bool = True) -> Relay:
        self.outbox.clock = self.clock
        for _ in range(n):
            with self.engine.begin() as conn:
                self.outbox.record(conn, good_change(self.count))
            self.count += 1
        relay = self.relay(self.writer() if tree else None)
        relay.resume()
        relay.drain()
        return relay

    def export(
        self, start: date, end: date, out: str, previous: Path | None = None
    ) -> tuple[PackagePaths, dict[str, Any]]:
        with open_log(self.log_url, self.chain, read_only=True) as audit_log:
            store = open_store(self.tree_url, self.chain, read_only=True)
            try:
                return export_window(
                    audit_log,
                    start,
                    end,
                    self.workdir / out,
                    self.keys / "audit-private.pem",
                    previous=previous,
                    tree=store,
                )
            finally:
                store.close()

    def verify(self, paths: PackagePaths, keys: list[str] | None = None, **kwargs: Any):
        return verify_export(
            paths.jsonl,
            pubkey=self.keys / "audit-public.pem",
            note_keys=[parse_vkey(k) for k in (keys if keys is not None else [self.vkey])],
            **kwargs,
        )


@pytest.fixture
def chain(sqlite_engine: Engine, workdir: Path, rsa_keys: Path) -> Chain:
    return Chain(sqlite_engine, workdir, rsa_keys)


def fail_reason(report) -> str:
    assert report.exit_code == 1, render(report)
    return str(report.finding)


# -- 1. the tree ---------------------------------------------------------------------------
def test_the_stored_tree_is_the_tree_rebuilt_from_the_log(chain: Chain) -> None:
    chain.record(37)
    chain.record(12, tree=False)  # appended while no tree followed the log
    chain.record(9)  # the next relay start catches the tree up
    store = open_store(chain.log_url, chain.chain, read_only=True)
    with open_log(chain.log_url, chain.chain, read_only=True) as audit_log:
        size, root = rebuild_root(audit_log)
        assert store.complete_size() == 0  # 58 records: no complete tile of 256 yet
        assert tree_hash(TreeReader(store, audit_log).node, size) == root
        assert "matches the log's 58 records" in check_against_log(audit_log, store)
    checkpoint = parse_checkpoint(split_note(store.latest_checkpoint())[0])
    assert (checkpoint.origin, checkpoint.size, checkpoint.root_hash) == (
        "log.example/flag-audit",
        58,
        root,
    )


def tamper_line(chain: Chain, sequence: int) -> None:
    """Write access to the log file: the append-only triggers dropped, a line edited."""
    db = sqlite3.connect(chain.workdir / "log.db")
    db.execute("DROP TRIGGER audit_log_refuses_update")
    db.execute(
        "UPDATE audit_log SET line = replace(line, 'flag-', 'flaG-') WHERE sequence = ?",
        (sequence,),
    )
    db.commit()
    db.close()


def test_a_rewritten_log_no_longer_matches_its_stored_tree(chain: Chain) -> None:
    chain.record(20)
    tamper_line(chain, 20)
    store = open_store(chain.log_url, chain.chain, read_only=True)
    with (
        open_log(chain.log_url, chain.chain, read_only=True) as audit_log,
        pytest.raises(TreeMismatch),
    ):
        check_against_log(audit_log, store)
    # the relay does not hash the rewritten record in: the tree stops, an alarm is raised
    writer = chain.writer()
    with open_log(chain.log_url, chain.chain) as audit_log, pytest.raises(TreeMismatch):
        writer.catch_up(audit_log)
    assert writer.frozen and writer.maybe_checkpoint(force=True) is None


def test_an_export_of_records_rewritten_after_the_tree_took_them_fails(chain: Chain) -> None:
    chain.record(20)
    tamper_line(chain, 5)  # the chain hashes no longer hold either; the tree says so first
    with pytest.raises((ProofMismatch, EvidenceError)):
        chain.export(DAY1, DAY3, "out")


# -- 2. checkpoints and heartbeats -------------------------------------------------------------
def test_checkpoints_every_n_records_or_t_seconds_and_heartbeats_when_idle(chain: Chain) -> None:
    writer = chain.writer(CheckpointPolicy(every_records=10, every_seconds=60))
    relay = chain.relay(writer)
    relay.resume()
    store = writer.store

    def checkpoints() -> list[tuple[int, str]]:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT tree_size, signed_at FROM merkle_checkpoints ORDER BY signed_at"
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    relay.checkpoint_tree()  # the first round signs at once (the empty tree)
    assert [s for s, _ in checkpoints()] == [0]
    chain.outbox.clock = chain.clock
    for n in range(25):
        with chain.engine.begin() as conn:
            chain.outbox.record(conn, good_change(n))
        relay.relay_batch()  # one record per batch
    assert [s for s, _ in checkpoints()] == [0, 10, 20]  # every 10 records
    relay.checkpoint_tree()
    assert len(checkpoints()) == 3  # neither 10 records nor 60 s yet
    chain.tree_clock.now += 61
    relay.checkpoint_tree()  # 60 s: the 5 records since are signed
    chain.tree_clock.now += 61
    relay.checkpoint_tree()  # idle: a heartbeat, the same tree signed again later
    sizes = checkpoints()
    assert [s for s, _ in sizes] == [0, 10, 20, 25, 25]
    assert sizes[-1][1] > sizes[-2][1]
    last = parse_checkpoint(split_note(store.latest_checkpoint())[0])
    assert last.size == 25 and signed_time(last) == sizes[-1][1]
    # durable: a new relay process reads the same latest checkpoint
    again = open_store(chain.log_url, chain.chain, read_only=True)
    assert again.latest_checkpoint() == store.latest_checkpoint()


def test_checkpoint_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGTRAIL_CHECKPOINT_RECORDS", "0")
    with pytest.raises(ConfigError, match="FLAGTRAIL_CHECKPOINT_RECORDS"):
        CheckpointPolicy.from_environment()
    monkeypatch.setenv("FLAGTRAIL_CHECKPOINT_RECORDS", "5")
    monkeypatch.setenv("FLAGTRAIL_CHECKPOINT_SECONDS", "soon")
    with pytest.raises(ConfigError):
        CheckpointPolicy.from_environment()
    monkeypatch.setenv("FLAGTRAIL_CHECKPOINT_SECONDS", "2.5")
    assert CheckpointPolicy.from_environment() == CheckpointPolicy(5, 2.5)


# -- 3. proofs in every export ------------------------------------------------------------------
def test_an_export_carries_proofs_that_verify_checks(chain: Chain) -> None:
    chain.record(40)  # 2-hourly from DAY1 01:00: DAY2 holds sequences 12..23
    paths, manifest = chain.export(DAY2, DAY2, "out")
    proofs = parse_proof_file(paths.proof.read_bytes())
    assert (proofs.begin, proofs.end) == (11, 23)
    assert manifest["merkle"]["proof_file"] == paths.proof.name
    report = chain.verify(paths)
    assert report.exit_code == 0, render(report)
    assert "all 12 records are its leaves 11..22" in report.merkle
    assert "signed by a trusted note key" in report.merkle


def test_verify_without_a_note_key_says_the_checkpoint_is_unchecked(chain: Chain) -> None:
    chain.record(10)
    paths, _ = chain.export(DAY1, DAY1, "out")
    report = chain.verify(paths, keys=[])
    assert report.exit_code == 0 and "NOT checked" in report.merkle


def test_a_checkpoint_signed_by_another_key_of_the_same_name_fails(
    chain: Chain, tmp_path: Path
) -> None:
    chain.record(10)
    paths, _ = chain.export(DAY1, DAY1, "out")
    generate_note_key(tmp_path / "other", "log.example")
    other = (tmp_path / "other" / "note-public.vkey").read_text().strip()
    assert "no signature by a trusted key" in fail_reason(chain.verify(paths, keys=[other]))


def resign(chain: Chain, paths: PackagePaths, manifest: dict[str, Any], proof: bytes) -> None:
    """An insider with the audit signing key (not the note key) restates the package."""
    paths.proof.write_bytes(proof)
    import hashlib

    manifest["merkle"] = {**manifest["merkle"], "sha256": hashlib.sha256(proof).hexdigest()}
    manifest["merkle"]["checkpoint"] = parse_proof_file(proof).checkpoint.decode()
    write_signed(
        paths.manifest,
        paths.manifest_signature,
        manifest,
        load_private_key(chain.keys / "audit-private.pem"),
    )


def test_a_proof_file_swapped_with_another_exports_fails(chain: Chain) -> None:
    chain.record(40)
    day1, _ = chain.export(DAY1, DAY1, "one")
    day2, manifest2 = chain.export(DAY2, DAY2, "two")
    day2.proof.write_bytes(day1.proof.read_bytes())
    assert "not the proof file the signed manifest binds" in fail_reason(chain.verify(day2))
    # restated with the audit key: the window does not match the proofs
    resign(chain, day2, manifest2, day1.proof.read_bytes())
    assert "the proofs cover leaves [0, 11)" in fail_reason(chain.verify(day2))


def test_an_older_checkpoint_smaller_than_the_window_fails(chain: Chain) -> None:
    chain.record(12)
    old, _ = chain.export(DAY1, DAY1, "old")  # checkpoint of 12 records
    chain.record(20)
    new, manifest = chain.export(DAY2, DAY2, "new")
    forged = json.loads(new.proof.read_bytes())
    forged["checkpoint"] = parse_proof_file(old.proof.read_bytes()).checkpoint.decode()
    resign(chain, new, manifest, json.dumps(forged).encode())
    assert "fewer than the window's last sequence" in fail_reason(chain.verify(new))


def test_proofs_for_another_tree_size_fail(chain: Chain) -> None:
    chain.record(30)
    paths, manifest = chain.export(DAY2, DAY2, "out")
    forged = json.loads(paths.proof.read_bytes())
    forged["range_proof"] = forged["range_proof"][:-1]
    resign(chain, paths, manifest, json.dumps(forged).encode())
    assert "not in the signed tree" in fail_reason(chain.verify(paths))


def test_a_checkpoint_of_another_chain_fails(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    """The same note key signs every chain: the origin line tells them apart."""
    first = Chain(sqlite_engine, workdir, rsa_keys, "payments")
    second = Chain(sqlite_engine, workdir, rsa_keys, "search")
    first.record(10)
    second.record(10)
    mine, manifest = first.export(DAY1, DAY1, "one")
    theirs, _ = second.export(DAY1, DAY1, "two")
    forged = json.loads(mine.proof.read_bytes())
    forged["checkpoint"] = parse_proof_file(theirs.proof.read_bytes()).checkpoint.decode()
    resign(first, mine, manifest, json.dumps(forged).encode())
    reason = fail_reason(first.verify(mine))
    assert "'log.example/search', not this chain" in reason


def test_extension_lines_are_signed_and_reported(chain: Chain) -> None:
    chain.record(10)
    paths, manifest = chain.export(DAY1, DAY1, "out")
    forged = json.loads(paths.proof.read_bytes())
    checkpoint = parse_checkpoint(split_note(forged["checkpoint"].encode())[0])
    signer = parse_signer_key((chain.workdir / "note-private.key").read_text())
    extended = Checkpoint(
        checkpoint.origin,
        checkpoint.size,
        checkpoint.root_hash,
        (*checkpoint.extensions, "witness-hint example"),
    )
    forged["checkpoint"] = sign_note(extended.text(), [signer]).decode()
    resign(chain, paths, manifest, json.dumps(forged).encode())
    report = chain.verify(paths)
    assert report.exit_code == 0 and "['witness-hint example']" in report.merkle
    # an extension line added without the key breaks the signature
    forged["checkpoint"] = forged["checkpoint"].replace("witness-hint", "witness-hinT")
    resign(chain, paths, manifest, json.dumps(forged).encode())
    assert "does not verify" in fail_reason(chain.verify(paths))


def test_a_note_key_given_for_a_package_without_proofs_fails(chain: Chain) -> None:
    chain.record(10)
    with open_log(chain.log_url, chain.chain, read_only=True) as audit_log:
        paths, _ = export_window(
            audit_log, DAY1, DAY1, chain.workdir / "out", chain.keys / "audit-private.pem"
        )
    assert not paths.proof.exists()
    assert "carries no Merkle proofs" in fail_reason(chain.verify(paths))
    assert chain.verify(paths, keys=[]).exit_code == 0


def test_consistency_with_the_previous_export(chain: Chain) -> None:
    chain.record(12)
    old, _ = chain.export(DAY1, DAY1, "old")
    chain.record(20)
    new, manifest = chain.export(DAY2, DAY3, "new", previous=old.manifest)
    proofs = parse_proof_file(new.proof.read_bytes())
    assert proofs.previous is not None
    report = chain.verify(new, previous=old.manifest)
    assert report.exit_code == 0, render(report)
    assert "extends the previous export's checkpoint (size 12)" in report.merkle
    # a consistency proof that does not hold (restated by the audit key's holder)
    forged = json.loads(new.proof.read_bytes())
    forged["previous"]["consistency_proof"] = forged["previous"]["consistency_proof"][1:]
    resign(chain, new, manifest, json.dumps(forged).encode())
    assert "previous export's checkpoint" in fail_reason(chain.verify(new))


def test_a_quiet_window_is_proven_by_a_heartbeat(chain: Chain) -> None:
    chain.record(5)  # DAY1 01:00 .. 09:00, relayed now (2026 and later)
    paths, _ = chain.export(DAY3, DAY3, "quiet")
    report = chain.verify(paths)
    assert report.exit_code == 0, render(report)
    assert report.records == 0 and "no record was appended after" in report.merkle


# -- the command line ---------------------------------------------------------------------------
def test_checkpoint_and_keygen_commands(chain: Chain) -> None:
    env = {"FLAGTRAIL_LOG_URL": chain.log_url}
    empty = run_cli("checkpoint", cwd=chain.workdir, env={"FLAGTRAIL_LOG_URL": "sqlite:///x.db"})
    assert empty.returncode == 2 and "does not exist" in empty.stderr
    chain.record(3, tree=False)
    none = run_cli("checkpoint", cwd=chain.workdir, env=env)
    assert none.returncode == 1 and "no signed checkpoint" in none.stderr
    chain.record(3)
    shown = run_cli("checkpoint", cwd=chain.workdir, env=env)
    assert shown.returncode == 0 and shown.stdout.startswith("log.example/flag-audit\n6\n")
    checked = run_cli("checkpoint", "--check", cwd=chain.workdir, env=env)
    assert checked.returncode == 0 and "matches the log's 6 records" in checked.stdout
    again = run_cli("keygen", "--type", "note", "--out", str(chain.workdir))
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = run_cli("keygen", "--type", "note", "--name", "a+b", "--out", "k", cwd=chain.workdir)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (chain.workdir / "note-private.key").stat().st_mode & 0o777 == 0o600


def test_verify_refuses_a_malformed_note_key_in_one_sentence(chain: Chain) -> None:
    chain.record(3)
    paths, _ = chain.export(DAY1, DAY1, "out")
    result = run_cli(
        "verify", str(paths.jsonl), "--pubkey", str(chain.keys / "audit-public.pem"),
        "--note-key", "log.example+00000000+AAAA",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    good = run_cli(
        "verify", str(paths.jsonl), "--pubkey", str(chain.keys / "audit-public.pem"),
        "--note-key", str(chain.workdir / "note-public.vkey"),
    )  # fmt: skip
    assert good.returncode == 0 and "signed by a trusted note key" in good.stdout


def test_a_relay_with_a_named_note_key_that_is_missing_stops(chain: Chain) -> None:
    result = run_cli(
        "relay", "--once", cwd=chain.workdir,
        env={"FLAGTRAIL_NOTE_KEY_PATH": "missing.key", "FLAGTRAIL_LOG_URL": chain.log_url},
    )  # fmt: skip
    assert result.returncode == 2 and "flagtrail keygen --type note" in result.stderr


# -- past the stored level: tiles of 256 records ------------------------------------------------
def test_trees_past_a_tile_prove_from_stored_subtrees_and_log_tiles(chain: Chain) -> None:
    chain.record(300)
    old, _ = chain.export(DAY1, date(2026, 3, 20), "old")  # sequences 1..227
    chain.record(400)  # the relay restarts mid-tile: the tile in progress comes from the log
    store = open_store(chain.log_url, chain.chain, read_only=True)
    with open_log(chain.log_url, chain.chain, read_only=True) as audit_log:
        size, root = rebuild_root(audit_log)
        assert size == 700 and store.complete_size() == 512
        assert tree_hash(TreeReader(store, audit_log).node, size) == root
    with store.engine.connect() as conn:
        levels = conn.exec_driver_sql("SELECT DISTINCT level FROM merkle_nodes").fetchall()
    assert sorted(lv for (lv,) in levels) == [8, 9]  # nothing below the stored level
    new, _ = chain.export(date(2026, 3, 21), date(2026, 4, 20), "new", previous=old.manifest)
    proofs = parse_proof_file(new.proof.read_bytes())
    assert proofs.begin == 227 and proofs.end > 512  # the window spans three tiles
    report = chain.verify(new, previous=old.manifest)
    assert report.exit_code == 0, render(report)
    assert "extends the previous export's checkpoint (size 300)" in report.merkle


def test_a_log_cut_below_its_signed_checkpoint_stops_the_tree(chain: Chain) -> None:
    chain.record(280)
    db = sqlite3.connect(chain.workdir / "log.db")
    db.execute("DROP TRIGGER audit_log_refuses_delete")
    db.execute("DELETE FROM audit_log WHERE sequence > 270")
    db.commit()
    db.close()
    writer = chain.writer()
    with (
        open_log(chain.log_url, chain.chain) as audit_log,
        pytest.raises(TreeMismatch, match="the log was cut"),
    ):
        writer.catch_up(audit_log)
    assert writer.frozen and writer.maybe_checkpoint(force=True) is None


def test_end_to_end_through_the_command_line(workdir: Path) -> None:
    """keygen, loadgen, relay, checkpoint, export, verify: the operator's path."""
    assert run_cli("keygen", "--out", "keys", cwd=workdir).returncode == 0
    keygen = run_cli("keygen", "--type", "note", "--name", "ops.example", "--out", "keys")
    assert keygen.returncode == 0, keygen.stderr
    env = {"FLAGTRAIL_NOTE_KEY_PATH": "keys/note-private.key"}
    assert run_cli("loadgen", "--events", "30", cwd=workdir).returncode == 0
    relayed = run_cli("relay", "--once", cwd=workdir, env=env)
    assert relayed.returncode == 0, relayed.stderr
    shown = run_cli("checkpoint", cwd=workdir)
    assert shown.stdout.startswith("ops.example/flag-audit\n30\n"), shown.stderr
    today = datetime.now(UTC).date().isoformat()
    exported = run_cli(
        "export", "--start", today, "--end", today, "--out", "out",
        "--signing-key", "keys/audit-private.pem", cwd=workdir,
    )  # fmt: skip
    assert exported.returncode == 0 and "Merkle proofs" in exported.stdout, exported.stderr
    jsonl = next((workdir / "out").glob("*.jsonl"))
    verified = run_cli(
        "verify", str(jsonl), "--pubkey", "keys/audit-public.pem", cwd=workdir,
        env={"FLAGTRAIL_NOTE_KEYS": (workdir / "keys/note-public.vkey").read_text().strip()},
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Merkle proofs: checkpoint ops.example/flag-audit size 30" in verified.stdout


def test_the_relay_daemon_serves_its_checkpoints_and_heartbeats(workdir: Path) -> None:
    """A running relay signs a checkpoint when idle every T seconds (a heartbeat: the
    same tree, a later time) and serves the latest at GET /v1/checkpoint."""
    import os
    import subprocess
    import time
    import urllib.request

    from tests.conftest import FLAGTRAIL, free_port, wait_for

    generate_note_key(workdir, "ops.example")
    assert run_cli("loadgen", "--events", "5", cwd=workdir).returncode == 0
    port = free_port()
    env = {
        **os.environ,
        "FLAGTRAIL_NOTE_KEY_PATH": "note-private.key",
        "FLAGTRAIL_CHECKPOINT_SECONDS": "0.5",
    }
    daemon = subprocess.Popen(
        [*FLAGTRAIL, "relay", "--metrics-port", str(port), "--idle-wait", "0.1"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def latest() -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/checkpoint") as answer:
                return answer.read()
        except OSError:
            return None

    try:
        wait_for(lambda: (latest() or b"").startswith(b"ops.example/flag-audit\n5\n"), 60, "cp")
        first = parse_checkpoint(split_note(latest())[0])
        time.sleep(1.5)
        later = parse_checkpoint(split_note(latest())[0])
        assert later.size == first.size == 5 and later.root_hash == first.root_hash
        assert signed_time(later) > signed_time(first)  # a heartbeat while idle
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_the_writer_proves_its_tree_extends_an_older_one(chain: Chain) -> None:
    """What the relay hands a witness with each checkpoint: consistency from the size
    the witness last cosigned."""
    from relay.proofs.merkle import verify_consistency

    chain.record(270)
    old = parse_checkpoint(
        split_note(open_store(chain.log_url, chain.chain).latest_checkpoint())[0]
    )
    notes: list[bytes] = []
    writer = chain.writer()
    writer.on_checkpoint.append(notes.append)
    relay = chain.relay(writer)
    relay.resume()
    chain.outbox.clock = chain.clock
    for n in range(30):
        with chain.engine.begin() as conn:
            chain.outbox.record(conn, good_change(n))
    relay.drain()
    new = parse_checkpoint(split_note(notes[-1])[0])
    assert new.size == 300
    proof = writer.consistency_from(old.size)
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
