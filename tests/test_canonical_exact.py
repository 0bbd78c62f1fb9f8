"""The fast line decoders are exact: the seed's payload byte for byte, or they decline.

`fast_parts` must return exactly what the seed's snippet derives from a line
(json.loads, pop hash and prev_hash, json.dumps sorted and compact) or None, for
lines in any layout: flagtrail's own, json.dumps' defaults with keys in any
order, orjson's, raw text with duplicate keys and odd number spellings.
`strict_record` must return what json.loads returns, or raise LineError.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.canonical import (
    MAX_DEPTH,
    LineError,
    fast_parts,
    frame_line,
    line_parts,
    seed_parts,
    split_lines,
    strict_record,
)

PREV, DIGEST = "ab" * 32, "cd" * 32
TRICKY_TEXT = [
    "\x7f",
    "\\",
    "\\x41",  # a backslash then x: json writes \\x41, must not become \u0041
    "\\U0001f600",
    "\\u00e9",
    "é",
    "🚀",
    "\u2028",
    "\x00",
    "\x1f",
    '"',
    "\ufeff",
    "\uffff",
    "e-7",
    "0.00001",
    "1e+20",
]
texts = (
    st.text(max_size=12)
    | st.sampled_from(TRICKY_TEXT)
    | st.lists(st.sampled_from(TRICKY_TEXT) | st.text(max_size=2), max_size=4).map("".join)
)
# lone surrogates too: json.dumps escapes them (\ud800), the seed reads them back
texts_with_surrogates = texts | st.text(st.characters(categories=["Cs", "Ll"]), max_size=4)
edge_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        1e-4,
        9.999e-5,
        1e-5,
        1e-6,
        1e-7,
        1.5e-10,
        5e-324,
        2.2250738585072014e-308,
        1e15,
        9999999999999998.0,
        1e16,
        1.7976931348623157e308,
        0.1,
        25.5,
        math.inf,
        -math.inf,
        math.nan,
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19])
    | st.floats()
    | edge_floats
    | texts_with_surrogates
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
records = st.dictionaries(texts, values, max_size=8)


def seed_result(text_line: str) -> tuple[str, bytes, str] | None:
    """The seed snippet's steps for one line it read (None where it would crash)."""
    try:
        rec = json.loads(text_line)
        stored_hash = rec.pop("hash")
        prev_ref = rec.pop("prev_hash")
        payload = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    except Exception:
        return None
    if not isinstance(stored_hash, str) or not isinstance(prev_ref, str):
        return None  # the seed reports tamper or a chain break: no payload to agree on
    return prev_ref, payload.encode(), stored_hash


def assert_exact(line: bytes) -> None:
    """fast_parts agrees with the seed or declines; line_parts always agrees."""
    try:
        text_line = line.decode("utf-8")
    except UnicodeDecodeError:
        assert fast_parts(line) is None
        with pytest.raises(LineError):
            line_parts(line)
        return
    expected = seed_result(text_line)
    fast = fast_parts(line)
    if fast is not None:
        assert expected is not None, line
        assert (fast[0].decode(), fast[1], fast[2].decode()) == expected, line
    if expected is None:
        with pytest.raises(LineError):
            line_parts(line)
    else:
        assert line_parts(line) == expected, line


def layouts(record: dict, rnd: random.Random) -> list[bytes]:
    """The same record as lines laid out by flagtrail, json.dumps (any key order) and orjson."""
    full = dict(record, prev_hash=PREV, hash=DIGEST)
    items = list(full.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    lines = [
        json.dumps(shuffled).encode(),
        json.dumps(dict(reversed(items))).encode(),
        json.dumps(shuffled, separators=(",", ":"), sort_keys=True).encode(),
    ]
    try:
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
        lines.append(frame_line(PREV, canonical, DIGEST).encode())
        lines.append(json.dumps(shuffled, ensure_ascii=False).encode())
    except UnicodeEncodeError:
        pass  # a lone surrogate cannot be written as UTF-8 text
    with contextlib.suppress(TypeError):  # orjson refuses integers beyond 64 bits
        lines.append(orjson.dumps(shuffled))
    return lines


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.randoms(use_true_random=False))
@example({"big": 2**64, "neg": -(2**63) - 1}, random.Random(0))
@example({"x": 1e-7, "y": 0.00001, "z": 1e16}, random.Random(0))
@example({"s": "\\x41 é \\U0001f600 🚀 \x7f"}, random.Random(0))
@example({"hash": "not the outer one", "n": {"prev_hash": 1}}, random.Random(0))
@example({"f": math.nan, "g": -math.inf}, random.Random(0))
def test_any_layout_gives_the_seeds_payload_or_declines(record: dict, rnd: random.Random) -> None:
    for line in layouts(record, rnd):
        assert_exact(line)


