"""The hash-chain contract, byte-exact with the seed's verifier.

payload = json.dumps(record_without_hash_and_prev_hash, sort_keys=True, separators=(",", ":"))
hash    = sha256(f"{prev_hash}:{payload}".encode()).hexdigest()

Each log entry and export line is framed as
``{"prev_hash":"<64 hex>",<payload members>,"hash":"<64 hex>"}`` so that a
verifier can take the hashed payload straight from the line's bytes. The line
is still plain JSON: the seed's snippet loads it, pops both hashes, re-encodes
the rest and gets the same payload.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import orjson

GENESIS = "0" * 64

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode

_PREFIX = b'{"prev_hash":"'
_MIDDLE = b'",'
_SUFFIX_HEAD = b',"hash":"'
_SUFFIX_TAIL = b'"}'
# {"prev_hash":" + 64 hex + ",
PAYLOAD_START = len(_PREFIX) + 64 + len(_MIDDLE)
# ,"hash":" + 64 hex + "}
TRAILER_LEN = len(_SUFFIX_HEAD) + 64 + len(_SUFFIX_TAIL)
HASHED_FIELDS_EXCLUDED = ("hash", "prev_hash")
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def canonical_payload(record: Mapping[str, Any]) -> str:
    """The seed's canonical JSON of a record without its two hash fields."""
    if "hash" in record or "prev_hash" in record:
        record = {k: v for k, v in record.items() if k not in HASHED_FIELDS_EXCLUDED}
    return _encode(record)


def chain_hash(prev_hash: str, payload: str) -> str:
    return hashlib.sha256(f"{prev_hash}:{payload}".encode()).hexdigest()


def frame_line(prev_hash: str, payload: str, record_hash: str) -> str:
    """One log entry / export line (without the newline)."""
    return f'{{"prev_hash":"{prev_hash}",{payload[1:-1]},"hash":"{record_hash}"}}'


def seal(record: Mapping[str, Any], prev_hash: str) -> tuple[str, str]:
    """Chain ``record`` after ``prev_hash``; returns (hash, framed line)."""
    payload = canonical_payload(record)
    record_hash = chain_hash(prev_hash, payload)
    return record_hash, frame_line(prev_hash, payload, record_hash)


def split_framed(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(prev_hash, payload, hash) of a line in our framing, or None for any other shape."""
    line = line.rstrip(b"\r\n")
    if (
        len(line) <= PAYLOAD_START + TRAILER_LEN
        or not line.startswith(_PREFIX)
        or line[PAYLOAD_START - 2 : PAYLOAD_START] != _MIDDLE
        or line[-TRAILER_LEN : -TRAILER_LEN + len(_SUFFIX_HEAD)] != _SUFFIX_HEAD
        or not line.endswith(_SUFFIX_TAIL)
    ):
        return None
    prev = line[len(_PREFIX) : len(_PREFIX) + 64]
    digest = line[-TRAILER_LEN + len(_SUFFIX_HEAD) : -len(_SUFFIX_TAIL)]
    payload = b"{" + line[PAYLOAD_START:-TRAILER_LEN] + b"}"
    return prev, payload, digest


_HEX_DIGITS = b"0123456789abcdef"


class LineError(ValueError):
    """A line that the seed's verifier could not even hash."""


def _fast_canonical(payload: bytes) -> bool:
    """True only when ``payload`` is certainly json.dumps' canonical form of itself.

    orjson decodes and re-encodes ~8x faster than json. The two encoders agree
    byte for byte on ASCII text without DEL and on numbers without an exponent,
    so any payload outside that set returns False and the caller takes the
    seed's exact (slower) path instead.
    """
    if not payload.isascii() or b"\x7f" in payload:
        return False
    digits_zeroed = payload.translate(_DIGITS_TO_ZERO)
    if b"0e" in digits_zeroed or b"0E" in digits_zeroed:
        return False
    try:
        record = orjson.loads(payload)
        return (
            "hash" not in record
            and "prev_hash" not in record
            and orjson.dumps(record, option=orjson.OPT_SORT_KEYS) == payload
        )
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        return False


def line_parts(line: bytes) -> tuple[str, bytes, str]:
    """(prev_hash, payload, hash) of a line exactly as the seed's verifier derives them."""
    framed = split_framed(line)
    if (
        framed is not None
        and not framed[0].strip(_HEX_DIGITS)
        and not framed[2].strip(_HEX_DIGITS)
        and _fast_canonical(framed[1])
    ):
        return framed[0].decode(), framed[1], framed[2].decode()
    return _seed_parts(line)


def _seed_parts(line: bytes) -> tuple[str, bytes, str]:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError(
            f"not valid JSON ({exc.__class__.__name__}: truncated or edited line)"
        ) from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    digest, prev = record.pop("hash", None), record.pop("prev_hash", None)
    if not isinstance(digest, str) or not isinstance(prev, str):
        raise LineError("hash or prev_hash is missing")
    return prev, _encode(record).encode(), digest


def payload_action(payload: bytes) -> object:
    return json.loads(payload).get("action")
