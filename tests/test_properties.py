"""Hypothesis properties for the fuzzed invariants (section 16), as ordinary tests.

The coverage-guided fuzzer (tests/fuzz/run.py) explores bytes; these properties
explore structured values: records of any JSON shape, flag changes of any field
types, chains tampered in every way. Both check the same targets
(tests/fuzz/targets.py). Crashes already reported to their owners
(tests/fuzz/known.py) are skipped here and replayed as strict xfail cases in
tests/fuzz/test_regressions.py.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from producers.events import FLAG_ACTIONS, canonical_json
from relay.canonical import GENESIS, LineError, fast_parts, seal, seed_parts, strict_record
from tests.fuzz import targets
from tests.fuzz.package import make_package

RESERVED = {"hash", "prev_hash", *targets.RECORD_TYPES}
every_char = st.characters(exclude_categories=())  # lone surrogates and controls too
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
records = st.dictionaries(
    st.text(min_size=1).filter(lambda k: k not in RESERVED), json_values, min_size=1, max_size=6
).map(lambda r: {**r, "sequence": 1, "action": "update", "soc2_controls": ["CC8.1"]})
# anything a careless control plane could pass: bytes, sets, tuples, non-string keys,
# lone surrogates, NaN, huge integers
anything = st.recursive(
    json_scalars
    | st.text(alphabet=every_char)
    | st.binary(max_size=8)
    | st.floats()
    | st.integers(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(alphabet=every_char) | st.integers() | st.none(), inner, max_size=3
        )
    ),
    max_leaves=12,
)


def another_layout(record: dict[str, Any], prev: str, digest: str, reverse: bool) -> bytes:
    """The same record written by another tool: spaces, other key order, raw UTF-8."""
    items = sorted(record.items(), reverse=reverse)
    framed = {"hash": digest, **dict(items), "prev_hash": prev}
    return json.dumps(framed, ensure_ascii=False).encode()


@given(records, st.booleans())
@example({"a": 2**64 + 1, "b": "\x7f\u2014🚀", "sequence": 1, "action": "update"}, True)
@example({"a": 1e-05, "b": [1e-9, -0.0, 1e300], "sequence": 1, "action": "update"}, False)
def test_sealed_records_decode_exactly(record: dict[str, Any], reverse: bool) -> None:
    digest, line = seal(record, GENESIS)
    payload = canonical_json(record).encode()
    for raw in (line.encode(), another_layout(record, GENESIS, digest, reverse)):
        assert seed_parts(raw) == (GENESIS, payload, digest)
        fast = fast_parts(raw)
        assert fast is None or fast == (GENESIS.encode(), payload, digest.encode())
        decoded = strict_record(raw)
        assert decoded.pop("hash") == digest and decoded.pop("prev_hash") == GENESIS
        assert targets.same_json(decoded, record)
        targets.line_decoder(raw)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(alphabet=every_char, max_size=100).map(
    lambda t: t.encode("utf-8", "surrogatepass")
))  # fmt: skip
@example(b'{"a":1}\r\n')
@example(b'{"prev_hash":"' + b"0" * 64 + b'","a":1e-05,"hash":"' + b"0" * 64 + b'"}')
def test_any_line_is_decoded_or_refused_consistently(line: bytes) -> None:
    targets.line_decoder(line)


change_fields = st.fixed_dictionaries(
    {
        "actor": st.text(alphabet=every_char) | anything,
        "role": st.text(),
        "flag_key": st.text(alphabet=every_char, min_size=1) | anything,
        "environment": st.sampled_from(["production", "staging", " ", ""]) | st.text(),
        "action": st.sampled_from(sorted(FLAG_ACTIONS)) | anything,
        "before": anything,
        "after": anything,
        "reason": st.text(alphabet=every_char),
        "change_ref": st.text(),
    },
    optional={"approver": st.none() | st.text(alphabet=every_char), "event_id": anything},
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(change_fields)
def test_validation_passes_only_what_round_trips(fields: dict[str, Any]) -> None:
    targets.check_change(fields)


well_formed = st.fixed_dictionaries(
    {
        "actor": st.text(min_size=1),
        "role": st.text(min_size=1),
        "flag_key": st.text(min_size=1),
        "environment": st.text(min_size=1),
        "action": st.sampled_from(sorted(FLAG_ACTIONS)),
        "before": json_values,
        "after": json_values,
        "reason": st.text(),
        "change_ref": st.text(),
    }
)


@given(well_formed)
def test_well_formed_changes_round_trip_strictly(fields: dict[str, Any]) -> None:
    """No known issue applies to well-formed changes: nothing may be skipped here."""
    from tests.fuzz import known

    known.STRICT, before = True, known.STRICT
    try:
        targets.check_change(fields)
    finally:
        known.STRICT = before


# -- verify: a tampered chain never verifies -------------------------------------------
@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("props") / "made"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        made = make_package(folder, records=8)
    return next(made.glob("*.jsonl")).read_bytes()


def _chain_only(path: Path) -> int | None:
    """verify with no signature check: --chain-only where this version has it."""
    code, _ = targets.run_cli(["verify", str(path), "--chain-only"])
    if code is None:  # argparse: a version without --chain-only checks only the chain
        code, _ = targets.run_cli(["verify", str(path)])
    return code


tampers = st.sampled_from(["edit", "delete", "swap", "duplicate", "truncate", "reorder-keys"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tamper=tampers, data=st.data())
def test_a_tampered_chain_never_verifies(
    genuine: bytes, tamper: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lines = genuine.splitlines()
    at = data.draw(st.integers(0, len(lines) - 2), label="record")  # not the last: see below
    if tamper == "edit":
        record = json.loads(lines[at])
        field = data.draw(st.sampled_from(sorted(set(record) - {"hash", "prev_hash"})))
        new = data.draw(json_values)
        assume(not targets.same_json(new, record[field]))
        record[field] = new
        lines[at] = json.dumps(record).encode()
    elif tamper == "delete":
        del lines[at]
    elif tamper == "swap":
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    elif tamper == "duplicate":
        lines.insert(at, lines[at])
    elif tamper == "truncate":
        lines[at] = lines[at][: data.draw(st.integers(1, len(lines[at]) - 1))]
    else:  # the same record, keys reordered: still intact (the hash is over canonical JSON)
        lines[at] = json.dumps(dict(reversed(json.loads(lines[at]).items()))).encode()
    folder = tmp_path_factory.mktemp("tampered")
    original = folder / "original" / "flag-audit-soc2_2026-01-01_2026-06-30.jsonl"
    path = folder / original.name
    original.parent.mkdir()
    original.write_bytes(genuine)
    path.write_bytes(b"\n".join(lines) + b"\n")
    code = _chain_only(path)
    if tamper == "reorder-keys":  # judged as the untouched file (0 today: the chain holds)
        assert code == _chain_only(original)
    else:
        assert code not in (0, None)
    # (Dropping the *last* record keeps the chain intact: only the manifest's count and
    # head, and the signature, catch that; tests/fuzz/test_regressions.py checks them.)


def test_line_errors_are_value_errors() -> None:
    """Readers catch ValueError around decoding; LineError must stay one."""
    assert issubclass(LineError, ValueError)