NUMBER_SPELLINGS = [
    "0",
    "-0",
    "-0.0",
    "1E5",
    "1e+5",
    "1.0e-7",
    "1e-7",
    "0.00001",
    "1e-05",
    "0.0001",
    "1e16",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1234567890123456789",
    "-1234567890123456789",
    "123456789012345678901234567890",
    "123456789012345678901234567890.5",
    "0.1e1",
    "2.2250738585072011e-308",
    "9007199254740993.0",
]
raw_scalars = (
    st.sampled_from(NUMBER_SPELLINGS)
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | texts_with_surrogates.map(json.dumps)
    | texts.map(lambda t: json.dumps(t, ensure_ascii=False))
    | st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude80"', '"\\u007f"', '"\\/"'])
    | st.sampled_from(["true", "false", "null"])
)
keys = st.sampled_from(["a", "b", "hash", "prev_hash", "é"]) | texts
raw_values = st.recursive(
    raw_scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(keys, inner), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in kv) + "}"
        )
    ),
    max_leaves=12,
)
hash_values = st.sampled_from([f'"{PREV}"', f'"{DIGEST}"', "null", "1", '"x"'])


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(keys, raw_values), max_size=6),
    st.lists(st.tuples(st.sampled_from(["hash", "prev_hash"]), hash_values), max_size=4),
    st.randoms(use_true_random=False),
    st.sampled_from(["", " ", "\t"]),
)
def test_raw_text_with_duplicate_keys_and_odd_numbers(
    members: list, hashes: list, rnd: random.Random, space: str
) -> None:
    """Text no encoder writes: duplicate keys (the last wins in both), odd spellings."""
    members = [*members, ("prev_hash", f'"{PREV}"'), ("hash", f'"{DIGEST}"'), *hashes]
    rnd.shuffle(members)
    line = space + "{" + ",".join(f"{json.dumps(k)}:{space}{v}" for k, v in members) + "}"
    assert_exact(line.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"prev_hash":"%s","f":0.5,"n":18446744073709551616,"hash":"%s"}', "orjson: a float"),
        ('{"prev_hash":"%s","f":0.5,"n":-9223372036854775809,"hash":"%s"}', "orjson: a float"),
        ('{"prev_hash":"%s","n":1e16,"hash":"%s"}', "exponent"),
        ('{"prev_hash":"%s","n":0.00001,"hash":"%s"}', "json writes 1e-05"),
        ('{"prev_hash":"%s","n":1e-7,"hash":"%s"}', "json writes 1e-07"),
        ('{"prev_hash":"%s","n":NaN,"hash":"%s"}', "orjson refuses NaN"),
        ('{"prev_hash":"%s","n":1e400,"hash":"%s"}', "json reads inf"),
        ('{"prev_hash":"%s","s":"\\ud800","hash":"%s"}', "lone surrogate"),
        ('["%s","%s"]', "not an object"),
        ('{"prev_hash":"%s","hash":"%s","hash":1}', "the last hash wins and is no string"),
    ],
)
def test_fast_path_declines_where_orjson_and_json_differ(line: str, why: str) -> None:
    data = (line % (PREV, DIGEST)).encode()
    assert fast_parts(data) is None, why
    assert_exact(data)


