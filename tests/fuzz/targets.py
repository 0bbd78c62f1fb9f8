"""Fuzz targets: one function per invariant, fed raw bytes by atheris or by Hypothesis.

Each target returns quietly when the code kept its promise and raises ``Crash``
(or lets an unexpected exception through) when it did not. The same functions
run under the coverage-guided fuzzer (tests/fuzz/run.py), under Hypothesis when
atheris is missing, and as regression tests (tests/fuzz/test_regressions.py).

Targets call only stable entry points: ``flagtrail.cli.main``, ``FlagChange
.validate_shape``, ``canonical_json`` and the decoders in ``relay.canonical``.
A CLI flag that this version does not know yet ends in argparse's SystemExit,
which is the one exception ``main`` may let through.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import reprlib
import shutil
import struct
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.errors import InvalidChange
from producers.events import FLAG_ACTIONS, FlagChange, canonical_json, change_record
from relay.canonical import (
    GENESIS,
    MAX_DEPTH,
    LineError,
    fast_parts,
    line_parts,
    seal,
    seed_parts,
    strict_record,
)
from tests.fuzz.known import known, known_exception

# Between the export's bytes and the manifest's in a verify input (also in fuzz.dict).
MANIFEST_SEPARATOR = b"\x00MANIFEST\x00"
_HEX64 = re.compile(rb"[0-9a-f]{64}")
EXIT_CODES = frozenset(range(7))  # producers/errors.py: 0..6 are documented
RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "sequence": int,
    "timestamp_utc": str,
    "action": str,
    "soc2_controls": list,
    "meta": (dict, type(None)),
}


class Crash(AssertionError):
    """An invariant does not hold: a bug, whatever exception the code raised."""


def short(value: Any) -> str:
    """A bounded repr for messages (values may nest thousands deep)."""
    return reprlib.repr(value)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Crash(message)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values *and* Python types (True is not 1, 1 is not 1.0, -0.0 is not
    0.0). A tuple on the producer's side is the Python spelling of a JSON array.
    Iterative: values may nest thousands deep."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        x = list(x) if isinstance(x, tuple) else x
        y = list(y) if isinstance(y, tuple) else y
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if struct.pack("<d", x) != struct.pack("<d", y) and not (
                math.isnan(x) and math.isnan(y)
            ):
                return False
        elif isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


class _KnownCrash:
    """The outcome of a call that failed in an already-reported way."""


def _outcome(func: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return func(data)
    except LineError:
        return LineError
    except Exception as exc:
        known_exception(exc)
        return _KnownCrash


# -- (a) the line decoder ---------------------------------------------------------------
TOO_DEEP: dict[str, Any] = {}  # json.loads (the seed) cannot read it: nested too deep


def reference_record(line: bytes) -> dict[str, Any] | None:
    """What strict_record promises, spelled the slow obvious way: one UTF-8 JSON object,
    decoded exactly by json, with no NaN/Infinity (also none from an overflowing
    number), no lone surrogate and the reader-facing fields typed."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        record = json.loads(line.decode("utf-8"), parse_constant=refuse)
        json.dumps(record, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        return TOO_DEEP
    except (ValueError, UnicodeError):
        return None
    if not isinstance(record, dict):
        return None
    for name, kind in RECORD_TYPES.items():
        value = record.get(name)
        if (name in record and not isinstance(value, kind)) or isinstance(value, bool):
            return None
    controls = record.get("soc2_controls")
    if controls is not None and not all(isinstance(c, str) for c in controls):
        return None
    return record


def line_decoder(data: bytes) -> None:
    """fast_parts, seed_parts, line_parts and strict_record on one (fuzzed) line."""
    check_parts(data)
    check_strict_record(data)


def check_parts(data: bytes) -> None:
    """fast_parts agrees with seed_parts whenever it answers; line_parts is the seed's
    derivation; neither raises anything but LineError."""
    fast = fast_parts(data)  # never raises: None sends the caller to the exact path
    seed = _outcome(seed_parts, data)
    # both take one line as the seed's text-mode read splits it (split_lines): a CR
    # ends a line there, so a CR inside is outside their contract
    if fast is not None and b"\r" not in data:
        fast_text = (fast[0].decode(errors="replace"), fast[1], fast[2].decode(errors="replace"))
        if seed != fast_text:
            crash = Crash(f"fast_parts {short(fast)} disagrees with seed_parts {short(seed)}")
            if _HEX64.fullmatch(fast[0]) and _HEX64.fullmatch(fast[2]):
                raise crash
            known("fast_parts-unchecked-hash", crash)
    parts = _outcome(line_parts, data)
    exact = _outcome(seed_parts, data.rstrip(b"\r\n"))
    if parts is _KnownCrash:
        pass
    elif parts != exact:
        crash = Crash(f"line_parts {short(parts)} is not the seed's {short(exact)}")
        fast = fast_parts(data.rstrip(b"\r\n"))
        if fast is None or (_HEX64.fullmatch(fast[0]) and _HEX64.fullmatch(fast[2])):
            raise crash
        known("fast_parts-unchecked-hash", crash)
    elif parts is not LineError:
        prev, payload, digest = parts
        require(
            isinstance(prev, str) and isinstance(payload, bytes) and isinstance(digest, str),
            "line_parts returned wrong types",
        )


def check_strict_record(data: bytes) -> None:
    """strict_record returns what json (the seed) reads, or raises LineError."""
    record = _outcome(strict_record, data)
    reference = reference_record(data)
    if record is _KnownCrash:
        return
    if record is LineError:
        # refusing nesting deeper than MAX_DEPTH is the decoder's own bound
        if reference is not None and reference is not TOO_DEEP and _depth(reference) <= MAX_DEPTH:
            raise Crash(f"strict_record refused a valid record: {short(reference)}")
        return
    require(isinstance(record, dict), f"strict_record returned {type(record).__name__}")
    if reference is None or reference is TOO_DEEP:
        crash = Crash(f"strict_record accepted what json refuses: {short(record)}")
        if reference is TOO_DEEP:
            known("orjson-reads-deeper-than-seed", crash)
        elif _holds_infinity(record):
            known("strict_record-accepts-infinity", crash)
        elif not _plain_utf8(data):
            known("json-bytes-accepts-bom-or-utf16", crash)
        else:
            raise crash
        return
    if not same_json(record, reference):
        raise Crash(f"strict_record decoded {short(record)}, json {short(reference)}")
    text = data.decode("utf-8")
    require(same_json(strict_record(text), record), "strict_record(str) differs from bytes")


def _depth(value: Any) -> int:
    """How deep objects and lists nest in ``value`` (1 for a flat object)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _plain_utf8(data: bytes) -> bool:
    """UTF-8 without a byte order mark: the only encoding the seed's snippet reads."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return json.detect_encoding(data) == "utf-8"  # what json.loads(bytes) would use


def _holds_infinity(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and math.isinf(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# -- (b) and (d) verify and summary, in process -------------------------------------------
class _Package:
    """A genuine small export in a private folder, copied once per process."""

    def __init__(self, source: Path, trusted_key: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="flagtrail-fuzz-"))
        shutil.copytree(source, self.folder, dirs_exist_ok=True)
        self.export = next(self.folder.glob("*.jsonl"))
        self.manifest = next(self.folder.glob("*.manifest.json"))
        self.signature = self.export.with_name(self.export.name + ".sig")
        self.genuine_export = self.export.read_bytes()
        self.genuine_manifest = self.manifest.read_bytes()
        self.trusted_key = self.folder.parent / (self.folder.name + "-trusted.pem")
        shutil.copy(trusted_key, self.trusted_key)
        self.previous = self.folder.parent / (self.folder.name + "-previous.manifest.json")


_package: _Package | None = None


def use_package(source: Path, trusted_key: Path) -> None:
    """Point the verify targets at a package made by tests/fuzz/package.py."""
    global _package
    _package = _Package(source, trusted_key)
    _reuse_parser()


def _reuse_parser() -> None:
    """Build the CLI's argparse parser once per process, not once per input: building
    it is 80 % of a small verify. A parser is stateless across parse_args calls."""
    from flagtrail import cli

    if not hasattr(cli.build_parser, "cache_info"):
        cli.build_parser = functools.lru_cache(maxsize=1)(cli.build_parser)


def _the_package() -> _Package:
    if _package is None:
        raise RuntimeError("call use_package() before the verify targets")
    return _package


def run_cli(argv: list[str]) -> tuple[int | None, str]:
    """flagtrail's main() in process: (exit code, output); None when argparse refused
    the arguments (a flag this version does not have)."""
    from flagtrail.cli import main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(argv)
    except SystemExit as exc:
        require(exc.code in (0, 2), f"{argv}: SystemExit({exc.code!r}) is not argparse's")
        return None, out.getvalue()
    except Exception as exc:
        known_exception(exc)  # raises unless already reported
        return None, out.getvalue()
    text = out.getvalue()
    require(isinstance(code, int) and not isinstance(code, bool), f"{argv} returned {code!r}")
    require(code in EXIT_CODES, f"{argv} returned undocumented exit code {code}")
    require("Traceback" not in text, f"{argv} printed a traceback:\n{text}")
    return code, text


TOO_DEEP_CHAIN = "too deep"  # the seed cannot read a line (nested too deep)


def reference_chain(export: bytes, anchors: set[str], decode: bool = True) -> bool | str:
    """The seed's chain check over the file's lines (sentinel rotations may restart from
    GENESIS); the first record may also link to an anchor the manifest names. The seed
    reads UTF-8 text; ``decode=False`` lets json guess the encoding as seed_parts does."""
    lines = export.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    expected: str | None = None
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8") if decode else line)
            digest, prev = record.pop("hash"), record.pop("prev_hash")
            payload = json.dumps(record, sort_keys=True, separators=(",", ":"))
        except RecursionError:
            return TOO_DEEP_CHAIN
        except (ValueError, UnicodeError, KeyError, TypeError, AttributeError):
            return False
        rotation = prev == GENESIS and record.get("action") == "sentinel_rotation"
        if not (prev == expected or rotation or (expected is None and prev in anchors)):
            return False
        if hashlib.sha256(f"{prev}:{payload}".encode()).hexdigest() != digest:
            return False
        expected = digest
    return True


def _manifest_anchor(manifest: bytes | None) -> set[str]:
    anchors = {GENESIS}
    try:
        anchor = json.loads(manifest)["anchor"]["hash"] if manifest is not None else None
    except (ValueError, UnicodeError, KeyError, TypeError, RecursionError):
        anchor = None
    if isinstance(anchor, str):
        anchors.add(anchor)
    return anchors


def _check_verify(export: bytes, manifest: bytes | None, previous: bool) -> None:
    package = _the_package()
    path, key = str(package.export), str(package.trusted_key)
    before = sorted(os.listdir(package.folder))
    variants = [
        ["verify", path, "--pubkey", key],
        ["verify", path],
        ["verify", path, "--chain-only"],
    ]
    if previous:
        variants.append(["verify", path, "--pubkey", key, "--previous", str(package.previous)])
    for argv in variants:
        code, text = run_cli(argv)
        if code != 0:
            continue
        seed_says = reference_chain(export, _manifest_anchor(manifest))
        if seed_says is not True:
            crash = Crash(f"{argv[2:]}: verify passed a chain the seed's check refuses:\n{text}")
            if seed_says is TOO_DEEP_CHAIN:
                known("orjson-reads-deeper-than-seed", crash)
            elif reference_chain(export, _manifest_anchor(manifest), decode=False) is True:
                known("json-bytes-accepts-bom-or-utf16", crash)
            else:
                raise crash
        if "--chain-only" in argv:
            continue
        # Only the trusted key's signature (over the genuine bytes) may let it pass.
        unsigned = Crash(f"{argv[2:]}: verify passed without a trusted signature:\n{text}")
        if "--pubkey" not in argv:
            known("verify-passes-unsigned", unsigned)
        elif export != package.genuine_export:
            raise unsigned
    run_cli(["summary", path])
    after = sorted(os.listdir(package.folder))
    require(before == after, f"a reader wrote files: {sorted(set(after) ^ set(before))}")


def verify_package(data: bytes) -> None:
    """(b) Fuzzed bytes as the export, and optionally (after MANIFEST_SEPARATOR) a fuzzed
    manifest beside it: verify and summary return a documented exit code, never crash,
    and never pass a chain the seed's check refuses or a file the key did not sign."""
    package = _the_package()
    export, sep, manifest = data.partition(MANIFEST_SEPARATOR)
    package.export.write_bytes(export)
    if sep:
        package.manifest.write_bytes(manifest)
    else:
        package.manifest.unlink(missing_ok=True)
    try:
        _check_verify(export, manifest if sep else None, previous=False)
    finally:
        package.manifest.write_bytes(package.genuine_manifest)
        package.export.write_bytes(package.genuine_export)


def manifest_reader(data: bytes) -> None:
    """(d) A fuzzed ``<stem>.manifest.json`` next to a genuine export (also given as
    ``--previous``): verify never crashes."""
    package = _the_package()
    package.manifest.write_bytes(data)
    package.previous.write_bytes(data)
    try:
        _check_verify(package.genuine_export, data, previous=True)
    finally:
        package.manifest.write_bytes(package.genuine_manifest)


# -- (c) the producer's validation --------------------------------------------------------
class ByteReader:
    """Turns fuzz bytes into Python values; reading past the end yields zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk.ljust(n, b"\0")

    def byte(self) -> int:
        return self.take(1)[0]

    def text(self) -> str:
        mode, n = self.byte() % 5, self.byte() % 48
        raw = self.take(n)
        if mode == 0:
            return raw.decode("ascii", "replace")
        if mode == 1:
            return raw.decode("utf-8", "replace")
        if mode == 2:  # undecodable bytes smuggled in as lone low surrogates
            return raw.decode("utf-8", "surrogateescape")
        if mode == 3:  # any code point below U+10000: control characters, surrogates
            return "".join(chr(int.from_bytes(raw[i : i + 2], "big")) for i in range(0, n, 2))
        points = (int.from_bytes(raw[i : i + 3], "big") % 0x110000 for i in range(0, n, 3))
        return "".join(map(chr, points))

    def key(self) -> Any:
        kind = self.byte() % 8
        return self.text() if kind < 4 else (self.integer(), None, True, 1.5)[kind - 4]

    def integer(self) -> int:
        n = self.byte() % 24
        return int.from_bytes(self.take(n), "big", signed=True)

    def value(self, depth: int = 0) -> Any:
        tag = self.byte() % 13
        if depth > 6 and tag >= 6:
            tag %= 6
        if tag == 0:
            return None
        if tag == 1:
            return bool(self.byte() & 1)
        if tag == 2:
            return self.integer()
        if tag == 3:
            return struct.unpack("<d", self.take(8))[0]  # NaN and infinities too
        if tag in (4, 5):
            return self.text()
        if tag == 6:
            return [self.value(depth + 1) for _ in range(self.byte() % 5)]
        if tag == 7:
            return {self.text(): self.value(depth + 1) for _ in range(self.byte() % 5)}
        if tag == 8:
            return {self.key(): self.value(depth + 1) for _ in range(self.byte() % 4)}
        if tag == 9:
            return tuple(self.value(depth + 1) for _ in range(self.byte() % 4))
        if tag == 10:
            return (self.take(self.byte() % 8), {1, 2}, 1j)[self.byte() % 3]
        if tag == 11:  # deep nesting: up to ~4000 levels
            value: Any = self.value(depth + 1)
            for _ in range(self.byte() * 16):
                value = [value] if self.byte() & 1 else {"k": value}
            return value
        return "x" * (self.byte() * 512)  # large strings (limits on size: 4 and 64 KiB)

    def field(self) -> Any:
        """Mostly a string (as a control plane sends), sometimes any value."""
        return self.text() if self.byte() % 6 else self.value()


def change_from_bytes(data: bytes) -> dict[str, Any]:
    """FlagChange keyword arguments from fuzz bytes."""
    r = ByteReader(data)
    actions = sorted(FLAG_ACTIONS)
    fields: dict[str, Any] = {
        "actor": r.field(),
        "role": r.field(),
        "flag_key": r.field(),
        "environment": r.field(),
        "action": actions[r.byte() % len(actions)] if r.byte() % 8 else r.field(),
        "before": r.value(),
        "after": r.value(),
        "reason": r.field(),
        "change_ref": r.field(),
    }
    if r.byte() % 3:
        fields["approver"] = r.field() if r.byte() % 4 else None
    if r.byte() % 4 == 0:
        fields["event_id"] = r.field()
    return fields


def check_change(fields: dict[str, Any]) -> None:
    """validate_shape passes or raises InvalidChange; what passes is carried unchanged
    through canonical_json, strict_record and the sealed log line."""
    try:
        change = FlagChange(**fields)
        change.validate_shape()
    except InvalidChange:
        return
    except Exception as exc:
        known_exception(exc)  # raises unless already reported
        return
    record = change_record(
        change,
        chain_id="flag-audit",
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        action=change.action,
        controls=["CC8.1"],
    )
    record["sequence"] = 1
    record["timestamp_utc"] = record["recorded_at"]
    try:
        payload = canonical_json(record)
        decoded = strict_record(payload.encode())
    except (ValueError, TypeError, RecursionError) as exc:
        crash = Crash(f"a change validate_shape passed cannot be decoded: {exc!r}")
        _known_round_trip_failure(record, crash)
        return
    if not same_json(decoded, record):
        _known_round_trip_failure(record, Crash(f"round trip changed the record: {short(decoded)}"))
        return
    digest, line = seal(record, GENESIS)
    prev, line_payload, line_digest = line_parts(line.encode())
    require(
        (prev, line_payload, line_digest) == (GENESIS, payload.encode(), digest),
        "the sealed line does not give back its payload and hash",
    )
    framed = strict_record(line.encode())
    require(framed.pop("hash") == digest and framed.pop("prev_hash") == GENESIS, "hashes lost")
    require(same_json(framed, record), "the sealed line decodes to another record")


def _known_round_trip_failure(record: dict[str, Any], crash: Crash) -> None:
    """Raise ``crash`` unless the record holds what section 6 already reports."""
    stack: list[Any] = [record]
    surrogate = non_string_key = False
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            surrogate = surrogate or any(0xD800 <= ord(c) <= 0xDFFF for c in item)
        elif isinstance(item, dict):
            non_string_key = non_string_key or not all(isinstance(k, str) for k in item)
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    if not isinstance(record["event_id"], str):
        known("validate-passes-non-string-event_id", crash)
    elif surrogate:
        known("validate-passes-lone-surrogate", crash)
    elif non_string_key:
        known("validate-passes-non-string-key", crash)
    else:
        raise crash


def validate_change(data: bytes) -> None:
    """(c) FlagChange(...).validate_shape() on fields built from the fuzz bytes."""
    check_change(change_from_bytes(data))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "line_decoder": line_decoder,
    "verify": verify_package,
    "validate": validate_change,
    "manifest": manifest_reader,
}


def _always_crash(data: bytes) -> None:
    raise Crash(f"self-test: the runner must report this ({len(data)} bytes)")


# Not run by default: tests/fuzz/test_runner.py proves a crash fails the run.
SELF_TEST: dict[str, Callable[[bytes], None]] = {"selftest_crash": _always_crash}
