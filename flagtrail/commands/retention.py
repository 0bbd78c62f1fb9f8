"""``flagtrail retention apply``: purge what is past its retention, check the log's."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_backends, add_identities, positive

    group = sub.add_parser(
        "retention",
        help="apply retention: outbox rows, vault keys, the log's 24 months",
        description="Purges relayed outbox rows older than the outbox retention (never a "
        "row the relay has not moved), crypto-shreds vault entries unused for the vault "
        "retention, and checks that the log keeps at least 24 months.",
    )
    commands = group.add_subparsers(dest="retention_command", required=True)
    p = commands.add_parser("apply", help="apply retention and chain what was done")
    p.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    p.add_argument("--actor", help="who applies it (an operator role; not for --dry-run)")
    p.add_argument(
        "--outbox-days",
        type=positive,
        help="relayed outbox rows kept [env FLAGTRAIL_OUTBOX_RETENTION_DAYS, default 30]",
    )
    p.add_argument(
        "--vault-days",
        type=positive,
        help="days a subject stays resolvable after its last record "
        "[env FLAGTRAIL_VAULT_RETENTION_DAYS, default 730]",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_identities(p)
    add_backends(p)
    p.set_defaults(func=cmd_apply)


def cmd_apply(args: argparse.Namespace) -> int:
    from flagtrail import settings
    from flagtrail.cli import _outbox
    from producers.retention import apply_retention

    report = apply_retention(
        _outbox(args),
        settings.log_url(args.log_url),
        args.actor,
        dry_run=args.dry_run,
        outbox_days=args.outbox_days,
        vault_days=args.vault_days,
    )
    if args.json:
        print(
            json.dumps(
                {"dry_run": report.dry_run, "event_id": report.event_id, **report.as_meta()},
                indent=2,
            )
        )
        return 0
    verb = "would purge" if report.dry_run else "purged"
    print(f"log: {report.log}")
    print(
        f"outbox: {verb} {report.outbox_rows_purged} relayed rows recorded before "
        f"{report.outbox_cutoff}; kept {report.old_unrelayed_rows_kept} older rows not yet "
        "relayed" + (" (is the relay running?)" if report.old_unrelayed_rows_kept else "")
    )
    shred = "would crypto-shred" if report.dry_run else "crypto-shredded"
    print(
        f"vault: {shred} {len(report.subjects_shredded)} subjects unused since "
        f"{report.vault_cutoff}"
    )
    if report.event_id:
        print(f"chained as retention_applied (event {report.event_id})")
    return 0
