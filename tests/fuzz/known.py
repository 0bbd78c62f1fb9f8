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
KNOWN: dict[str, str] = {}


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