@pytest.mark.parametrize(
    ("member", "payload"),
    [
        ('"s":"\\\\x41\\u00e9"', '{"s":"\\\\x41\\u00e9"}'),  # escaped backslash + x, non-ASCII
        ('"s":"\\\\U0001f600\\ud83d\\ude80"', '{"s":"\\\\U0001f600\\ud83d\\ude80"}'),
        ('"s":"\x7f\\u007f"', '{"s":"\\u007f\\u007f"}'),
        ('"s":"\\u00e9\\u2028"', '{"s":"\\u00e9\\u2028"}'),
        ('"n":-0, "z":-0.0, "i":1E2', '{"i":100.0,"n":0,"z":-0.0}'),
        ('"n":18446744073709551615', '{"n":18446744073709551615}'),
        ('"n":18446744073709551616', '{"n":18446744073709551616}'),  # exact beyond 64 bits
        ('"n":-9223372036854775809', '{"n":-9223372036854775809}'),
        ('"f":25.5, "g":[1.0E2, -0.0]', '{"f":25.5,"g":[100.0,-0.0]}'),  # floats: orjson path
        ('"d":' + "[" * 12 + "1" + "]" * 12, '{"d":' + "[" * 12 + "1" + "]" * 12 + "}"),
        ('"a":1, "a":{"b":2}', '{"a":{"b":2}}'),
        ('"hash":"x", "n":1', '{"n":1}'),  # a duplicate hash: the last one is the record's
    ],
)
def test_fast_path_matches_the_seed_on_tricky_members(member: str, payload: str) -> None:
    line = f'{{"hash":"{DIGEST}", {member}, "prev_hash":"{PREV}"}}'.encode()
    if member.startswith('"hash"'):
        line = f'{{{member}, "hash":"{DIGEST}", "prev_hash":"{PREV}"}}'.encode()
    assert seed_result(line.decode()) == (PREV, payload.encode(), DIGEST)
    assert fast_parts(line) == (PREV.encode(), payload.encode(), DIGEST.encode())


@pytest.mark.parametrize("depth", [10, MAX_DEPTH - 1, MAX_DEPTH + 1, 1000, 5000])
def test_deep_nesting_never_crashes(depth: int) -> None:
    line = f'{{"prev_hash":"{PREV}","n":{"[" * depth}{"]" * depth},"hash":"{DIGEST}"}}'.encode()
    assert_exact(line)
    with pytest.raises(LineError) if depth + 1 > MAX_DEPTH else contextlib.nullcontext():
        strict_record(line)


@pytest.mark.parametrize(
    "data",
    [
        b"a\nb\n",
        b"a\r\nb\r\n",
        b"a\rb\n",
        b"a\r\rb",
        b"a\n\nb",
        b"\n",
        b"",
        b"a",
        b'{"x":\r1}\n',
    ],
)
def test_lines_are_split_as_the_seed_reads_them(data: bytes) -> None:
    text_lines = list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert split_lines(data) == [t.rstrip("\n").encode() for t in text_lines]


def test_a_carriage_return_inside_a_line_is_refused() -> None:
    line = f'{{"prev_hash":"{PREV}",\r"a":1,"hash":"{DIGEST}"}}'.encode()
    with pytest.raises(LineError, match="carriage return"):
        line_parts(line)
    crlf = f'{{"prev_hash":"{PREV}","a":1,"hash":"{DIGEST}"}}\r\n'.encode()
    assert line_parts(crlf) == (PREV, b'{"a":1}', DIGEST)


@pytest.mark.parametrize(
    "line",
    [
        b"\xef\xbb\xbf" + f'{{"prev_hash":"{PREV}","hash":"{DIGEST}"}}'.encode(),  # BOM
        f'{{"prev_hash":"{PREV}","s":"\xed\xa0\x80","hash":"{DIGEST}"}}'.encode("latin-1"),
        f'{{"prev_hash":"{PREV}","s":"\xff","hash":"{DIGEST}"}}'.encode("latin-1"),
    ],
)
def test_bytes_the_seed_cannot_read_as_utf8_text_are_refused(line: bytes) -> None:
    assert fast_parts(line) is None
    with pytest.raises(LineError):
        seed_parts(line)
    with pytest.raises(LineError):
        strict_record(line)


