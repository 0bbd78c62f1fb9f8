"""Attacker pass, round 2: lies that made `flagtrail verify` exit 0 before their fix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sqlalchemy import Engine

from relay.proofs.checkpoint import parse_checkpoint
from relay.proofs.note import sign_note, split_note
from relay.proofs.package import parse_proof_file
from relay.tree import load_note_signer
from relay.verify import verify_export
from relay.witness.cosignature import generate_witness_key, parse_witness_skey, parse_witness_vkey
from tests.test_merkle import DAY1, Chain, fail_reason, resign


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
