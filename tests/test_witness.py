"""Issue 10 §4: the witness (C2SP tlog-witness over HTTP, tlog-cosignature v1): it
cosigns only checkpoints that extend the last one it cosigned, answers each refusal
with the spec's status, and remembers across restarts."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from relay.proofs.checkpoint import Checkpoint
from relay.proofs.merkle import CompactRange, consistency_proof, leaf_hash
from relay.proofs.note import generate_signer_key, parse_signer_key, parse_vkey, sign_note
from relay.witness.cosignature import (
    generate_witness_key,
    parse_witness_skey,
    parse_witness_vkey,
    verified_cosigners,
)
from relay.witness.server import make_server, serve_in_background
from relay.witness.service import Witness
from relay.witness.state import WitnessState
from tests.conftest import wait_for

ORIGIN = "relay.test/flag-audit"


class Tree:
    """An in-memory RFC 6962 tree with the writer's own code (relay.proofs.merkle)."""

    def __init__(self, leaves: list[bytes], key: str) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.border = CompactRange()
        self.signer = parse_signer_key(key)
        for data in leaves:
            self.append(data)

    def append(self, data: bytes) -> None:
        for level, index, value in self.border.append(leaf_hash(data)):
            self.nodes[(level, index)] = value

    def checkpoint(self, origin: str = ORIGIN) -> bytes:
        cp = Checkpoint(origin, self.border.size, self.border.root())
        return sign_note(cp.text(), [self.signer])

    def request(self, old: int, origin: str = ORIGIN, proof: list[bytes] | None = None) -> bytes:
        if proof is None:
            proof = consistency_proof(lambda lv, ix: self.nodes[(lv, ix)], old, self.border.size)
        lines = [f"old {old}\n"] + [base64.b64encode(p).decode() + "\n" for p in proof]
        return ("".join(lines) + "\n").encode() + self.checkpoint(origin)


