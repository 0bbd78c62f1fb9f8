"""Issue 10 §4: the relay's witness client and `flagtrail verify --witness-key`, against
witnesses that refuse, vanish or lie, and packages whose cosignatures were forged."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from flagtrail import settings
from producers.errors import ConfigError
from relay.export import export_window
from relay.logs import open_log
from relay.manifest import write_signed
from relay.proofs.note import Signature, parse_vkey
from relay.proofs.package import parse_proof_file
from relay.signing import load_private_key
from relay.tree import open_store
from relay.verify import verify_export
from relay.witness.client import WitnessClient, log_reader, parse_witnesses
from relay.witness.cosignature import generate_witness_key, parse_witness_skey, parse_witness_vkey
from relay.witness.cosignatures import CosignatureStore, CosignedTreeStore
from relay.witness.server import make_server, serve_in_background
from relay.witness.service import Witness
from relay.witness.state import WitnessState
from tests.conftest import free_port, run_cli
from tests.test_merkle import DAY1, DAY3, Chain

NAME = "witness.test/w1"


class Counts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def witness_cosigned(self, witness: str) -> None:
        self.seen.append(("cosigned", witness))

    def witness_refused(self, witness: str) -> None:
        self.seen.append(("refused", witness))

    def witness_unreachable(self, witness: str) -> None:
        self.seen.append(("unreachable", witness))


@pytest.fixture
def chain(sqlite_engine: Engine, workdir: Path, rsa_keys: Path) -> Chain:
    return Chain(sqlite_engine, workdir, rsa_keys)


@pytest.fixture
def witness_keys() -> tuple[str, str]:
    return generate_witness_key(NAME)


def _serve(chain: Chain, skey: str, folder: Path) -> Iterator[str]:
    state = WitnessState(folder / "witness.db")
    witness = Witness(
        parse_witness_skey(skey), {"log.example/flag-audit": [parse_vkey(chain.vkey)]}, state
    )
    server = make_server(witness, "127.0.0.1", 0)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    state.close()


@pytest.fixture
def witness_url(chain: Chain, witness_keys: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    yield from _serve(chain, witness_keys[0], tmp_path)


def _client(chain: Chain, vkey: str, url: str, counts: Counts) -> WitnessClient:
    store = open_store(chain.log_url, chain.chain)
    endpoints = parse_witnesses(f"{vkey} {url}")
    reader = log_reader(store, chain.log_url, chain.chain)
    return WitnessClient(endpoints, reader, CosignatureStore(store.engine, chain.chain), counts)


def _latest(chain: Chain) -> bytes:
    note = open_store(chain.log_url, chain.chain, read_only=True).latest_checkpoint()
    assert note is not None
    return note


def _export(chain: Chain, out: str):
    with open_log(chain.log_url, chain.chain, read_only=True) as audit_log:
        store = CosignedTreeStore(open_store(chain.log_url, chain.chain, read_only=True))
        return export_window(
            audit_log, DAY1, DAY3, chain.workdir / out, chain.keys / "audit-private.pem", tree=store
        )


def _cosigned_package(chain: Chain, witness_keys: tuple[str, str], url: str):
    chain.record(12)
    counts = Counts()
    client = _client(chain, witness_keys[1], url, counts)
    assert [o.status for o in client.send(_latest(chain))] == ["cosigned"]
    assert counts.seen == [("cosigned", NAME)]
    return _export(chain, "out")


def test_an_exported_checkpoint_carries_the_cosignature_verify_requires(
    chain: Chain, witness_keys: tuple[str, str], witness_url: str
) -> None:
    paths, manifest = _cosigned_package(chain, witness_keys, witness_url)
    assert f"— {NAME} " in manifest["merkle"]["checkpoint"]
    keys = [parse_witness_vkey(witness_keys[1])]
    report = chain.verify(paths, witness_keys=keys, min_witnesses=1)
    assert report.exit_code == 0, report.finding
    assert report.witnesses.startswith(f"checkpoint cosigned by 1 trusted witness(es): {NAME}")
    # a witness the auditor trusts that did not cosign: one of two is not two of two
    other = parse_witness_vkey(generate_witness_key("witness.test/w2")[1])
    report = chain.verify(paths, witness_keys=[*keys, other], min_witnesses=2)
    assert report.exit_code == 1 and "cosigned by 1 of the trusted witnesses" in str(report.finding)


def test_an_export_takes_the_cosigned_checkpoint_over_a_newer_heartbeat_of_the_same_tree(
    chain: Chain, witness_keys: tuple[str, str], witness_url: str
) -> None:
    _cosigned_package(chain, witness_keys, witness_url)
    cosigned = _latest(chain)
    writer = chain.writer()
    with open_log(chain.log_url, chain.chain) as audit_log:
        writer.catch_up(audit_log)
    chain.tree_clock.now += 10_000  # a heartbeat, signed after the witness answered
    assert writer.maybe_checkpoint() is not None and _latest(chain) != cosigned
    _, manifest = _export(chain, "again")
    assert manifest["merkle"]["checkpoint"].startswith(cosigned.decode())
    assert f"— {NAME} " in manifest["merkle"]["checkpoint"]


def test_a_forged_cosignature_fails_and_a_stranger_s_does_not_count(
    chain: Chain, witness_keys: tuple[str, str], witness_url: str
) -> None:
    paths, manifest = _cosigned_package(chain, witness_keys, witness_url)
    key = load_private_key(chain.keys / "audit-private.pem")  # the insider holds it
    note = manifest["merkle"]["checkpoint"]
    ours = next(line for line in note.splitlines() if line.startswith(f"— {NAME} "))
    real = parse_witness_vkey(witness_keys[1])
    forged_line = Signature(NAME, real.key_id, bytes(72)).line()  # the right name and key ID
    stranger = parse_witness_skey(generate_witness_key(NAME)[0])  # same name, its own key
    text = note[: note.index("\n\n") + 1].encode()
    stranger_line = stranger.cosign(text).line()
    for replacement, words in [
        (forged_line.rstrip("\n"), "does not verify"),
        (stranger_line.rstrip("\n"), "cosigned by 0 of the trusted witnesses"),
    ]:
        forged = note.replace(ours, replacement)
        proofs = parse_proof_file(paths.proof.read_bytes())  # rewritten to agree, as an
        document = dataclasses.replace(proofs, checkpoint=forged.encode()).to_json()  # insider
        paths.proof.write_bytes(document)
        manifest["merkle"]["checkpoint"] = forged
        manifest["merkle"]["sha256"] = hashlib.sha256(document).hexdigest()
        write_signed(paths.manifest, paths.manifest_signature, manifest, key)
        report = verify_export(
            paths.jsonl,
            pubkey=chain.keys / "audit-public.pem",
            witness_keys=[real],
            min_witnesses=1,
        )
        assert report.exit_code == 1 and words in str(report.finding), report.finding
    assert json.loads(paths.manifest.read_bytes())["merkle"]["checkpoint"] != note


def test_without_checkpoints_or_with_too_few_keys(
    chain: Chain, witness_keys: tuple[str, str], tmp_path: Path
) -> None:
    chain.record(5, tree=False)
    paths, _ = _export(chain, "plain")
    keys = [parse_witness_vkey(witness_keys[1])]
    report = verify_export(
        paths.jsonl, pubkey=chain.keys / "audit-public.pem", witness_keys=keys, min_witnesses=1
    )
    assert report.exit_code == 1 and "no Merkle checkpoint" in str(report.finding)
    with pytest.raises(ConfigError, match="more witnesses than"):
        verify_export(
            paths.jsonl, pubkey=chain.keys / "audit-public.pem", witness_keys=keys, min_witnesses=2
        )


def test_the_client_learns_the_witness_size_and_raises_the_alarm_on_a_shrunk_log(
    chain: Chain, witness_keys: tuple[str, str], witness_url: str, tmp_path: Path
) -> None:
    chain.record(12)
    counts = Counts()
    first = _client(chain, witness_keys[1], witness_url, counts)
    assert first.send(_latest(chain))[0].status == "cosigned"
    # a fresh client (a restarted relay) does not know what the witness holds: 409, retry
    chain.record(3)
    again = _client(chain, witness_keys[1], witness_url, counts)
    assert again.send(_latest(chain))[0].status == "cosigned"
    assert again.sizes[NAME] == 15
    # a log that lost records (restored from an old copy) is refused: the witness saw more
    restored = tmp_path / "restored"
    restored.mkdir()
    for name in ("identities.toml", "note-private.key", "note-public.vkey"):
        (restored / name).write_bytes((chain.workdir / name).read_bytes())
    other = Chain(settings.make_engine(f"sqlite:///{restored / 'outbox.db'}"), restored, chain.keys)
    other.record(4)
    shrunk = _client(other, witness_keys[1], witness_url, counts)
    outcome = shrunk.send(_latest(other))[0]
    assert outcome.status == "refused" and "shrank" in outcome.detail
    assert counts.seen[-1] == ("refused", NAME)


def test_an_unreachable_or_lying_witness_is_not_a_cosignature(
    chain: Chain, witness_keys: tuple[str, str], tmp_path: Path
) -> None:
    chain.record(6)
    counts = Counts()
    dead = _client(chain, witness_keys[1], f"http://127.0.0.1:{free_port()}", counts)
    assert dead.send(_latest(chain))[0].status == "unreachable"
    assert counts.seen == [("unreachable", NAME)]
    # a server that answers with another key's cosignature under the witness's name
    impostor_key = generate_witness_key(NAME)[0]
    impostor = _serve(chain, impostor_key, tmp_path)
    url = next(impostor)
    lied = _client(chain, witness_keys[1], url, counts).send(_latest(chain))[0]
    assert lied.status == "refused" and "no cosignature by its key" in lied.detail
    assert (
        CosignatureStore(open_store(chain.log_url, chain.chain).engine, chain.chain).lines(
            _latest(chain)
        )
        == []
    )
    next(impostor, None)


def test_witness_settings_are_checked(chain: Chain, witness_keys: tuple[str, str]) -> None:
    for text, words in [
        ("not-a-key http://x", "witness key looks like"),
        (f"{witness_keys[1]}", "'VKEY URL'"),
        (f"{witness_keys[1]} ftp://x", "'VKEY URL'"),
        (f"{witness_keys[1]} http://a, {witness_keys[1]} http://b", "named twice"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_witnesses(text)
    assert parse_witnesses("") == []
    bare = chain.workdir / "no-note-key"
    bare.mkdir()
    done = run_cli(
        "relay",
        "--once",
        cwd=bare,
        env={
            "FLAGTRAIL_WITNESSES": f"{witness_keys[1]} http://127.0.0.1:9",
            "FLAGTRAIL_NOTE_KEY_PATH": "",
            "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{bare / 'outbox.db'}",
            "FLAGTRAIL_LOG_URL": f"sqlite:///{bare / 'log.db'}",
        },
    )
    assert done.returncode == 2 and "signs no checkpoints" in done.stderr, done.stderr
    bad = run_cli("verify", "x.jsonl", "--witness-key", "nope", cwd=chain.workdir)
    assert bad.returncode == 2 and "witness key looks like" in bad.stderr
    assert date.today()  # the fixtures' windows are fixed dates (tests.test_merkle)
