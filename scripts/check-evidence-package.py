#!/usr/bin/env python3
"""The weekly job's checks on a package `flagtrail verify` has passed, without the log:
fail on an undocumented gap, and when the count falls below half of the previous
export's (the seed's drift check: the audit pipeline may be broken).

    check-evidence-package.py THIS.manifest.json [OLD.manifest.json]
"""

from __future__ import annotations

import json
import sys

DRIFT_THRESHOLD = 0.5


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        manifest = json.load(f)
    failed = False
    for gap in manifest["undocumented_gaps"]:
        print(f"UNDOCUMENTED gap ({gap['kind']}) {gap['start']} → {gap['end']}: {gap['detail']}")
        failed = True
    count = manifest["record_count"]
    if len(argv) == 2:
        with open(argv[1], encoding="utf-8") as f:
            before = json.load(f)["record_count"]
        print(f"events: {count} (previous export: {before})")
        if count < DRIFT_THRESHOLD * before:
            print(f"DRIFT: fewer than {DRIFT_THRESHOLD:.0%} of the previous export's events")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
