"""``flagtrail changes FILE``: every change in an export, blocked attempts apart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_changes(args: argparse.Namespace) -> int:
    from relay.changes import list_changes, render_csv, render_json, render_table

    listing = list_changes(Path(args.file), args.env)
    render = {"table": render_table, "csv": render_csv, "json": render_json}[args.format]
    sys.stdout.write(render(listing))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "changes",
        help="list every flag change in an export (who, approver, before, after, proof)",
        description="List every flag change in an export: time, flag, environment, action, "
        "actor, approver, role, before, after, reason, change_ref, sequence and hash. Blocked "
        "attempts (rejected events) are listed apart, and each state continuity break (a "
        "change whose before is not the previous change's after) names both records. This "
        "reads, it does not verify: `flagtrail verify` or `flagtrail report` give the proof.",
    )
    p.add_argument("file", help="the export's JSONL file")
    p.add_argument(
        "--env",
        help="only this environment, by name or policy class (production includes prod, live…)",
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_changes)
