"""No poison pill: write-time validation refuses (400) what cannot be chained safely."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from producers import FlagChange, InvalidChange, Outbox
from producers.events import canonical_json, change_record
from producers.policy import DEFAULT_POLICY, parse_policy
from producers.validation import DEFAULT_LIMITS, SAFE_INTEGER, Limits
from relay.canonical import GENESIS, line_parts, seal, strict_record
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.contracts import good_change


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def refused(change: FlagChange, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(InvalidChange) as raised:
        change.validate_shape(limits)
    message = str(raised.value)
    assert raised.value.status == 400
    assert "\n" not in message and message.strip() == message  # one sentence
    return message


IDENTIFIERS = ("actor", "approver", "role", "flag_key", "environment", "change_ref", "event_id")


@pytest.mark.parametrize("name", IDENTIFIERS)
@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\n", "\r", "\u202e", "\u200b", "\x85"])
def test_control_characters_in_identifiers_are_refused(name: str, bad: str) -> None:
    message = refused(good_change(**{name: f"x{bad}y"}))
    assert name in message and "U+" in message


@pytest.mark.parametrize("name", IDENTIFIERS)
def test_lone_surrogates_and_undecodable_bytes_in_identifiers_are_refused(name: str) -> None:
    # os.fsdecode of undecodable bytes yields lone surrogates (surrogateescape)
    assert "not valid Unicode" in refused(good_change(**{name: "alice\udcff"}))
    assert "must be a string" in refused(good_change(**{name: b"alice"}))


@pytest.mark.parametrize(
    "value",
    [
        {"k": "\ud800"},
        {"\udcff": 1},
        ["ok", ["deep", "\udfff"]],
        b"raw bytes",
        {"k": b"\xff"},
        bytearray(b"x"),
    ],
)
def test_unsafe_strings_and_bytes_anywhere_in_state_are_refused(value: object) -> None:
    refused(good_change(after=value))
    refused(good_change(before=value))


def test_lone_surrogate_in_reason_is_refused() -> None:
    assert "not valid Unicode" in refused(good_change(reason="why\ud800"))


def test_nesting_deeper_than_32_is_refused_and_32_passes() -> None:
    good_change(after=nested(31)).validate_shape()  # 31 containers, 32 levels with the leaf
    assert "nested deeper than 32" in refused(good_change(after=nested(33)))


def test_absurd_nesting_is_refused_quickly_without_recursion() -> None:
    deep = good_change(before=nested(200_000))
    started = time.perf_counter()
    refused(deep)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("key", [1, 1.5, None, True, ("a",)])
def test_non_string_keys_are_refused(key: object) -> None:
    # json.dumps would quietly write {1: "a", "1": "b"} as two "1" members
    message = refused(good_change(after={"ok": {key: "a"}}))
    assert "key that is not a string" in message and "after.ok" in message


def test_state_over_64_kib_as_canonical_json_is_refused() -> None:
    good_change(after={"x": "a" * 60_000}).validate_shape()
    assert "larger than 65536 bytes" in refused(good_change(after={"x": "a" * 70_000}))
    # non-ASCII is escaped by the canonical encoder: 12,000 emoji are 144,000 bytes
    assert "larger than 65536" in refused(good_change(before=["\U0001f680" * 12_000]))


def test_huge_inputs_are_refused_in_bounded_time() -> None:
    shared = "x" * 1000
    cases = [
        ["a" * 50_000_000],
        [shared] * 2_000_000,
        {str(i): i for i in range(300_000)},
        [[[]] * 1_000_000],
    ]
    started = time.perf_counter()
    for name in IDENTIFIERS:
        refused(good_change(**{name: " " * 100_000_000}))
    assert time.perf_counter() - started < 1.5
    cyclic: list = []
    cyclic.append(cyclic)
    cases.append(cyclic)
    for value in cases:
        started = time.perf_counter()
        refused(good_change(after=value))
        assert time.perf_counter() - started < 1.5, type(value)  # a shared 2-core machine


def test_reason_over_4_kib_is_refused_counting_utf8_bytes() -> None:
    good_change(reason="é" * 2048).validate_shape()  # 4096 bytes
    assert "longer than 4096 bytes" in refused(good_change(reason="é" * 2049))
    assert "longer than 4096 bytes" in refused(good_change(reason="x" * 10_000_000))
    assert "control character" in refused(good_change(reason="ok\x1b]52;c;evil\x07"))
    good_change(reason="line one\nline two\ttabbed").validate_shape()


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**64, -(2**100), 10**30])
def test_integers_beyond_2_53_are_refused(value: int) -> None:
    assert "outside ±(2^53-1)" in refused(good_change(after={"n": value}))


def test_safe_integers_and_floats_pass() -> None:
    good_change(after={"n": SAFE_INTEGER, "m": -SAFE_INTEGER, "f": 0.1, "e": 1e-9}).validate_shape()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(value: float) -> None:
    assert "JSON cannot carry" in refused(good_change(after={"x": [value]}))


@pytest.mark.parametrize("name", ["actor", "role", "reason", "change_ref", "flag_key"])
@pytest.mark.parametrize("value", [True, 1, None, ["a"]])
def test_non_strings_where_strings_are_expected_are_refused(name: str, value: object) -> None:
    refused(good_change(**{name: value}))


def test_bool_approver_and_long_event_id_are_refused() -> None:
    refused(good_change(approver=True))
    assert "event_id" in refused(good_change(event_id="e" * 65))


def test_tuples_sets_and_objects_are_not_json_data() -> None:
    for value in [(1, 2), {1, 2}, object(), Path(".")]:
        assert "not JSON data" in refused(good_change(after={"v": value}))


def test_limits_are_configurable() -> None:
    tight = Limits(max_depth=3, max_state_bytes=100, max_reason_bytes=10, max_identifier_chars=8)
    short = {"actor": "a", "approver": "b", "role": "r", "environment": "prod", "flag_key": "f"}
    short |= {"event_id": "e1", "reason": "why"}
    assert "nested deeper than 3" in refused(good_change(**short, after=nested(4)), tight)
    assert "larger than 100 bytes" in refused(good_change(**short, after="x" * 200), tight)
    assert "longer than 10 bytes" in refused(good_change(**{**short, "reason": "x" * 11}), tight)
    assert "longer than 8 characters" in refused(good_change(**{**short, "role": "r" * 9}), tight)


def test_policy_file_limits_reach_the_outbox(sqlite_engine: Engine, workdir: Path) -> None:
    text = DEFAULT_POLICY.replace("max_reason_bytes = 4096", "max_reason_bytes = 16")
    outbox = Outbox(
        sqlite_engine, str(workdir / "identities.toml"), policy=parse_policy(text, "t.toml")
    )
    too_long = pytest.raises(InvalidChange, match="reason is longer than 16 bytes")
    with too_long, sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(reason="a reason of more than sixteen"))
    source = open_outbox_source(sqlite_engine, outbox.chain_id)
    assert source.fetch_pending(None, 10) == []  # refused, not recorded, not rejected


def test_invalid_change_records_nothing_and_the_relay_keeps_flowing(
    sqlite_engine: Engine, workdir: Path
) -> None:
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    for bad in [{"after": {"k": "\ud800"}}, {"after": nested(40)}, {"before": {"n": 2**63}}]:
        with pytest.raises(InvalidChange), sqlite_engine.begin() as conn:
            outbox.record(conn, good_change(1, **bad))
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(2))
    source = open_outbox_source(sqlite_engine, outbox.chain_id)
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        relay = Relay(source, audit_log)
        relay.resume()
        assert relay.drain() == 1


def test_integers_within_2_53_are_carried_exactly_never_as_floats(
    sqlite_engine: Engine, workdir: Path
) -> None:
    """The largest accepted integers are hashed, relayed and read back as those integers.

    (Beyond 2**64 the relay's orjson decoding would turn them into floats: the
    reason the producer refuses anything beyond ±(2**53-1).)
    """
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(after={"n": SAFE_INTEGER, "m": -SAFE_INTEGER}))
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        relay = Relay(open_outbox_source(sqlite_engine, outbox.chain_id), audit_log)
        relay.resume()
        relay.drain()
        (entry,) = list(audit_log.read())
    assert f'"n":{SAFE_INTEGER}' in entry.line and f'"m":-{SAFE_INTEGER}' in entry.line
    record = strict_record(entry.line)
    assert record["after"] == {"n": SAFE_INTEGER, "m": -SAFE_INTEGER}
    assert type(record["after"]["n"]) is int


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ("[" * 40 + "]" * 40, "nested deeper than 32"),
        ('{"k": "\\ud800"}', "lone surrogate"),
        ('{"n": 9007199254740993}', "outside"),
        ('{"x": NaN}', "JSON cannot carry"),
    ],
)
def test_cli_record_refuses_unsafe_state_cleanly(workdir: Path, after: str, message: str) -> None:
    from tests.conftest import run_cli

    result = run_cli(
        "record", "--flag", "f", "--env", "staging", "--action", "update", "--actor",
        "carol@example.com", "--role", "engineer", "--reason", "r", "--after", after,
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr[-500:]
    assert "Traceback" not in result.stderr


# -- property: what passes is chained and read back exactly; nothing else escapes ---------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
)
_json_like = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 3), inner, max_size=4)
    ),
    max_leaves=30,
)
_identifier = st.text(max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=_json_like,
    after=_json_like,
    actor=_identifier,
    flag_key=_identifier,
    reason=st.text(max_size=40),
)
def test_accepted_changes_seal_and_read_back_exactly(
    before: object, after: object, actor: str, flag_key: str, reason: str
) -> None:
    change = good_change(before=before, after=after, actor=actor, flag_key=flag_key or "f")
    change = FlagChange(**{**change.__dict__, "reason": reason})
    try:
        change.validate_shape()
    except InvalidChange as exc:
        assert "\n" not in str(exc)
        return
    record = change_record(
        change,
        chain_id="c",
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        action=change.action,
        controls=["CC6.1"],
    )
    digest, line = seal(record, GENESIS)
    decoded = strict_record(line)
    assert (decoded["before"], decoded["after"]) == (record["before"], record["after"])
    prev, payload, again = line_parts(line.encode())
    assert (prev, again) == (GENESIS, digest) and payload.decode() == canonical_json(record)
