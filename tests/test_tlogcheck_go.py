"""Issue 10, section 3: a verifier we did not write accepts our proofs.

tests/go/tlogcheck is built here with the machine's Go and golang.org/x/mod from the Go
module proxy; it opens our checkpoints with sumdb/note and checks our proofs with
sumdb/tlog (CheckRecord, StoredHashes + TreeHash + CheckTree). No checker of ours
takes part: the package is written by the exporter and read only by the Go program.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from relay.manifest import PackagePaths
from tests.test_merkle import DAY1, Chain

GO_SOURCE = Path(__file__).parent / "go" / "tlogcheck"
CACHE = Path(os.environ.get("FLAGTRAIL_CACHE", "/tmp/flagtrail-cache"))


@pytest.fixture(scope="session")
def tlogcheck() -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("the Go toolchain is needed to build tests/go/tlogcheck")
        pytest.skip("no Go toolchain on this machine")
    binary = CACHE / "bin" / "tlogcheck"
    env = {
        **os.environ,
        "GOFLAGS": "-mod=mod",
        "GOMODCACHE": str(CACHE / "gomod"),
        "GOCACHE": str(CACHE / "gobuild"),
        "GOPATH": str(CACHE / "gopath"),
    }
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    return binary


def run(binary: Path, chain: Chain, paths: PackagePaths, vkey: str | None = None, origin=None):
    arguments = {
        "-vkey": vkey or chain.vkey,
        "-origin": origin or f"log.example/{chain.chain}",
        "-proof": str(paths.proof),
        "-jsonl": str(paths.jsonl),
    }
    return subprocess.run(
        [str(binary), *(part for pair in arguments.items() for part in pair)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def packages(sqlite_engine: Engine, workdir: Path, rsa_keys: Path) -> tuple[Chain, PackagePaths]:
    chain = Chain(sqlite_engine, workdir, rsa_keys)
    chain.record(300)  # past one tile of 256: stored subtrees and log tiles both prove
    old, _ = chain.export(DAY1, date(2026, 3, 20), "old")
    chain.record(400)
    new, _ = chain.export(date(2026, 3, 21), date(2026, 4, 20), "new", previous=old.manifest)
    return chain, new


def test_go_tlog_accepts_our_checkpoint_and_proofs(tlogcheck: Path, packages) -> None:
    chain, paths = packages
    result = run(tlogcheck, chain, paths)
    assert result.returncode == 0, result.stderr
    assert "checkpoint: log.example/flag-audit size 700 signed by log.example" in result.stdout
    assert "inclusion: leaf 227 in tree 700 (tlog.CheckRecord)" in result.stdout
    assert "inclusion: leaf 598 in tree 700 (tlog.CheckRecord)" in result.stdout
    assert "range: all 372 records [227, 599) in tree 700" in result.stdout
    assert "consistency: tree 700 extends tree 300 (tlog.CheckTree)" in result.stdout


def flip(encoded: str) -> str:
    return encoded[:5] + ("A" if encoded[5] != "A" else "B") + encoded[6:]


@pytest.mark.parametrize(
    "where",
    ["inclusion", "range_proof", "consistency", "record", "signature", "size"],
)
def test_go_tlog_refuses_what_was_tampered(tlogcheck: Path, packages, where: str) -> None:
    chain, paths = packages
    proof = json.loads(paths.proof.read_bytes())
    if where == "inclusion":
        proof["inclusion"][0]["proof"][1] = flip(proof["inclusion"][0]["proof"][1])
    elif where == "range_proof":
        proof["range_proof"][-1] = flip(proof["range_proof"][-1])
    elif where == "consistency":
        proof["previous"]["consistency_proof"][0] = flip(proof["previous"]["consistency_proof"][0])
    elif where == "record":
        lines = paths.jsonl.read_bytes().split(b"\n")
        lines[7] = lines[7].replace(b"flag-", b"flaG-", 1)
        paths.jsonl.write_bytes(b"\n".join(lines))
    elif where == "signature":
        head, sig = proof["checkpoint"].rsplit(" ", 1)
        proof["checkpoint"] = head + " " + flip(sig)
    elif where == "size":  # a checkpoint text edited without the key
        proof["checkpoint"] = proof["checkpoint"].replace("\n700\n", "\n699\n", 1)
    paths.proof.write_text(json.dumps(proof))
    result = run(tlogcheck, chain, paths)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("tlogcheck:")


def test_go_tlog_refuses_another_key_and_another_chain(
    tlogcheck: Path, packages, tmp_path: Path
) -> None:
    from relay.tree import generate_note_key

    chain, paths = packages
    generate_note_key(tmp_path / "other", "log.example")
    other = (tmp_path / "other" / "note-public.vkey").read_text().strip()
    refused = run(tlogcheck, chain, paths, vkey=other)
    assert refused.returncode == 1 and "no verifiable signatures" in refused.stderr
    elsewhere = run(tlogcheck, chain, paths, origin="log.example/search")
    assert elsewhere.returncode == 1 and "origin" in elsewhere.stderr
