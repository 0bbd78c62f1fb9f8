"""The shared proof formats: RFC 6962 trees against the RFC's own recursion, and
C2SP signed notes and checkpoints against the lies an attacker could tell."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from producers.errors import ConfigError, EvidenceError
from relay.proofs.checkpoint import Checkpoint, parse_checkpoint
from relay.proofs.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_proof,
    tree_hash,
    verify_consistency,
    verify_inclusion,
    verify_range,
)
from relay.proofs.note import (
    Ed25519Verifier,
    Signature,
    generate_signer_key,
    key_id,
    open_note,
    parse_signer_key,
    parse_vkey,
    sign_note,
)


def mth(data: list[bytes]) -> bytes:
    """RFC 6962 section 2.1's MTH, written as the RFC states it."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return leaf_hash(data[0])
    k = 1 << ((len(data) - 1).bit_length() - 1)
    return node_hash(mth(data[:k]), mth(data[k:]))


def build(count: int) -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    data = [f'{{"sequence":{i}}}'.encode() for i in range(count)]
    border, store = CompactRange(), {}
    for d in data:
        for level, index, h in border.append(leaf_hash(d)):
            store[(level, index)] = h
    return data, store


def test_tree_and_every_proof_agree_with_the_rfc_for_small_trees() -> None:
    data, store = build(40)
    read = lambda level, index: store[(level, index)]  # noqa: E731
    for n in range(1, 41):
        root = mth(data[:n])
        assert tree_hash(read, n) == root
        assert CompactRange.from_nodes(n, read).root() == root
        for m in range(n):
            verify_inclusion(m, n, leaf_hash(data[m]), inclusion_proof(read, m, n), root)
        for m in range(n + 1):
            verify_consistency(m, n, mth(data[:m]), root, consistency_proof(read, m, n))
        for b in range(0, n + 1, 3):
            for e in range(b, n + 1, 2):
                leaves = [leaf_hash(x) for x in data[b:e]]
                verify_range(b, e, n, leaves, range_proof(read, b, e, n), root)


def test_proofs_for_another_tree_size_or_leaf_fail() -> None:
    data, store = build(21)
    read = lambda level, index: store[(level, index)]  # noqa: E731
    root = mth(data)
    proof = inclusion_proof(read, 5, 21)
    with pytest.raises(EvidenceError):
        verify_inclusion(5, 20, leaf_hash(data[5]), proof, mth(data[:20]))
    with pytest.raises(EvidenceError):
        verify_inclusion(6, 21, leaf_hash(data[5]), proof, root)
    with pytest.raises(EvidenceError):
        verify_inclusion(5, 21, leaf_hash(b"forged"), proof, root)
    with pytest.raises(EvidenceError):
        verify_inclusion(5, 21, leaf_hash(data[5]), [*proof, proof[0]], root)
    cons = consistency_proof(read, 7, 21)
    with pytest.raises(EvidenceError):
        verify_consistency(8, 21, mth(data[:8]), root, cons)
    with pytest.raises(EvidenceError):  # a rewritten old tree
        verify_consistency(7, 21, mth([b"x", *data[1:7]]), root, cons)
    with pytest.raises(EvidenceError, match="shrank"):
        verify_consistency(21, 7, root, mth(data[:7]), cons)
    rng = range_proof(read, 4, 9, 21)
    leaves = [leaf_hash(x) for x in data[4:9]]
    with pytest.raises(EvidenceError):  # a tree size smaller than the window
        verify_range(4, 9, 8, leaves, rng, mth(data[:8]))
    with pytest.raises(EvidenceError):  # one record of the window changed
        verify_range(4, 9, 21, [leaves[0], leaf_hash(b"x"), *leaves[2:]], rng, root)
    with pytest.raises(EvidenceError):  # a record dropped from the window
        verify_range(4, 9, 21, leaves[:-1], rng, root)


def test_signed_note_round_trip_and_go_key_formats() -> None:
    skey, vkey = generate_signer_key("flagtrail.example")
    signer, verifier = parse_signer_key(skey), parse_vkey(vkey)
    assert skey.startswith("PRIVATE+KEY+flagtrail.example+")
    assert signer.verifier() == verifier and verifier.vkey() == vkey
    public = base64.b64decode(vkey.split("+", 2)[2])
    assert public[0] == 1 and len(public) == 33
    expected = struct.unpack(">I", hashlib.sha256(b"flagtrail.example\n" + public).digest()[:4])
    assert verifier.key_id == expected[0] == key_id("flagtrail.example", public)
    text = Checkpoint("flagtrail.example/c", 3, b"\x07" * 32).text()
    note = sign_note(text, [signer])
    assert note.startswith(text + b"\n\xe2\x80\x94 flagtrail.example ")
    opened = open_note(note, [verifier])
    assert opened.text == text and [s.name for s in opened.verified] == ["flagtrail.example"]
    assert parse_checkpoint(opened.text).size == 3