def records(n: int, tag: str = "honest") -> list[bytes]:
    return [f'{{"seq":{i},"by":"{tag}"}}'.encode() for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def log_key() -> tuple[str, str]:
    return generate_signer_key("relay.test")


@pytest.fixture(scope="module")
def witness_key() -> tuple[str, str]:
    return generate_witness_key("witness.test/w1")


@pytest.fixture
def witness_url(
    tmp_path: Path, log_key: tuple[str, str], witness_key: tuple[str, str]
) -> Iterator[str]:
    state = WitnessState(tmp_path / "witness.db")
    witness = Witness(parse_witness_skey(witness_key[0]), {ORIGIN: [parse_vkey(log_key[1])]}, state)
    server = make_server(witness, "127.0.0.1", 0)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    state.close()


def post(url: str, body: bytes, path: str = "/add-checkpoint") -> tuple[int, str, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", path, body=body)
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, answer.getheader("Content-Type") or "", data


def cosigned(tree: Tree, line: bytes, witness_vkey: str) -> dict[str, int]:
    return verified_cosigners(tree.checkpoint() + line, [parse_witness_vkey(witness_vkey)])


def test_cosigns_a_growing_log_and_its_heartbeats(
    witness_url: str, log_key: tuple[str, str], witness_key: tuple[str, str]
) -> None:
    tree = Tree(records(5), log_key[0])
    status, _, body = post(witness_url, tree.request(0))
    assert status == 200, body
    assert body.startswith("— witness.test/w1 ".encode()) and body.endswith(b"\n")
    assert "witness.test/w1" in cosigned(tree, body, witness_key[1])
    for data in records(12)[5:]:
        tree.append(data)
    status, _, body = post(witness_url, tree.request(5))
    assert status == 200, body
    assert cosigned(tree, body, witness_key[1])
    status, _, body = post(witness_url, tree.request(12))  # same size, same root: heartbeat
    assert status == 200, body


def test_a_cosignature_does_not_transfer_to_another_checkpoint(
    witness_url: str, log_key: tuple[str, str], witness_key: tuple[str, str]
) -> None:
    tree = Tree(records(3), log_key[0])
    _, _, line = post(witness_url, tree.request(0))
    other = Tree(records(3, "forged"), log_key[0])
    with pytest.raises(Exception, match="does not verify"):
        verified_cosigners(other.checkpoint() + line, [parse_witness_vkey(witness_key[1])])


def test_a_rewritten_log_is_refused_with_422_and_kept_as_evidence(
    tmp_path: Path, witness_url: str, log_key: tuple[str, str]
) -> None:
    honest = Tree(records(8), log_key[0])
    assert post(witness_url, honest.request(0))[0] == 200
    # the insider rewrites record 3 and re-signs with the log's own key, then grows
    rewritten = Tree([*records(2), b"rewritten", *records(8)[3:], *records(10)[8:]], log_key[0])
    status, _, body = post(witness_url, rewritten.request(8))
    assert status == 422, body
    assert b"consistency proof does not verify" in body
    # nor can it skip the proof by claiming the witness's size is its own size
    same = Tree([*records(2), b"rewritten", *records(8)[3:]], log_key[0])
    status, _, body = post(witness_url, same.request(8))
    assert status == 409, body
    refusals = WitnessState(tmp_path / "witness.db").refusals(ORIGIN)
    assert [s for s, _ in refusals] == [422, 409]
    # the honest log still extends what was cosigned
    for data in records(10)[8:]:
        honest.append(data)
    assert post(witness_url, honest.request(8))[0] == 200


def test_a_stale_old_size_gets_409_with_the_witness_size(
    witness_url: str, log_key: tuple[str, str]
) -> None:
    tree = Tree(records(7), log_key[0])
    assert post(witness_url, tree.request(0))[0] == 200
    tree.append(b"eight")
    status, ctype, body = post(witness_url, tree.request(0))
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"7\n")
    assert post(witness_url, tree.request(7))[0] == 200


def test_each_bad_request_gets_the_spec_status(witness_url: str, log_key: tuple[str, str]) -> None:
    tree = Tree(records(4), log_key[0])
    stranger = Tree(records(4), generate_signer_key("relay.test")[0])  # same name, other key
    assert post(witness_url, tree.request(0, origin="other.test/log"))[0] == 404
    assert post(witness_url, stranger.request(0))[0] == 403
    assert post(witness_url, b"old 01\n\n" + tree.checkpoint())[0] == 400
    assert post(witness_url, b"old 9\n\n" + tree.checkpoint())[0] == 400  # old > size
    assert post(witness_url, b"old 0\nnot-base64\n\n" + tree.checkpoint())[0] == 400
    assert post(witness_url, b"old 0\n" + tree.checkpoint())[0] == 400  # no blank line
    too_long = "".join(base64.b64encode(bytes(32)).decode() + "\n" for _ in range(64))
    assert post(witness_url, f"old 0\n{too_long}\n".encode() + tree.checkpoint())[0] == 400
    # a proof from the empty tree must be empty
    assert post(witness_url, tree.request(0, proof=[hashlib.sha256(b"x").digest()]))[0] == 422
    assert post(witness_url, tree.request(0), path="/elsewhere")[0] == 404
    assert post(witness_url, tree.request(0))[0] == 200  # none of the above changed its state


def test_concurrent_requests_cannot_roll_the_witness_back(
    witness_url: str, log_key: tuple[str, str]
) -> None:
    base = Tree(records(5), log_key[0])
    assert post(witness_url, base.request(0))[0] == 200
    smaller, larger = Tree(records(8), log_key[0]), Tree(records(20), log_key[0])
    bodies = [smaller.request(5), larger.request(5)] * 4
    results: list[int] = []

    def send(body: bytes) -> None:
        results.append(post(witness_url, body)[0])

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 1 and results.count(409) == len(bodies) - 1


def _serve(
    tmp_path: Path, key_file: Path, log_vkey: str, *trust: str
) -> tuple[subprocess.Popen, str]:
    trust = trust or ("--trusted-log", f"{ORIGIN}={log_vkey}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flagtrail.cli",
            "witness",
            "serve",
            "--key",
            str(key_file),
            *trust,
            "--state",
            str(tmp_path / "w.db"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    line = proc.stdout.readline()
    assert "listening on http://" in line, line + proc.stderr.read()
    url = line.split("listening on ")[1].split("/add-checkpoint")[0]
    return proc, url


def test_the_command_keeps_its_state_across_a_restart(
    tmp_path: Path, log_key: tuple[str, str]
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flagtrail.cli",
            "witness",
            "keygen",
            "--name",
            "w.test/a",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "witness.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    vkey = (tmp_path / "witness.vkey").read_text().strip()
    tree = Tree(records(6), log_key[0])
    proc, url = _serve(tmp_path, key_file, log_key[1])
    try:
        status, _, line = post(url, tree.request(0))
        assert status == 200
        assert verified_cosigners(tree.checkpoint() + line, [parse_witness_vkey(vkey)])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    logs_file = tmp_path / "logs.txt"
    logs_file.write_text(f"# origin and note key of each log\n{ORIGIN} {log_key[1]}\n")
    proc, url = _serve(tmp_path, key_file, log_key[1], "--trusted-logs", str(logs_file))
    try:
        rolled_back = Tree(records(3), log_key[0])
        assert post(url, rolled_back.request(0))[:3:2] == (409, b"6\n")
    finally:
        proc.kill()
        proc.wait(timeout=20)
    wait_for(lambda: proc.poll() is not None, 5, "the witness to stop")


def test_bad_witness_settings_are_one_sentence(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flagtrail.cli", "witness", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    (tmp_path / "bad.key").write_text("PRIVATE+KEY+x+00000000+AAAA\n")
    for args, words in [
        (("serve", "--trusted-log", "a=b"), "needs its key"),
        (("serve", "--key", str(tmp_path / "none.key"), "--trusted-log", "a=b"), "cannot read"),
        (
            ("serve", "--key", str(tmp_path / "bad.key"), "--trusted-log", "a=b"),
            "not a cosignature",
        ),
        (("keygen", "--name", "has space", "--out", str(tmp_path)), "without spaces"),
    ]:
        done = run(*args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