# -- strict_record ---------------------------------------------------------------------------
def json_reference(line: bytes) -> dict | None:
    """json.loads as the seed reads text, or None where strict_record must refuse."""
    try:
        record = json.loads(line.decode("utf-8"))
    except Exception:
        return None
    if not isinstance(record, dict):
        return None
    return record


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, raw_values), max_size=6), st.randoms(use_true_random=False))
def test_strict_record_returns_what_json_returns_or_refuses(
    members: list, rnd: random.Random
) -> None:
    line = ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members) + "}").encode(
        "utf-8", "surrogatepass"
    )
    expected = json_reference(line)
    try:
        got = strict_record(line)
    except LineError:
        return  # refusing is always allowed; accepting must be exact
    assert expected is not None
    assert orjson_free_equal(got, expected), line
    assert not _has_nonfinite_or_surrogate(got)


def orjson_free_equal(a: object, b: object) -> bool:
    """Equal values, types and key order (so 1 != 1.0 and {"a","b"} != {"b","a"})."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(orjson_free_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(orjson_free_equal, a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def _has_nonfinite_or_surrogate(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(map(_has_nonfinite_or_surrogate, [*value, *value.values()]))
    if isinstance(value, list):
        return any(map(_has_nonfinite_or_surrogate, value))
    return False


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"n":18446744073709551616}', {"n": 2**64}),
        (b'{"n":-9223372036854775809}', {"n": -(2**63) - 1}),
        (b'{"n":123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n":-0,"f":-0.0}', {"n": 0, "f": -0.0}),
        (b'{"a":1,"b":2,"a":3}', {"a": 3, "b": 2}),
        (b'{"sequence":7,"meta":null,"soc2_controls":["CC6.1"]}', None),
    ],
)
def test_strict_record_is_exact_where_orjson_is_not(line: bytes, expected: dict | None) -> None:
    got = strict_record(line)
    assert orjson_free_equal(got, expected if expected is not None else json.loads(line))


@pytest.mark.parametrize(
    "line",
    [
        b'{"n":NaN}',
        b'{"n":-Infinity}',
        b'{"n":1e400}',
        b'{"s":"\\ud800"}',
        b"[1,2]",
        b'{"sequence":true}',
        b'{"sequence":"7"}',
        b'{"sequence":null}',
        b'{"soc2_controls":"CC6.1"}',
        b'{"soc2_controls":[1]}',
        b'{"meta":[]}',
        b'{"action":1}',
        b'{"timestamp_utc":null}',
        b'{"n":1}x',
        b"",
    ],
)
def test_strict_record_refuses(line: bytes) -> None:
    with pytest.raises(LineError):
        strict_record(line)


def test_strict_record_reads_str_lines_too() -> None:
    assert strict_record('{"a":"é","n":18446744073709551616}') == {"a": "é", "n": 2**64}


def test_realistic_lines_take_the_fast_path_in_both_layouts() -> None:
    """The speed of `flagtrail verify` rests on this: no realistic record declines."""
    record = {
        "action": "rollout",
        "actor": "zoë@example.com",
        "after": {"enabled": True, "rollout": 30, "segments": ["beta", "eu"]},
        "before": {"enabled": True, "rollout": 25},
        "event_id": "aca7f6c5-f7f4-4ef1-854c-2cfbeab0f912",
        "meta": None,
        "reason": "Gradual rollout — step ✅",
        "sequence": 18446744073709551616,
        "soc2_controls": ["CC6.1", "CC6.6", "CC8.1"],
        "timestamp_utc": "2026-01-01T00:00:10.000000Z",
    }
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    own = frame_line(PREV, canonical.decode(), DIGEST).encode()
    foreign = json.dumps(dict(reversed({**record, "prev_hash": PREV, "hash": DIGEST}.items())))
    for line in (own, foreign.encode()):
        assert fast_parts(line) == (PREV.encode(), canonical, DIGEST.encode())


@pytest.mark.parametrize("digits", [19, 20, 4300, 4301])
def test_long_integers_are_exact_up_to_pythons_limit_and_refused_beyond(digits: int) -> None:
    """json.loads refuses integers over 4300 digits (ValueError): so must every path here."""
    line = f'{{"prev_hash":"{PREV}","n":-{"9" * digits},"hash":"{DIGEST}"}}'.encode()
    assert_exact(line)
    if digits <= 20:
        assert fast_parts(line) is not None
    if digits <= 4300:  # msgspec declines -4300 digits (it counts the sign): json reads it
        assert strict_record(line)["n"] == -int("9" * digits)
    else:
        with pytest.raises(LineError):
            strict_record(line)