def note_and_key() -> tuple[bytes, bytes, Ed25519Verifier]:
    skey, vkey = generate_signer_key("flagtrail.example")
    text = Checkpoint("flagtrail.example/c", 3, b"\x07" * 32).text()
    return sign_note(text, [parse_signer_key(skey)]), text, parse_vkey(vkey)


def test_a_note_signed_by_another_key_of_the_same_name_is_refused() -> None:
    note, _, _ = note_and_key()
    _, other = generate_signer_key("flagtrail.example")
    with pytest.raises(EvidenceError, match="no signature by a trusted key"):
        open_note(note, [parse_vkey(other)])


def test_a_key_id_collision_cannot_pass_for_the_trusted_key() -> None:
    """An attacker's key that shares name and key ID (2**32 work) is checked with the
    trusted public key, and fails."""
    note, text, trusted = note_and_key()
    evil_skey, _ = generate_signer_key("flagtrail.example")
    evil = parse_signer_key(evil_skey)
    forged = Signature(trusted.name, trusted.key_id, evil.sign(text))
    with pytest.raises(EvidenceError, match="does not verify"):
        open_note(text + b"\n" + forged.line().encode(), [trusted])
    # and a trusted signature beside it does not excuse it
    with pytest.raises(EvidenceError, match="does not verify"):
        open_note(note + forged.line().encode(), [trusted])
    with pytest.raises(ConfigError, match="share the name and key ID"):
        open_note(note, [trusted, Ed25519Verifier(trusted.name, trusted.key_id, b"\0" * 32)])


def test_unknown_signatures_are_set_aside_but_one_trusted_must_verify() -> None:
    note, text, trusted = note_and_key()
    other_skey, _ = generate_signer_key("witness.example")
    extra = sign_note(text, [parse_signer_key(other_skey)]).split(b"\n\n")[1]
    opened = open_note(note + extra, [trusted])
    assert [s.name for s in opened.unverified] == ["witness.example"]
    with pytest.raises(EvidenceError, match="no signature by a trusted key"):
        open_note(text + b"\n" + extra, [trusted])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace(b"\n", b"\r\n"),  # CRLF line ends
        lambda n: n + b"\xe2\x80\x94 x\n",  # a signature line without a signature
        lambda n: n + b"extra line\n",  # a line that is no signature
        lambda n: n.replace(b"\n\n", b"\n"),  # no blank line
        lambda n: n[:-1],  # no final newline
        lambda n: n.replace(b"\xe2\x80\x94", b"-"),  # a hyphen for the em dash
    ],
)
def test_malformed_notes_are_refused(mangle) -> None:
    note, _, trusted = note_and_key()
    with pytest.raises(EvidenceError):
        open_note(mangle(note), [trusted])


def test_checkpoint_text_is_strict_and_extension_lines_are_reported() -> None:
    cp = Checkpoint("flagtrail.example/c", 10, b"\x01" * 32, ("ext one",))
    assert parse_checkpoint(cp.text()) == cp
    root = base64.b64encode(b"\x01" * 32)
    for bad in (
        b"o\n010\n" + root + b"\n",  # a leading zero
        b"o\n+1\n" + root + b"\n",
        b"o\n1\n" + base64.b64encode(b"\x01" * 31) + b"\n",
        b"o\n1\n" + root + b"\n\n",  # an empty extension line
        b"o\n1\n",
        b"o\r\n1\r\n" + root + b"\r\n",
    ):
        with pytest.raises(EvidenceError):
            parse_checkpoint(bad)


def test_bad_key_texts_are_one_sentence_config_errors() -> None:
    _, vkey = generate_signer_key("a")
    name, kid, blob = vkey.split("+", 2)
    for bad in ("nonsense", f"{name}+{kid}+!!!", f"{name}+00000000+{blob}", f"b+{kid}+{blob}"):
        with pytest.raises(ConfigError):
            parse_vkey(bad)
    with pytest.raises(ConfigError):
        parse_signer_key("PRIVATE+KEY+a+00000000+AAAA")
    with pytest.raises(ConfigError):
        generate_signer_key("has space")
