"""Canonical hashing is byte-exact with the seed's json.dumps contract, fast path included."""

from __future__ import annotations

import contextlib
import hashlib
import json

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.canonical import GENESIS, chain_hash, frame_line, line_parts, seal

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point: non-ASCII, emoji, controls, DEL
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)
records = st.dictionaries(
    st.text(min_size=1).filter(lambda k: k not in ("hash", "prev_hash")),
    json_values,
    min_size=1,
    max_size=8,
)


def seed_hash(line: str, prev: str) -> str:
    """What the seed's Verification snippet computes for one line."""
    rec = json.loads(line)
    rec.pop("hash")
    rec.pop("prev_hash")
    payload = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev}:{payload}".encode()).hexdigest()


@settings(max_examples=400, deadline=None)
@given(records, st.sampled_from([GENESIS, "ab" * 32]))
def test_sealed_line_verifies_with_the_seed_formula(record: dict, prev: str) -> None:
    digest, line = seal(record, prev)
    assert seed_hash(line, prev) == digest
    parsed = json.loads(line)
    assert parsed["hash"] == digest and parsed["prev_hash"] == prev


@settings(max_examples=2000, deadline=None)
@given(records)
@example({"\x7f": None})  # found by this test: json escapes DEL, orjson does not
@example({"f": 1e-05})
@example({"f": [1e-09, -7.1850441006303285e-09]})
@example({"f": 0.000015212603486793025, "g": 1e16, "h": 1e22, "i": 5e-324})
@example({"f": 1.7976931348623157e308, "s": "0.00001 and 1e-9 in text"})
@example({"é": "zoë 🚀 — \u2028\x7f\x1f", "n": 2**70})
def test_fast_path_agrees_with_seed_on_canonical_and_foreign_encodings(record: dict) -> None:
    """Whatever bytes sit between the framing, line_parts yields the seed's payload."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    encodings = [
        canonical,
        json.dumps(record, sort_keys=True),
        json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    ]
    with contextlib.suppress(TypeError):  # orjson refuses integers beyond 64 bits
        encodings.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode())
    for payload in encodings:
        line = frame_line(GENESIS, payload, "cd" * 32).encode()
        prev, derived, digest = line_parts(line)
        assert (prev, digest) == (GENESIS, "cd" * 32)
        assert derived == canonical.encode(), payload


def test_known_vector() -> None:
    record = {"actor": "zoë@example.com", "after": {"rollout": 25.5}, "emoji": "🚀", "n": None}
    payload = json.dumps(record, sort_keys=True, separators=(",", ":"))
    assert payload == (
        '{"actor":"zo\\u00eb@example.com","after":{"rollout":25.5},'
        '"emoji":"\\ud83d\\ude80","n":null}'
    )
    assert (
        chain_hash(GENESIS, payload) == hashlib.sha256(f"{GENESIS}:{payload}".encode()).hexdigest()
    )


def test_exponent_floats_take_the_exact_path() -> None:
    # orjson writes 1e-7 where json writes 1e-07: the fast path must not accept it
    line = frame_line(GENESIS, '{"x":1e-7}', "00" * 32).encode()
    assert line_parts(line)[1] == b'{"x":1e-07}'


def test_nested_hash_keys_do_not_confuse_the_framing() -> None:
    record = {"before": {"hash": "f" * 64, "prev_hash": "e" * 64}, "a": 1}
    digest, line = seal(record, GENESIS)
    assert seed_hash(line, GENESIS) == digest
    assert line_parts(line.encode())[2] == digest
