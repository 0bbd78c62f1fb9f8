"""Attacker pass, round 2: lies that made `flagtrail verify` exit 0 before their fix."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import Engine

from producers.errors import ConfigError
from relay.manifest import write_signed
from relay.proofs.checkpoint import TIME_EXTENSION, parse_checkpoint
from relay.proofs.note import sign_note, split_note
from relay.proofs.package import parse_proof_file
from relay.signing import load_private_key
from relay.stamping import token_path
from relay.timestamp import new_nonce, request_token
from relay.tree import generate_note_key, load_note_signer
from relay.unpack import ArchiveError, unpack_package
from relay.verify import verify_export
from relay.witness.cosignature import generate_witness_key, parse_witness_skey, parse_witness_vkey
from relay.witness.package import load_witness_keys
from tests import test_timestamps
from tests.conftest import run_cli
from tests.test_merkle import DAY1, Chain, fail_reason, resign
from tests.test_timestamps import Tsa, _export, _verify

chain = test_timestamps.chain  # the fixtures: a chain of 20 records, two TSAs on loopback
tsas = test_timestamps.tsas


def test_a_witnessed_checkpoint_of_another_chain_does_not_vouch_for_this_one(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    """An insider with every key rewrites chain "payments". Its witness refuses the
    rewritten tree, but the same witness also watches "search": the insider appends the
    rewritten payments leaves to search's tree, signs that as a "log.example/search"
    checkpoint (the witness cosigns it: it extends search's tree) and ships it in the
    payments package. `verify --witness-key W --min-witnesses 1` (no --note-key) must
    not take a cosignature on another log's tree as a witness of this chain."""
    payments = Chain(sqlite_engine, workdir, rsa_keys, "payments")
    payments.record(10)
    paths, manifest = payments.export(DAY1, DAY1, "out")
    proof = json.loads(paths.proof.read_bytes())
    text, _ = split_note(parse_proof_file(paths.proof.read_bytes()).checkpoint)
    honest = parse_checkpoint(text)
    assert honest.origin == "log.example/payments" and honest.size == 10
    forged = dataclasses.replace(honest, origin="log.example/search")
    skey, vkey = generate_witness_key("witness.example")
    cosignature = parse_witness_skey(skey).cosign(forged.text())
    note_signer = load_note_signer(workdir / "note-private.key")
    proof["checkpoint"] = sign_note(forged.text(), [note_signer], keep=[cosignature]).decode()
    resign(payments, paths, manifest, json.dumps(proof).encode())

    report = verify_export(
        paths.jsonl,
        pubkey=rsa_keys / "audit-public.pem",
        witness_keys=[parse_witness_vkey(vkey)],
        min_witnesses=1,
    )
    assert not report.ok
    assert "log.example/search" in fail_reason(report)


def test_a_checkpoint_time_later_than_its_tsa_token_is_a_lie(
    chain: Path, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    """An insider with the note key signs the window's checkpoint again with a time years
    ahead and has the trusted TSA stamp it now: the heartbeat then says "nothing was
    appended until 2031". The TSA's genTime says the checkpoint existed before the time
    it claims, so verify must refuse it, not repeat the checkpoint's clock."""
    generate_note_key(chain, "log.example")
    env = {
        "FLAGTRAIL_NOTE_KEY_PATH": str(chain / "note-private.key"),
        "FLAGTRAIL_TSA_URL": tsas[0].url,
        "FLAGTRAIL_TSA_CHECKPOINTS": "1",
    }
    assert run_cli("relay", "--once", cwd=chain, env=env).returncode == 0
    done, paths = _export(chain, rsa_keys, "--tsa-url", tsas[0].url)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(paths.manifest.read_bytes())
    honest = parse_checkpoint(split_note(manifest["merkle"]["checkpoint"].encode())[0])
    future = "2031-01-01T00:00:00.000000Z"
    forged = dataclasses.replace(
        honest,
        extensions=tuple(
            TIME_EXTENSION + future if e.startswith(TIME_EXTENSION) else e
            for e in honest.extensions
        ),
    )
    assert forged != honest
    note = sign_note(forged.text(), [load_note_signer(chain / "note-private.key")])
    nonce = new_nonce()
    token = request_token(tsas[0].url, hashlib.sha256(forged.text()).digest(), nonce)
    proof = json.loads(paths.proof.read_bytes())
    proof["checkpoint"] = note.decode()
    proof_bytes = json.dumps(proof).encode()
    paths.proof.write_bytes(proof_bytes)
    manifest["merkle"]["checkpoint"] = note.decode()
    manifest["merkle"]["sha256"] = hashlib.sha256(proof_bytes).hexdigest()
    manifest["checkpoint_timestamp"] = {
        "nonce": str(nonce),
        "token": base64.b64encode(token).decode(),
    }
    write_signed(
        paths.manifest,
        paths.manifest_signature,
        manifest,
        load_private_key(rsa_keys / "audit-private.pem"),
    )
    token_path(paths).write_bytes(
        request_token(
            tsas[0].url,
            hashlib.sha256(paths.manifest.read_bytes()).digest(),
            int(manifest["timestamp"]["nonce"]),
        )
    )
    vkey = (chain / "note-public.vkey").read_text().strip()
    bad = _verify(paths, rsa_keys, "--tsa-cert", str(tsas[0].ca), "--note-key", vkey)
    assert bad.returncode == 1, bad.stdout
    assert "later than" in bad.stdout and "Traceback" not in bad.stderr


def test_pull_unpacks_the_proofs_and_timestamp_a_server_with_a_tree_or_tsa_ships(
    tmp_path: Path,
) -> None:
    """/v1/package is export_window's output: with a Merkle tree it holds <stem>.proof.json,
    with a TSA <stem>.manifest.json.tsr. Refusing them made pull fail on every such
    server, and dropping them would leave the proofs beyond the host unchecked."""
    stem = "flag-audit-soc2_2026-03-02_2026-03-02"
    names = [
        f"{stem}{s}"
        for s in (
            ".jsonl",
            ".jsonl.sig",
            ".manifest.json",
            ".manifest.json.sig",
            ".summary.txt",
            ".proof.json",
            ".manifest.json.tsr",
        )
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    (tmp_path / "p.tar.gz").write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    unpacked = unpack_package(tmp_path / "p.tar.gz", out, DAY1, DAY1, max_bytes=1 << 20)
    assert sorted(p.name for p in unpacked.files) == sorted(names)
    assert unpacked.paths.proof.exists() and token_path(unpacked.paths).exists()


def test_one_witness_key_under_two_names_counts_once(tmp_path: Path) -> None:
    """A cosignature signs the checkpoint, not the witness's name: one key listed under
    two names (a witness operator registering twice) would let one witness's line,
    copied under the second name, meet --min-witnesses 2."""
    skey, vkey = generate_witness_key("alpha.example")
    seed = skey.split("+", 4)[4]
    again = parse_witness_skey(
        f"PRIVATE+KEY+beta.example+{_key_id_for('beta.example', vkey):08x}+{seed}"
    )
    with pytest.raises(ConfigError, match="same witness key"):
        load_witness_keys([vkey, again.verifier().vkey()])


def _key_id_for(name: str, vkey: str) -> int:
    from relay.proofs.note import key_id

    return key_id(name, base64.b64decode(vkey.split("+", 2)[2]))


def test_a_gzip_bomb_header_is_refused_before_it_is_read_into_memory(tmp_path: Path) -> None:
    """A hostile server's archive of ~0.3 MB whose first header is a GNU long name of
    64 MiB: tarfile reads a long name whole into memory before pull sees the member, so
    a few MB of download could take gigabytes. Refused at the first oversized read."""
    import gzip
    import resource

    size = 64 << 20
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, size
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as gz:
        gz.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(size >> 20):
            gz.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    out = tmp_path / "out"
    out.mkdir()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArchiveError, match="larger than"):
        unpack_package(bomb, out, DAY1, DAY1, max_bytes=1 << 30)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 << 10


def test_a_hostile_witness_cannot_stop_the_checkpoint_reaching_the_others(
    sqlite_engine: Engine, workdir: Path, rsa_keys: Path, tmp_path: Path
) -> None:
    """A witness listed first answers 409 text/x.tlog.size with digits int() cannot
    read ("²", or 5,000 of them): the client raised ValueError out of send(), so the
    honest witnesses after it never saw the checkpoint and no alarm counted it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from relay.proofs.note import parse_vkey
    from relay.tree import open_store
    from relay.witness.client import WitnessClient, log_reader, parse_witnesses
    from relay.witness.cosignatures import CosignatureStore
    from relay.witness.server import make_server, serve_in_background
    from relay.witness.service import Witness
    from relay.witness.state import WitnessState
    from tests.test_witness_client import Counts

    chain = Chain(sqlite_engine, workdir, rsa_keys)
    chain.record(6)
    for answer in ("²\n", "9" * 5000 + "\n"):

        class Hostile(BaseHTTPRequestHandler):
            reply = answer.encode()  # bound now, in the class body

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                body = self.reply
                self.send_response(409)
                self.send_header("Content-Type", "text/x.tlog.size")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        hostile = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        serve_in_background(hostile)
        _, bad_vkey = generate_witness_key("hostile.example")
        good_skey, good_vkey = generate_witness_key("honest.example")
        state = WitnessState(tmp_path / f"w{len(answer)}.db")
        honest = make_server(
            Witness(
                parse_witness_skey(good_skey),
                {"log.example/flag-audit": [parse_vkey(chain.vkey)]},
                state,
            ),
            "127.0.0.1",
            0,
        )
        serve_in_background(honest)
        try:
            store = open_store(chain.log_url, chain.chain)
            endpoints = parse_witnesses(
                f"{bad_vkey} http://127.0.0.1:{hostile.server_address[1]}\n"
                f"{good_vkey} http://127.0.0.1:{honest.server_address[1]}"
            )
            counts = Counts()
            client = WitnessClient(
                endpoints,
                log_reader(store, chain.log_url, chain.chain),
                CosignatureStore(store.engine, chain.chain),
                counts,
            )
            note = store.latest_checkpoint()
            assert note is not None
            outcomes = client.send(note)
            assert [o.status for o in outcomes] == ["refused", "cosigned"]
            assert ("refused", "hostile.example") in counts.seen
        finally:
            for server in (hostile, honest):
                server.shutdown()
                server.server_close()
            state.close()


def test_a_deeply_nested_file_to_resolve_is_one_sentence(tmp_path: Path) -> None:
    """`identity resolve FILE` reads a file someone handed over: 100,000 nested arrays
    on one line raised RecursionError (a traceback) instead of a ConfigError."""
    from producers.identity_ops import pseudonyms_in_file

    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        pseudonyms_in_file(deep)


def test_anyone_replaying_a_public_checkpoint_cannot_fill_the_witness_refusals(
    tmp_path: Path,
) -> None:
    """Every export carries a log-signed checkpoint; anyone may POST it with a garbage
    proof. Each 422 kept its whole request (up to 64 KiB) as "evidence of a rewritten
    log": an unbounded table of noise. One row per refused checkpoint is kept, and a
    real rewrite of the same size still is."""
    from relay.proofs.note import generate_signer_key, parse_vkey
    from relay.witness.service import Witness
    from relay.witness.state import WitnessState
    from tests.test_witness import ORIGIN, Tree, records

    log_skey, log_vkey = generate_signer_key("relay.test")
    state = WitnessState(tmp_path / "witness.db")
    witness = Witness(
        parse_witness_skey(generate_witness_key("w.test")[0]),
        {ORIGIN: [parse_vkey(log_vkey)]},
        state,
    )
    honest = Tree(records(8), log_skey)
    assert witness.add_checkpoint(honest.request(0)).status == 200
    for data in records(10)[8:]:
        honest.append(data)
    for n in range(50):  # the public size-10 checkpoint, a different garbage proof each time
        garbage = [hashlib.sha256(f"{n}:{i}".encode()).digest() for i in range(3)]
        assert witness.add_checkpoint(honest.request(8, proof=garbage)).status == 422
    rewritten = Tree([*records(2), b"rewritten", *records(10)[3:]], log_skey)
    assert witness.add_checkpoint(rewritten.request(8)).status == 422
    assert [s for s, _ in state.refusals(ORIGIN)] == [422, 422]
    assert witness.add_checkpoint(honest.request(8)).status == 200
    state.close()


def test_an_idle_connection_cannot_hold_a_witness_thread_forever(tmp_path: Path) -> None:
    """The witness serves the internet a thread per connection: one that opens and says
    nothing held its thread for ever (no socket timeout), so a few thousand idle sockets
    stopped it cosigning. An idle connection is closed after the server's timeout."""
    import socket
    import time

    from relay.proofs.note import generate_signer_key, parse_vkey
    from relay.witness.server import make_server, serve_in_background
    from relay.witness.service import Witness
    from relay.witness.state import WitnessState

    state = WitnessState(tmp_path / "witness.db")
    witness = Witness(
        parse_witness_skey(generate_witness_key("w.test")[0]),
        {"relay.test/flag-audit": [parse_vkey(generate_signer_key("relay.test")[1])]},
        state,
    )
    server = make_server(witness, "127.0.0.1", 0, idle_timeout=0.5)
    serve_in_background(server)
    try:
        idle = socket.create_connection(server.server_address, timeout=5)
        started = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server, not our 5 s timeout
        assert time.monotonic() - started < 4
        idle.close()
    finally:
        server.shutdown()
        server.server_close()
        state.close()


def test_a_manifest_dated_after_its_tsa_token_is_a_lie(
    chain: Path, rsa_keys: Path, tsas: tuple[Tsa, Tsa]
) -> None:
    """An insider with the signing key restates generated_at years ahead (the package
    "was made after the window closed") and has the trusted TSA stamp the re-signed
    manifest now. The token pins when the manifest existed: it cannot have been
    generated after that."""
    done, paths = _export(chain, rsa_keys, "--tsa-url", tsas[0].url)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(paths.manifest.read_bytes())
    manifest["generated_at"] = "2031-01-01T00:00:00.000000Z"
    write_signed(
        paths.manifest,
        paths.manifest_signature,
        manifest,
        load_private_key(rsa_keys / "audit-private.pem"),
    )
    token_path(paths).write_bytes(
        request_token(
            tsas[0].url,
            hashlib.sha256(paths.manifest.read_bytes()).digest(),
            int(manifest["timestamp"]["nonce"]),
        )
    )
    bad = _verify(paths, rsa_keys, "--tsa-cert", str(tsas[0].ca))
    assert bad.returncode == 1, bad.stdout
    assert "generated_at" in bad.stdout and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--api", "https://[::1"],  # urlsplit: "Invalid IPv6 URL"
        ["--api", "https://127.0.0.1:1", "--timeout", "nan"],
        ["--api", "https://127.0.0.1:1", "--timeout", "-1"],
    ],
)
def test_pull_settings_a_socket_refuses_are_one_sentence(tmp_path: Path, args: list[str]) -> None:
    done = run_cli(
        "pull",
        *args,
        "--start",
        "2026-01-01",
        "--end",
        "2026-01-02",
        "--key-fingerprint",
        "SHA256:" + "0" * 64,
        "--out",
        str(tmp_path),
        env={"AUDIT_TOKEN": "ftk_x"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_a_witness_port_out_of_range_is_one_sentence(tmp_path: Path) -> None:
    from relay.proofs.note import generate_signer_key

    assert run_cli("witness", "keygen", "--out", str(tmp_path), "--name", "w.test").returncode == 0
    done = run_cli(
        "witness",
        "serve",
        "--key",
        str(tmp_path / "witness.key"),
        "--port",
        "99999",
        "--trusted-log",
        f"relay.test/flag-audit={generate_signer_key('relay.test')[1]}",
        "--state",
        str(tmp_path / "state.db"),
    )
    assert done.returncode == 2 and "99999" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_retention_of_billions_of_days_is_one_sentence(workdir: Path) -> None:
    """timedelta(days=99999999999) raised OverflowError: a traceback, not a refusal."""
    done = run_cli("retention", "apply", "--dry-run", "--outbox-days", "99999999999", cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "99999999999" in done.stderr


@pytest.mark.parametrize("url", ["https://[::1", "https://idp.example:99999/jwks"])
def test_a_provider_url_that_is_not_a_url_is_a_config_error(url: str) -> None:
    """The jwks_uri comes from the provider's discovery document: "https://[::1" raised
    ValueError out of Outbox.record (a traceback on every write), a port past 65535
    was accepted and failed later."""
    from producers.oidc.settings import check_url

    with pytest.raises(ConfigError, match="jwks_uri"):
        check_url(url, "the provider's jwks_uri")
