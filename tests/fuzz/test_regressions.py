"""Every crash the fuzzers found, replayed through the same targets (strict mode).

A case marked xfail is a crash in code another part of issue 7 owns: the test
fails on today's code for the named reason, and starts passing (strict xfail:
the suite fails) when the owner fixes it; then drop the marker here and the
entry in tests/fuzz/known.py. Cases without a marker must hold now.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from producers.events import FlagChange
from relay.canonical import LineError, line_parts
from tests.contracts import good_change
from tests.fuzz import known as known_module
from tests.fuzz import targets
from tests.fuzz.known import KNOWN
from tests.fuzz.package import make_package

GENESIS = "0" * 64


@dataclass(frozen=True)
class Package:
    export: bytes
    manifest: dict[str, Any]

    def lines(self) -> list[bytes]:
        return self.export.splitlines()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    folder = tmp_path_factory.mktemp("fuzz") / "made"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        made = make_package(folder)
    targets.use_package(made, folder / "trusted-public.pem")
    return Package(
        next(made.glob("*.jsonl")).read_bytes(),
        json.loads(next(made.glob("*.manifest.json")).read_text()),
    )


@pytest.fixture(autouse=True)
def _strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known_module, "STRICT", True)


@dataclass(frozen=True)
class Case:
    id: str
    target: str
    make: Callable[[Package], bytes]
    kind: str | None = None  # the KNOWN entry this case reproduces
    raises: type[BaseException] | None = None  # how it fails today

    def param(self) -> Any:
        marks = []
        if self.kind in KNOWN:  # fixed crashes leave KNOWN; their cases must then hold
            reason = f"{self.kind}: {KNOWN[self.kind]}"
            marks.append(pytest.mark.xfail(strict=True, raises=self.raises, reason=reason))
        return pytest.param(self, id=self.id, marks=marks)


def _with_prev_hash_byte(p: Package) -> bytes:
    first = p.lines()[0]
    return first[:20] + b"\xaf" + first[21:]  # a non-UTF-8 byte inside prev_hash


def _escaped_prev_hash(p: Package) -> bytes:
    # 64 bytes in the prev_hash slot that json reads as 59 characters
    return b'{"prev_hash":"\\u0030' + b"0" * 58 + b'","a":1,"hash":"' + b"0" * 64 + b'"}'


def _deep(depth: int) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def _framed_deep(depth: int) -> bytes:
    # canonical framing, so fast_parts (orjson) reads it without the seed's json
    return (
        b'{"prev_hash":"' + GENESIS.encode() + b'","a":' + b"[" * depth + b"]" * depth
        + b',"hash":"' + GENESIS.encode() + b'"}'
    )  # fmt: skip


def _manifest(**changes: Any) -> Callable[[Package], bytes]:
    return lambda p: json.dumps({**p.manifest, **changes}).encode()


def _export_with_manifest(p: Package) -> bytes:
    return p.export + targets.MANIFEST_SEPARATOR + json.dumps(p.manifest).encode()


LINE_CASES = [
    Case("export-lines-hold", "line_decoder", lambda p: p.lines()[0]),
    Case("crlf-line", "line_decoder", lambda p: p.lines()[-1] + b"\r\n"),
    Case("line-ends-crlf-cr", "line_decoder", lambda p: p.lines()[-1] + b"\r\n\r"),
    Case("line-ends-lf-cr-lf", "line_decoder", lambda p: p.lines()[-1] + b"\n\r\n"),
    Case("other-layout", "line_decoder", lambda p: json.dumps(json.loads(p.lines()[1])).encode()),
    Case("line-non-utf8-prev-hash", "line_decoder", _with_prev_hash_byte,
         "fast_parts-unchecked-hash", targets.Crash),
    Case("line-parts-non-utf8-prev-hash", "line_parts", _with_prev_hash_byte,
         "relay/canonical.py:line_parts:UnicodeDecodeError", UnicodeDecodeError),
    Case("line-escaped-prev-hash", "line_decoder", _escaped_prev_hash,
         "fast_parts-unchecked-hash", targets.Crash),
    Case("line-overflow-to-infinity", "line_decoder", lambda p: b'{"a":1e400}',
         "strict_record-accepts-infinity", targets.Crash),
    Case("line-utf8-bom", "line_decoder", lambda p: b'\xef\xbb\xbf{"a":1}',
         "json-bytes-accepts-bom-or-utf16", targets.Crash),
    Case("line-utf16", "line_decoder", lambda p: '{"a":1}'.encode("utf-16-le"),
         "json-bytes-accepts-bom-or-utf16", targets.Crash),
    Case("line-utf16-empty-object", "line_decoder", lambda p: b"{\x00}\x00",  # valid UTF-8 too
         "json-bytes-accepts-bom-or-utf16", targets.Crash),
    Case("line-nested-100000", "line_decoder", lambda p: _deep(100_000),
         "relay/canonical.py:seed_parts:RecursionError", RecursionError),
    Case("line-nested-1010", "line_decoder", lambda p: _framed_deep(1010),
         "relay/canonical.py:seed_parts:RecursionError", RecursionError),
    Case("strict-record-nested-1010", "strict_record", lambda p: _deep(1010),
         "orjson-reads-deeper-than-seed", targets.Crash),
]  # fmt: skip

VERIFY_CASES = [
    Case("genuine-package-chain-only", "verify", _export_with_manifest,
         "verify-passes-unsigned", targets.Crash),
    Case("verify-non-utf8-prev-hash", "verify", lambda p: _with_prev_hash_byte(p) + b"\n",
         "relay/verify.py:check_chunk:UnicodeDecodeError", UnicodeDecodeError),
    Case("verify-surrogate-prev-hash", "verify",
         lambda p: b'{"hash":"a","prev_hash":"\\ud800"}\n',
         "relay/verify.py:check_chunk:UnicodeEncodeError", UnicodeEncodeError),
    Case("verify-nested-100000", "verify", lambda p: _deep(100_000) + b"\n",
         "relay/canonical.py:seed_parts:RecursionError", RecursionError),
    Case("summary-controls-number", "verify", lambda p: b'{"soc2_controls":5}\n',
         "relay/summary.py:count_controls:TypeError", TypeError),
    Case("summary-controls-mixed", "verify", lambda p: b'{"soc2_controls":["CC8.1",1.5]}\n',
         "relay/summary.py:format_summary:TypeError", TypeError),
]  # fmt: skip

MANIFEST_CASES = [
    Case("manifest-anchor-string", "manifest", _manifest(anchor="x"),
         "relay/verify.py:verify_export:AttributeError", AttributeError),
    Case("manifest-anchor-hash-number", "manifest", _manifest(anchor={"hash": 5}),
         "relay/verify.py:render:TypeError", TypeError),
    Case("manifest-record-count-string", "manifest", _manifest(record_count="6"),
         "relay/verify.py:_check_manifest:TypeError", TypeError),
    Case("manifest-head-number", "manifest", _manifest(head=5),
         "relay/verify.py:_check_manifest:AttributeError", AttributeError),
    Case("manifest-public-key-too-long", "manifest", _manifest(public_key="k" * 300),
         "relay/verify.py:verify_export:OSError", OSError),
    Case("manifest-nested-100000", "manifest", lambda p: b"[" * 100_000 + b"]" * 100_000,
         "relay/verify.py:_load_manifest:RecursionError", RecursionError),
]  # fmt: skip


def _line_parts_only(data: bytes) -> None:
    with contextlib.suppress(LineError):
        line_parts(data)


PARTS = {
    **targets.TARGETS,
    "line_parts": _line_parts_only,
    "strict_record": targets.check_strict_record,
}


@pytest.mark.parametrize("case", [c.param() for c in LINE_CASES + VERIFY_CASES + MANIFEST_CASES])
def test_fuzz_input(case: Case, package: Package) -> None:
    PARTS[case.target](case.make(package))


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


CHANGE_CASES = [
    Case("change-good", "validate", lambda p: {}),
    Case("change-no-before-after", "validate", lambda p: {"before": None, "after": None}),
    Case("change-long-integer", "validate", lambda p: {"after": {"n": 2**70}}),
    Case("change-tuple", "validate", lambda p: {"after": {"ids": (1, 2)}}),
    Case("change-lone-surrogate", "validate", lambda p: {"reason": "rollout \ud800"},
         "validate-passes-lone-surrogate", targets.Crash),
    Case("change-lone-surrogate-key", "validate", lambda p: {"after": {"\udcff": 1}},
         "validate-passes-lone-surrogate", targets.Crash),
    Case("change-integer-key", "validate", lambda p: {"after": {1: "on"}},
         "validate-passes-non-string-key", targets.Crash),
    Case("change-bytes-event-id", "validate", lambda p: {"event_id": b"id"},
         "validate-passes-non-string-event_id", targets.Crash),
    Case("change-nested-5000", "validate", lambda p: {"after": _nested(5000)},
         "producers/events.py:_check_json_value:RecursionError", RecursionError),
]  # fmt: skip


@pytest.mark.parametrize("case", [c.param() for c in CHANGE_CASES])
def test_fuzz_change(case: Case) -> None:
    change = good_change(3)
    fields = {name: getattr(change, name) for name in FlagChange.__dataclass_fields__}
    targets.check_change({**fields, **case.make(None)})  # type: ignore[arg-type]


def test_every_known_crash_has_a_regression_case() -> None:
    cases = LINE_CASES + VERIFY_CASES + MANIFEST_CASES + CHANGE_CASES
    assert set(KNOWN) <= {c.kind for c in cases}


def test_verify_target_is_not_vacuous(package: Package, tmp_path: Path) -> None:
    """The harness itself: verify passes the genuine package with the trusted key and
    fails it after a one-byte edit, so 'no crash' in the fuzz runs means something."""
    pkg = targets._the_package()
    argv = ["verify", str(pkg.export), "--pubkey", str(pkg.trusted_key)]
    assert targets.run_cli(argv)[0] == 0
    pkg.export.write_bytes(package.export.replace(b"CHG-1", b"CHG-9", 1))
    try:
        assert targets.run_cli(argv)[0] == 1
        assert targets.reference_chain(pkg.export.read_bytes(), {GENESIS}) is False
    finally:
        pkg.export.write_bytes(package.export)
