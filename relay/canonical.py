"""The hash-chain contract, byte-exact with the seed's verifier.

payload = json.dumps(record_without_hash_and_prev_hash, sort_keys=True, separators=(",", ":"))
hash    = sha256(f"{prev_hash}:{payload}".encode()).hexdigest()

Each log entry and export line is framed as
``{"prev_hash":"<64 hex>",<payload members>,"hash":"<64 hex>"}``: plain JSON,
so the seed's snippet loads it, pops both hashes, re-encodes the rest and gets
the same payload. Readers derive the payload the seed's way from any layout
(``fast_parts``, exact or declining, then ``seed_parts``), so an export
re-laid out by another tool verifies as fast as flagtrail's own.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Union

import msgspec
import orjson

from producers.events import canonical_json

GENESIS = "0" * 64


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


# Where orjson's bytes and json.dumps' bytes can differ for the same value, and
# what the fast path does about it (each case has a test in tests/test_canonical.py
# or tests/test_canonical_exact.py):
# - orjson reads an integer beyond 64 bits as a float, which it writes with an
#   exponent ("1e+20"); -> any exponent in the output declines.
# - floats below 1e-4: orjson 0.00001 / 1e-7, json 1e-05 / 1e-07; -> declines.
#   Every other finite double is written alike (shortest repr, checked over
#   300,000 random doubles and by the property tests).
# - DEL: json escapes it (\u007f), orjson writes it raw; -> rewritten.
# - non-ASCII: json escapes (ensure_ascii), orjson writes UTF-8; -> rewritten.
# - lone surrogates, NaN, Infinity, 1e400: orjson refuses to read them -> json path.
# - nesting: orjson refuses to write more than 254 levels -> json path.
# - duplicate keys: both keep the last value; hash/prev_hash are popped after that.
EXPONENT_OR_TINY = re.compile(rb"[:\[,]-?(?:0\.0000|\d+(?:\.\d+)?e)")
_NEGATIVE_EXPONENT = re.compile(rb"-(?<=\de-)").search


NO_FLOAT_DEPTH = 8  # deeper records take the float path (orjson, up to 254 levels);
# msgspec builds a decoder for this type in time exponential in the depth (8: 4 ms)


def _json_type(depth: int, *scalars: Any) -> Any:
    """A JSON value of the given scalar types, at most ``depth`` containers deep."""
    value: Any = Union[scalars]  # noqa: UP007 - built at run time from a tuple
    for _ in range(depth):
        value = Union[(*scalars, list[value], dict[str, value])]
    return value


# msgspec (C) reads and writes JSON as fast as orjson; typed, it refuses floats,
# which is how fast_parts learns that a record has none
_NO_FLOAT_RECORD = msgspec.json.Decoder(
    dict[str, _json_type(NO_FLOAT_DEPTH, str, int, bool, None)]
).decode
_SORTED_ENCODE = msgspec.json.Encoder(order="sorted").encode
# strict_record's: floats too (exact, as json reads them)
_STRICT_RECORD = msgspec.json.Decoder(
    dict[str, _json_type(NO_FLOAT_DEPTH, str, int, float, bool, None)]
).decode


class LineError(ValueError):
    """A line that the seed's verifier could not even hash."""


