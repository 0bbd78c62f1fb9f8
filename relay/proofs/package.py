"""The evidence package's proof file ``<stem>.proof.json`` (format, not policy).

Canonical JSON (producers.events.canonical_json), hashes in standard base64::

    {"format": "flagtrail-merkle-proof/v1",
     "checkpoint": "<signed note: the checkpoint at or after the window's head>",
     "window": {"begin": B, "end": E},          # leaves [B, E) = sequences B+1 .. E
     "range_proof": [...],                        # relay.proofs.merkle.range_proof
     "inclusion": [{"index": i, "proof": [...]}], # the window's first and last leaves
     "previous": null | {"checkpoint": "<note>", "consistency_proof": [...]}}

A leaf is the record's line in the package's .jsonl, without its newline. The
manifest names the file and binds its SHA-256; tests/go/tlogcheck reads it too.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from producers.errors import EvidenceError
from producers.events import canonical_json

PROOF_FORMAT = "flagtrail-merkle-proof/v1"


@dataclass(frozen=True)
class Inclusion:
    index: int
    proof: list[bytes]


@dataclass(frozen=True)
class Previous:
    checkpoint: bytes  # the signed note
    consistency_proof: list[bytes]


@dataclass(frozen=True)
class ProofFile:
    checkpoint: bytes
    begin: int
    end: int
    range_proof: list[bytes]
    inclusion: list[Inclusion]
    previous: Previous | None

    def to_json(self) -> bytes:
        def b64(hashes: list[bytes]) -> list[str]:
            return [base64.b64encode(h).decode() for h in hashes]

        document: dict[str, Any] = {
            "format": PROOF_FORMAT,
            "checkpoint": self.checkpoint.decode(),
            "window": {"begin": self.begin, "end": self.end},
            "range_proof": b64(self.range_proof),
            "inclusion": [{"index": i.index, "proof": b64(i.proof)} for i in self.inclusion],
            "previous": None
            if self.previous is None
            else {
                "checkpoint": self.previous.checkpoint.decode(),
                "consistency_proof": b64(self.previous.consistency_proof),
            },
        }
        return canonical_json(document).encode()


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise EvidenceError(f"the proof file's {what} is not a whole number")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EvidenceError(f"the proof file's {what} is not text")
    return value


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 256:
        raise EvidenceError(f"the proof file's {what} is not a list of hashes")
    try:
        return [base64.b64decode(_str(h, what).encode("ascii"), validate=True) for h in value]
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise EvidenceError(f"the proof file's {what} holds a hash that is not base64") from None


def parse_proof_file(data: bytes) -> ProofFile:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EvidenceError("the proof file is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != PROOF_FORMAT:
        raise EvidenceError(f"the proof file is not a {PROOF_FORMAT} document")
    window = document.get("window")
    if not isinstance(window, dict):
        raise EvidenceError("the proof file names no window")
    inclusion = document.get("inclusion")
    if not isinstance(inclusion, list) or not all(isinstance(i, dict) for i in inclusion):
        raise EvidenceError("the proof file's inclusion proofs are not a list")
    previous = document.get("previous")
    if previous is not None and not isinstance(previous, dict):
        raise EvidenceError("the proof file's previous checkpoint is malformed")
    return ProofFile(
        checkpoint=_str(document.get("checkpoint"), "checkpoint").encode(),
        begin=_int(window.get("begin"), "window begin"),
        end=_int(window.get("end"), "window end"),
        range_proof=_hashes(document.get("range_proof"), "range proof"),
        inclusion=[
            Inclusion(_int(i.get("index"), "inclusion index"), _hashes(i.get("proof"), "proof"))
            for i in inclusion
        ],
        previous=None
        if previous is None
        else Previous(
            _str(previous.get("checkpoint"), "previous checkpoint").encode(),
            _hashes(previous.get("consistency_proof"), "consistency proof"),
        ),
    )
