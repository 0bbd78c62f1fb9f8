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
import re
from collections.abc import Mapping
from typing import Any

import orjson

from producers.events import canonical_json

GENESIS = "0" * 64


_PREFIX = b'{"prev_hash":"'
_MIDDLE = b'",'
_SUFFIX_HEAD = b',"hash":"'
_SUFFIX_TAIL = b'"}'
# {"prev_hash":" + 64 hex + ",
PAYLOAD_START = len(_PREFIX) + 64 + len(_MIDDLE)
# ,"hash":" + 64 hex + "}
TRAILER_LEN = len(_SUFFIX_HEAD) + 64 + len(_SUFFIX_TAIL)
HASHED_FIELDS_EXCLUDED = ("hash", "prev_hash")


def canonical_payload(record: Mapping[str, Any]) -> str:
    """The seed's canonical JSON of a record without its two hash fields."""
    if "hash" in record or "prev_hash" in record:
        record = {k: v for k, v in record.items() if k not in HASHED_FIELDS_EXCLUDED}
    return canonical_json(record)


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


# orjson and json write a float differently only in two shapes (measured over
# 1.3M doubles): a one-digit negative exponent (1e-9 / 1e-09) and numbers below
# 1e-4 (0.00001 / 1e-05). The pre-check finds either shape anywhere (digits
# zeroed, two substring scans); the regex then confirms a number token.
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_FLOAT_NOT_LIKE_JSON = re.compile(rb"[:\[,]-?(?:\d+(?:\.\d+)?e[-+]|0\.0000)")
_FRAME_MIN = PAYLOAD_START + TRAILER_LEN
# fast_parts slices with these numbers as literals (it runs once per record)
assert (len(_PREFIX), PAYLOAD_START, TRAILER_LEN) == (14, 80, 75)


class LineError(ValueError):
    """A line that the seed's verifier could not even hash."""


def fast_parts(
    line: bytes,
    _prefix: bytes = _PREFIX,
    _loads: Any = orjson.loads,
    _dumps: Any = orjson.dumps,
    _sort: int = orjson.OPT_SORT_KEYS,
    _zero: bytes = _ZERO_DIGITS,
) -> tuple[bytes, bytes, bytes] | None:
    """(prev_hash, payload, hash) straight from a line's bytes, or None.

    None means: not our framing, or not provably canonical; the caller then
    takes the seed's exact path (``seed_parts``). orjson decodes and re-encodes
    several times faster than json, and its bytes are compared with the
    payload's; the only case where orjson's bytes could equal a non-canonical
    payload is a float written in orjson's own style, which the pre-check sends
    to the exact path. One function, no helpers: this runs for every record.
    """
    if (
        len(line) <= _FRAME_MIN
        or not line.startswith(_prefix)  # startswith at offsets: no slice copies
        or not line.startswith(b'",', 78)
        or not line.startswith(b',"hash":"', len(line) - 75)
        or not line.endswith(b'"}')
    ):
        return None
    payload = b"{" + line[80:-75] + b"}"
    # json escapes DEL (\\u007f); orjson writes it raw (a one-byte memchr scan)
    if not payload.isascii() or b"\x7f" in payload:
        return None
    if (b"0e-" in payload.translate(_zero) or b"0.0000" in payload) and _FLOAT_NOT_LIKE_JSON.search(
        payload
    ):
        return None
    try:
        record = _loads(payload)
        encoded = _dumps(record, option=_sort)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        return None
    if not encoded.isascii():
        encoded = _ascii_escape(encoded)
    if encoded != payload or "hash" in record or "prev_hash" in record:
        return None
    return line[14:78], payload, line[-66:-2]


def _ascii_escape(utf8: bytes) -> bytes:
    """orjson's UTF-8 output with non-ASCII escaped as json.dumps(ensure_ascii=True) does.

    backslashreplace (C speed) writes \\xe9, \\u2014 and \\U0001f680; json writes
    \\u00e9, \\u2014 and a surrogate pair. A mistaken rewrite (say of an escaped
    backslash followed by x) only makes the bytes differ, which sends the record
    to the exact path; it can never make a non-canonical payload look canonical.
    """
    escaped = utf8.decode().encode("ascii", "backslashreplace").replace(b"\\x", b"\\u00")
    if b"\\U" in escaped:
        escaped = _ASTRAL.sub(_surrogate_pair, escaped)
    return escaped


def _surrogate_pair(match: re.Match[bytes]) -> bytes:
    code = int(match.group(1), 16) - 0x10000
    return b"\\u%04x\\u%04x" % (0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))


_ASTRAL = re.compile(rb"\\U([0-9a-f]{8})")


def line_parts(line: bytes) -> tuple[str, bytes, str]:
    """(prev_hash, payload, hash) of a line exactly as the seed's verifier derives them."""
    line = line.rstrip(b"\r\n")
    fast = fast_parts(line)
    if fast is not None:
        return fast[0].decode(), fast[1], fast[2].decode()
    return seed_parts(line)


def seed_parts(line: bytes) -> tuple[str, bytes, str]:
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
    return prev, canonical_json(record).encode(), digest


def payload_action(payload: bytes) -> object:
    return json.loads(payload).get("action")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# 19 digits in a row, found as 19 zeros once every digit is zeroed: a fifteenth of
# the cost of the regex \d{19} on a typical record
_LONG_DIGITS = b"0" * 19

# The fields a reader relies on, with the types it may assume once strict_record passed.
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "sequence": int,
    "timestamp_utc": str,
    "action": str,
    "soc2_controls": list,
    "meta": (dict, type(None)),
}


def strict_record(line: bytes | str) -> dict[str, Any]:
    """The one strict decoder every reader uses (export, gap scan, verify, summary).

    A line a producer or an attacker wrote can only raise LineError here, never
    crash a reader later: it must be one JSON object (no NaN, no lone
    surrogates, bounded nesting) whose reader-facing fields have their types.
    """
    try:
        data = line if isinstance(line, bytes) else line.encode()
        if _LONG_DIGITS in data.translate(_ZERO_DIGITS):
            raise orjson.JSONDecodeError("long integer", "", 0)
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson reads integers beyond 64 bits as floats (silently inexact) and
        # refuses some valid JSON: json is exact, only slower
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, UnicodeError, RecursionError) as exc:
            raise LineError(f"not valid JSON ({exc.__class__.__name__})") from None
        if _has_lone_surrogate(record):
            raise LineError("contains a lone surrogate (not valid Unicode)") from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    for name, kind in _RECORD_TYPES.items():
        value = record.get(name)
        if (name in record and not isinstance(value, kind)) or isinstance(value, bool):
            raise LineError(f"field {name!r} has the wrong type")
    controls = record.get("soc2_controls")
    if controls is not None and not all(isinstance(c, str) for c in controls):
        raise LineError("field 'soc2_controls' must list strings")
    return record


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