def fast_parts(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(prev_hash, payload, hash) of one line in any layout, exactly the seed's, or None
    (see ``fast_record``, which also hands back the record it decoded)."""
    parts = fast_record(line)
    return None if parts is None else parts[:3]


def fast_record(
    line: bytes,
    _decode: Any = _NO_FLOAT_RECORD,
    _encode: Any = _SORTED_ENCODE,
    _dumps: Any = orjson.dumps,
    _sort: int = orjson.OPT_SORT_KEYS,
    _beyond_64_bits: type[Exception] = orjson.JSONEncodeError,
    _not_without_floats: type[Exception] = msgspec.ValidationError,
    _errors: tuple[type[Exception], ...] = (
        msgspec.DecodeError,
        UnicodeDecodeError,
        RecursionError,
        KeyError,
    ),
    _str: type = str,
) -> tuple[bytes, bytes, bytes, dict[str, Any]] | None:
    """(prev_hash, payload, hash, record) of one line in any layout, exactly the seed's,
    or None; ``record`` is the line's object without its two hashes, as decoded.

    The seed pops both hashes from json.loads(line) and re-encodes the rest with
    json.dumps(sort_keys=True, separators=(",", ":")). This does the same in C,
    several times faster: msgspec reads the line as an object of strings,
    integers (exact at any size), booleans, nulls, lists and objects, at most
    NO_FLOAT_DEPTH deep; orjson writes it with sorted keys (msgspec when an
    integer is beyond 64 bits, which orjson refuses); json's escapes are then
    applied (non-ASCII, DEL). A record with a float (or deeper) goes to orjson
    with the float checks (``_float_parts``). Where neither can be sure it
    returns None and the caller takes the seed's own path (``seed_parts``).
    The line must be one line as the seed reads it (``split_lines``): no CR
    inside. One function, no helpers on the common path: it runs per record.
    """
    try:
        record = _decode(line)  # an object by its type
        digest = record.pop("hash")
        prev = record.pop("prev_hash")
    except _not_without_floats:
        return _float_record(line)
    except _errors:
        return None
    if type(digest) is not _str or type(prev) is not _str:
        return None
    try:
        payload = _dumps(record, option=_sort)  # orjson writes faster than msgspec
    except _beyond_64_bits:
        payload = _encode(record)  # msgspec writes any integer
    if not payload.isascii():
        payload = ascii_escape(payload)
    if payload.find(b"\x7f") >= 0:  # only inside strings: msgspec escapes nothing else raw
        payload = payload.replace(b"\x7f", b"\\u007f")
    return prev.encode(), payload, digest.encode(), record


def _float_record(
    line: bytes,
    _loads: Any = orjson.loads,
    _dumps: Any = orjson.dumps,
    _sort: int = orjson.OPT_SORT_KEYS,
    _errors: tuple[type[Exception], ...] = (
        orjson.JSONDecodeError,
        orjson.JSONEncodeError,
        KeyError,
        AttributeError,
        TypeError,
    ),
    _str: type = str,
    _negative_exponent: Any = _NEGATIVE_EXPONENT,
) -> tuple[bytes, bytes, bytes, dict[str, Any]] | None:
    """fast_record for a record with floats: orjson, declining where it and json differ.

    orjson reads an integer beyond 64 bits as a float and writes exponents and
    tiny floats unlike json; a scan of the output finds either (see above).
    """
    try:
        record = _loads(line)
        digest = record.pop("hash")  # a list raises TypeError, a scalar AttributeError
        prev = record.pop("prev_hash")
        payload = _dumps(record, option=_sort)
    except _errors:
        return None
    if type(digest) is not _str or type(prev) is not _str:
        return None
    if not payload.isascii():
        payload = ascii_escape(payload)
    if payload.find(b"\x7f") >= 0:  # only inside strings: orjson escapes nothing else raw
        payload = payload.replace(b"\x7f", b"\\u007f")
    # exponents contain e+ or e-, tiny decimals .0000: cheap scans, then the exact regex
    if (
        payload.find(b"+") >= 0 or payload.find(b".0000") >= 0 or _negative_exponent(payload)
    ) and EXPONENT_OR_TINY.search(payload):
        return None
    return prev.encode(), payload, digest.encode(), record


def ascii_escape(utf8: bytes) -> bytes:
    """msgspec's or orjson's UTF-8 JSON with non-ASCII escaped as json.dumps does.

    backslashreplace (C speed) writes \\xe9, \\u2014 and \\U0001f680; json writes
    \\u00e9, \\u2014 and a surrogate pair. The two rewrites are exact when the
    encoder wrote no escaped backslash: every other backslash it writes is
    followed by one of "bfnrtu, so each \\x and \\U comes from backslashreplace.
    With an escaped backslash (which may precede an x or U) the exact handler runs.
    """
    text = utf8.decode()
    escaped = text.encode("ascii", "backslashreplace")  # \u2014 as json writes it: common
    latin1, astral = escaped.find(b"\\x") >= 0, escaped.find(b"\\U") >= 0
    if not (latin1 or astral):
        return escaped
    if b"\\\\" in utf8:
        return text.encode("ascii", _JSON_ESCAPES)
    if latin1:
        escaped = escaped.replace(b"\\x", b"\\u00")
    if astral:
        escaped = _ASTRAL.sub(_surrogate_pair, escaped)
    return escaped


def _surrogate_pair(match: re.Match[bytes]) -> bytes:
    code = int(match.group(1), 16) - 0x10000
    return b"\\u%04x\\u%04x" % (0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))


_ASTRAL = re.compile(rb"\\U([0-9a-f]{8})")


def _json_escape_error(error: UnicodeError) -> tuple[str, int]:
    """Encode error handler: json's \\uXXXX (surrogate pairs above U+FFFF)."""
    assert isinstance(error, UnicodeEncodeError)
    escaped = []
    for char in error.object[error.start : error.end]:
        code = ord(char)
        if code > 0xFFFF:
            code -= 0x10000
            escaped.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
        else:
            escaped.append(f"\\u{code:04x}")
    return "".join(escaped), error.end


_JSON_ESCAPES = "flagtrail.json_ascii"
codecs.register_error(_JSON_ESCAPES, _json_escape_error)


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a JSONL file as the seed's snippet reads them (text mode).

    Python's text mode ends a line at \\n, \\r\\n and a lone \\r, so a CR inside
    a line makes two lines for the seed (JSON allows CR as whitespace, so
    orjson and json.loads alone would read one). A final empty line is dropped.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def line_parts(line: bytes) -> tuple[str, bytes, str]:
    """(prev_hash, payload, hash) of a line exactly as the seed's verifier derives them.

    Any run of line ends after the object is dropped (blank lines are the file
    reader's business, ``split_lines``); a CR left inside is refused by seed_parts.
    """
    line = line.rstrip(b"\r\n")
    if b"\r" not in line:
        fast = fast_parts(line)
        if fast is not None:
            return fast[0].decode(), fast[1], fast[2].decode()
    return seed_parts(line)


def seed_parts(line: bytes) -> tuple[str, bytes, str]:
    """The seed's own steps (json.loads, pop, json.dumps) on one line it reads as text."""
    if b"\r" in (line[:-1] if line.endswith(b"\r") else line):  # \r\n ends one line
        raise LineError("a carriage return inside the line (the seed's verifier reads two lines)")
    try:
        record = json.loads(line.decode("utf-8"))  # the seed opens the file as UTF-8 text
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LineError(
            f"not valid JSON ({exc.__class__.__name__}: truncated or edited line)"
        ) from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    digest, prev = record.pop("hash", None), record.pop("prev_hash", None)
    if not isinstance(digest, str) or not isinstance(prev, str):
        raise LineError("hash or prev_hash is missing")
    try:
        return prev, canonical_json(record).encode(), digest
    except (RecursionError, UnicodeEncodeError):
        raise LineError("nested too deeply to re-encode") from None


def payload_action(payload: bytes) -> object:
    return json.loads(payload).get("action")


# The fields a reader relies on, with the types it may assume once strict_record
# passed: sequence int (not bool), timestamp_utc str, action str, soc2_controls a
# list of str, meta an object or null. Absent is fine; null only for meta.
_NO_CONTROLS: list[str] = []  # default for an absent field; never changed
MAX_DEPTH = 254  # as orjson; json.loads fails near 1000 (RecursionError)


def strict_record(
    line: bytes | str,
    _decode: Any = _STRICT_RECORD,
    _errors: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeError, RecursionError),
) -> dict[str, Any]:
    """The one strict decoder every reader uses (export, gap scan, verify, summary).

    Returns what json.loads returns for the line (values, types and key order),
    or raises LineError: a line a producer or an attacker wrote can only raise
    here, never crash a reader later. It must be one JSON object, without NaN,
    Infinity, lone surrogates or nesting deeper than MAX_DEPTH, whose
    reader-facing fields have their types.

    msgspec (C) reads integers of any size exactly (orjson would read those
    beyond 64 bits as floats) and refuses what json would refuse or read
    loosely; what it refuses, or what is nested deeper than NO_FLOAT_DEPTH,
    json reads (slower) and the checks below judge.
    """
    try:
        record = _decode(line)
    except _errors:
        record = _exact_record(line)
    if type(record) is not dict:
        raise LineError("not a JSON object")
    get = record.get
    if type(get("sequence", 0)) is not int:
        raise LineError("field 'sequence' has the wrong type")
    if type(get("timestamp_utc", "")) is not str:
        raise LineError("field 'timestamp_utc' has the wrong type")
    if type(get("action", "")) is not str:
        raise LineError("field 'action' has the wrong type")
    meta = get("meta")
    if meta is not None and type(meta) is not dict:
        raise LineError("field 'meta' has the wrong type")
    controls = get("soc2_controls", _NO_CONTROLS)
    if type(controls) is not list:
        raise LineError("field 'soc2_controls' has the wrong type")
    for control in controls:
        if type(control) is not str:
            raise LineError("field 'soc2_controls' must list strings")
    return record


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_record(line: bytes | str) -> Any:
    """json.loads, refusing what strict_record refuses; slow, for the rare lines orjson can't."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        record = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise LineError(f"not valid JSON ({exc.__class__.__name__})") from None
    problem = _unreadable(record)
    if problem:
        raise LineError(problem)
    return record


def _unreadable(value: Any) -> str | None:
    """Why a decoded value is unfit for readers (lone surrogate, inf, depth), or None."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return "contains a lone surrogate (not valid Unicode)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "contains a number too large for a double"
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                item = item.values()
            stack.extend((child, depth + 1) for child in item)
    return None
