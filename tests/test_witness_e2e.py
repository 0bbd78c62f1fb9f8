"""Issue 10 §4, end to end: an insider with write access to the databases and every
key (the audit signing key and the checkpoint note key) rewrites the whole chain and
re-chains it. The hash chain, the signatures and the Merkle proofs of the forged
history all hold; the independent witness, which cosigned the honest history, refuses
the forged one; the relay raises the alarm (metric and log line); and an export of the
forged history fails `flagtrail verify --witness-key`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from flagtrail import settings
from producers import Outbox
from relay.tree import generate_note_key
from tests.conftest import free_port, run_cli, wait_for
from tests.contracts import good_change

WITNESS = "witness.test/w1"
ORIGIN = "log.example/flag-audit"
DB_FILES = ("outbox.db", "log.db")


def _record(world: Path, changes: list[dict]) -> None:
    engine = settings.make_engine(f"sqlite:///{world / 'outbox.db'}")
    outbox = Outbox(engine, str(world / "identities.toml"))
    for n, overrides in enumerate(changes):
        with engine.begin() as conn:
            outbox.record(conn, good_change(n, **overrides))
    engine.dispose()


def _env(world: Path, keys: Path, **extra: str) -> dict[str, str]:
    return {
        "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{world / 'outbox.db'}",
        "FLAGTRAIL_LOG_URL": f"sqlite:///{world / 'log.db'}",
        "FLAGTRAIL_IDENTITIES": str(world / "identities.toml"),
        "FLAGTRAIL_NOTE_KEY_PATH": str(keys / "note-private.key"),
        "FLAGTRAIL_CHECKPOINT_SECONDS": "1",
        **extra,
    }


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "flagtrail.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _metric(port: int, name: str, proc: subprocess.Popen | None = None) -> float:
    assert proc is None or proc.poll() is None, "the relay stopped (see its log)"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(f'{name}{{witness="{WITNESS}"}}'):
            return float(line.split()[-1])
    return 0.0


def _export(world: Path, keys: Path, out: str) -> Path:
    today = datetime.now(UTC).date().isoformat()
    done = run_cli(
        "export", "--start", today, "--end", today, "--signing-key",
        str(keys / "audit-private.pem"), "--out", str(world / out), "--no-timestamp",
        cwd=world, env=_env(world, keys),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return world / out / f"flag-audit-soc2_{today}_{today}.jsonl"


def _verify(package: Path, keys: Path, witness_vkey: str, *extra: str):
    vkey = (keys / "note-public.vkey").read_text().strip()
    return run_cli(
        "verify", str(package), "--pubkey", str(keys / "audit-public.pem"), "--note-key", vkey,
        "--witness-key", witness_vkey, "--min-witnesses", "1", *extra,
    )  # fmt: skip


def test_a_rewritten_and_rechained_log_is_refused_by_the_witness(
    tmp_path: Path, rsa_keys: Path
) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(rsa_keys, keys)
    generate_note_key(keys, "log.example")
    note_vkey = (keys / "note-public.vkey").read_text().strip()
    done = run_cli("witness", "keygen", "--name", WITNESS, "--out", str(tmp_path / "w"))
    assert done.returncode == 0, done.stderr
    witness_vkey = (tmp_path / "w" / "witness.vkey").read_text().strip()
    honest, forged = tmp_path / "honest", tmp_path / "forged"
    for world in (honest, forged):
        world.mkdir()
        shutil.copy(Path(__file__).parent.parent / "deploy/examples/identities.toml", world)

    # the independent witness, on its own state
    wport = free_port()
    witness = _start(
        ["witness", "serve", "--key", str(tmp_path / "w" / "witness.key"), "--trusted-log",
         f"{ORIGIN}={note_vkey}", "--state", str(tmp_path / "w" / "state.db"), "--port",
         str(wport)],
        {},
        tmp_path / "witness.log",
    )  # fmt: skip
    relay = None
    try:
        wait_for(lambda: "listening" in (tmp_path / "witness.log").read_text(), 30, "the witness")
        witnesses = f"{witness_vkey} http://127.0.0.1:{wport}"

        # 1. the honest history, cosigned by the witness
        _record(honest, [{} for _ in range(10)])
        mport = free_port()
        relay_env = _env(honest, keys, FLAGTRAIL_WITNESSES=witnesses)
        relay = _start(
            ["--log-format", "json", "relay", "--metrics-port", str(mport), "--idle-wait", "0.2"],
            relay_env,
            tmp_path / "relay-1.log",
        )
        wait_for(
            lambda: _metric(mport, "flagtrail_witness_cosignatures_total", relay) >= 1,
            60,
            "a cosignature",
        )
        _stop(relay)
        relay = None
        package = _export(honest, keys, "before")
        ok = _verify(package, keys, witness_vkey)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Witnesses: checkpoint cosigned by 1 trusted witness(es): witness.test/w1" in (
            ok.stdout
        )

        # 2. the insider: the same ten changes, but change 3 never had its approver; the
        # whole chain re-made with the same keys, then swapped in for the real databases
        _record(forged, [{"after": {"rollout": 100}} if n == 3 else {} for n in range(10)])
        done = run_cli("relay", "--once", env=_env(forged, keys), cwd=forged)
        assert done.returncode == 0, done.stderr
        for name in DB_FILES:
            for suffix in ("-wal", "-shm"):
                (honest / (name + suffix)).unlink(missing_ok=True)
            shutil.copy(forged / name, honest / name)
        forged_package = _export(honest, keys, "forged-alone")  # before the relay resumes
        forged_ok = run_cli(
            "verify", str(forged_package), "--pubkey", str(keys / "audit-public.pem"),
            "--note-key", note_vkey,
        )  # fmt: skip
        assert forged_ok.returncode == 0, forged_ok.stdout  # chain, signatures, proofs: all hold

        # 3. the relay resumes on the forged log and asks the witness: refused, alarm
        _record(honest, [{"flag_key": f"late-{n}"} for n in range(3)])
        relay = _start(
            ["--log-format", "json", "relay", "--metrics-port", str(mport), "--idle-wait", "0.2"],
            relay_env,
            tmp_path / "relay-2.log",
        )
        wait_for(
            lambda: _metric(mport, "flagtrail_witness_refusals_total", relay) >= 1, 60, "the alarm"
        )
        assert _metric(mport, "flagtrail_witness_cosignatures_total") == 0
        _stop(relay)
        relay = None
        lines = [
            json.loads(line)
            for line in (tmp_path / "relay-2.log").read_text().splitlines()
            if line.startswith("{")
        ]
        refused = [x for x in lines if x.get("event") == "witness.refused"]
        assert refused and refused[0]["level"] == "error" and refused[0]["witness"] == WITNESS
        assert refused[0]["status"] in (409, 422) and "rewritten" in refused[0]["alarm"]

        # 4. a later export of the forged history fails against the witnessed checkpoint
        later = _export(honest, keys, "after")
        failed = _verify(later, keys, witness_vkey)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "witnesses:" in failed.stdout and "0 of the trusted witnesses" in failed.stdout
        linked = _verify(later, keys, witness_vkey, "--previous", str(package.with_name(
            package.name.removesuffix(".jsonl") + ".manifest.json")))  # fmt: skip
        assert linked.returncode == 1, linked.stdout
    finally:
        if relay is not None:
            _stop(relay)
        _stop(witness)
