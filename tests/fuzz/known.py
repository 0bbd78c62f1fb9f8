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
    "relay/verify.py:check_chunk:UnicodeEncodeError": (
        "section 6/16: verify crashes on a line whose prev_hash or hash holds an escaped "
        "lone surrogate (seed_parts returns it, check_chunk encodes it)"
    ),
    "relay/canonical.py:seed_parts:RecursionError": (
        "section 6: seed_parts (so line_parts and verify) lets RecursionError out of a "
        "line nested deeper than json.loads can read (orjson refuses it first)"
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
