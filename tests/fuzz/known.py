"""Crashes already found and reported to the code's owner, each with a strict xfail
regression test in tests/fuzz/test_regressions.py.

A fuzz run stops on any *new* crash; a known one is counted and skipped, so that
the run goes on looking for others. FLAGTRAIL_FUZZ_STRICT=1 turns them back into
crashes. When the owner fixes one, its xfail test starts passing (strict: the
suite fails), and the marker and the entry here go.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections import Counter
from pathlib import Path

STRICT = os.environ.get("FLAGTRAIL_FUZZ_STRICT") == "1"
REPO = Path(__file__).resolve().parent.parent.parent
hits: Counter[str] = Counter()

# kind -> what breaks and whose part of issue 7 fixes it. A kind is either a broken
# invariant named by a target, or "file:function:Exception" of an uncaught exception's
# innermost frame in flagtrail's own code.
KNOWN: dict[str, str] = {
    "verify-passes-unsigned": "section 1: verify exits 0 with no trusted key and no --chain-only",
    "relay/verify.py:check_chunk:UnicodeDecodeError": (
        "section 6/16: verify crashes on a line whose prev_hash slice is not UTF-8 "
        "(fast_parts does not check the hash slices)"
    ),
    "relay/verify.py:check_chunk:UnicodeEncodeError": (
        "section 6/16: verify crashes on a line whose prev_hash or hash holds an escaped "
        "lone surrogate (seed_parts returns it, check_chunk encodes it)"
    ),
    "relay/canonical.py:seed_parts:RecursionError": (
        "section 6: seed_parts (so line_parts and verify) lets RecursionError out of a "
        "line nested deeper than json.loads can read (orjson refuses it first)"
    ),
    "relay/summary.py:count_controls:TypeError": (
        "section 6: summary counts soc2_controls without checking them (a number, or a "
        "list holding objects, crashes it); it does not use strict_record"
    ),
    "relay/summary.py:format_summary:TypeError": (
        "section 6: summary sorts controls of mixed types (a number among strings)"
    ),
    "relay/verify.py:verify_export:AttributeError": (
        "sections 2/6: verify reads manifest['anchor'] without checking it is an object"
    ),
    "relay/verify.py:_load_manifest:RecursionError": (
        "sections 2/6: a manifest nested deeper than json.loads can read crashes verify"
    ),
    "relay/verify.py:verify_export:OSError": (
        "sections 2/6: verify stats the manifest's public_key name without catching "
        "OSError (a name too long)"
    ),
    "relay/verify.py:render:TypeError": (
        "sections 2/6: a manifest anchor hash that is not a string crashes render"
    ),
    "relay/verify.py:_check_manifest:TypeError": (
        "sections 2/6: a record_count that is not an int crashes _check_manifest"
    ),
    "relay/verify.py:_check_manifest:AttributeError": (
        "sections 2/6: a manifest head that is not an object crashes _check_manifest"
    ),
    "relay/canonical.py:line_parts:UnicodeDecodeError": (
        "section 6/16: line_parts crashes on a line whose prev_hash slice is not UTF-8"
    ),
    "fast_parts-unchecked-hash": (
        "section 6/16: fast_parts returns prev_hash/hash slices that are not hex, so it "
        "disagrees with seed_parts (escaped or non-ASCII hash fields)"
    ),
    "strict_record-accepts-infinity": (
        "section 6: strict_record's json fallback reads 1e400 as float('inf') (orjson "
        "refuses it, json does not): a record no strict encoder can write back"
    ),
    "orjson-reads-deeper-than-seed": (
        "section 6: strict_record and fast_parts (orjson, depth 1024) accept records nested "
        "deeper than json.loads reads (~1000): verify passes a line the seed's snippet "
        "cannot read; strict_record should bound nesting well below both"
    ),
    "json-bytes-accepts-bom-or-utf16": (
        "section 6: strict_record and seed_parts hand bytes to json.loads, which also "
        "reads a UTF-8 BOM, UTF-16 and UTF-32; the seed's snippet (UTF-8 text) refuses them"
    ),
    "validate-passes-non-string-event_id": (
        "section 6: validate_shape never checks event_id; bytes or an object there "
        "passes and then canonical_json raises TypeError in Outbox.record"
    ),
    "validate-passes-lone-surrogate": (
        "section 6: validate_shape passes a lone surrogate (in a field, a key or a value) "
        "that strict_record then refuses: a poison pill"
    ),
    "validate-passes-non-string-key": (
        "section 6: validate_shape passes a non-string key in before/after, which "
        "canonical JSON turns into a string (the recorded change differs)"
    ),
    "producers/events.py:_check_json_value:RecursionError": (
        "section 6: validate_shape lets RecursionError out of deep before/after"
    ),
}


def signature(exc: BaseException) -> str:
    """``file:function:Exception`` of the innermost frame in flagtrail's own code."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(REPO) and not path.is_relative_to(REPO / "tests"):
            where = f"{path.relative_to(REPO)}:{frame.name}"
    return f"{where}:{type(exc).__name__}"


def known(kind: str, crash: BaseException) -> None:
    """Raise ``crash`` unless it is of a reported kind (and not STRICT); else count it."""
    if STRICT or kind not in KNOWN:
        raise crash
    hits[kind] += 1
    if hits[kind] == 1 and os.environ.get("FLAGTRAIL_FUZZ_CHILD"):  # the runner reads these
        print(f"fuzz-known: {kind}", file=sys.stderr, flush=True)


def known_exception(exc: BaseException) -> None:
    """An uncaught exception from flagtrail: raise it unless its signature is known."""
    known(signature(exc), exc)
