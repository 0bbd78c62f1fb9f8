"""The witness's add-checkpoint rules (C2SP tlog-witness), apart from HTTP.

Request body: ``old <size>``, up to 63 base64 consistency-proof lines, a blank line,
then the checkpoint as a signed note. The witness cosigns only a checkpoint that is
signed by a key it trusts for that origin and that extends, by a valid RFC 6962
consistency proof, the last checkpoint it cosigned for that origin (or repeats its
size and root: a heartbeat). Answers, per the spec: 200 with cosignature lines; 400
malformed; 403 no trusted log signature; 404 unknown origin; 409 (with the witness's
size, ``text/x.tlog.size``) when ``old`` is not what it cosigned last or a same-size
root differs; 422 when the proof does not verify.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from producers.errors import EvidenceError
from relay.proofs.checkpoint import Checkpoint, parse_checkpoint
from relay.proofs.merkle import HASH_SIZE, verify_consistency
from relay.proofs.note import Verifier, open_note, split_note
from relay.witness.cosignature import Cosigner
from relay.witness.state import WitnessState

log = structlog.get_logger("flagtrail.witness")

MAX_PROOF_LINES = 63
MAX_BODY = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(rb"old (0|[1-9][0-9]{0,18})")
_MAX_SIZE = (1 << 63) - 1  # what the state's INTEGER column holds


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def _text(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode())


class Refused(Exception):
    def __init__(self, answer: Answer, logged: bool = False) -> None:
        super().__init__(answer.body.decode(errors="replace").strip())
        self.answer = answer
        self.logged = logged  # a log-signed request worth keeping as evidence


def parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """(old size, proof hashes, checkpoint note) or Refused(400)."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise Refused(_text(400, "the request has no blank line before the checkpoint"))
    lines = head.split(b"\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise Refused(_text(400, "the first line must be 'old <size>' in plain decimal"))
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refused(_text(400, f"more than {MAX_PROOF_LINES} consistency proof lines"))
    proof = []
    for line in lines[1:]:
        try:
            node = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            node = b""
        if len(node) != HASH_SIZE or base64.b64encode(node) != line:
            raise Refused(_text(400, "a consistency proof line is not one base64 SHA-256 hash"))
        proof.append(node)
    return int(match.group(1)), proof, note


class Witness:
    def __init__(
        self,
        cosigner: Cosigner,
        logs: Mapping[str, Sequence[Verifier]],
        state: WitnessState,
    ) -> None:
        self.cosigner = cosigner
        self.logs = dict(logs)
        self.state = state

    def add_checkpoint(self, body: bytes) -> Answer:
        origin = "?"
        try:
            if len(body) > MAX_BODY:
                raise Refused(_text(413, "the request is too large"))
            old, proof, note = parse_request(body)
            checkpoint = self._open(note)
            origin = checkpoint.origin
            line = self._cosign(old, proof, note, checkpoint)
        except Refused as refused:
            reason = refused.answer.body.decode(errors="replace").strip()
            log.warning(
                "witness.refused", origin=origin, status=refused.answer.status, reason=reason
            )
            if refused.logged:
                text = split_note(body.partition(b"\n\n")[2])[0]
                self.state.note_refusal(origin, refused.answer.status, reason, body, text)
            return refused.answer
        log.info("witness.cosigned", origin=origin, size=checkpoint.size)
        return Answer(200, line)

    def _open(self, note: bytes) -> Checkpoint:
        try:
            text, _ = split_note(note)
            checkpoint = parse_checkpoint(text)
        except EvidenceError as exc:
            raise Refused(_text(400, f"the checkpoint is malformed: {exc}")) from None
        trusted = self.logs.get(checkpoint.origin)
        if trusted is None:
            raise Refused(_text(404, f"unknown log origin {checkpoint.origin!r}"))
        try:
            open_note(note, trusted)
        except EvidenceError as exc:
            raise Refused(_text(403, f"no valid signature by the log's key: {exc}")) from None
        if checkpoint.size > _MAX_SIZE:
            raise Refused(_text(400, "the tree size is beyond what this witness records"))
        return checkpoint

    def _cosign(self, old: int, proof: list[bytes], note: bytes, cp: Checkpoint) -> bytes:
        if old > cp.size:
            raise Refused(_text(400, f"old size {old} is larger than the checkpoint's {cp.size}"))
        with self.state.transaction() as tx:
            latest = tx.latest(cp.origin)
            size, root = (latest.size, latest.root_hash) if latest else (0, None)
            if old != size:
                raise Refused(Answer(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE))
            if old == cp.size and root is not None and root != cp.root_hash:
                raise Refused(
                    _text(409, f"a different root hash for the cosigned size {size}"),
                    logged=True,
                )
            if old != cp.size:
                try:
                    verify_consistency(old, cp.size, root or b"", cp.root_hash, proof)
                except EvidenceError as exc:
                    raise Refused(
                        _text(422, f"the consistency proof does not verify: {exc}"), logged=True
                    ) from None
            tx.replace(cp.origin, cp.size, cp.root_hash, note)  # committed before we answer
        return self.cosigner.cosign(cp.text()).line().encode()
