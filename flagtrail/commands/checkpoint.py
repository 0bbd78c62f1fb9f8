"""``flagtrail checkpoint``: print a chain's latest signed Merkle checkpoint (C2SP
tlog-checkpoint note), or, with --check, rebuild the tree from the log and compare."""

from __future__ import annotations

import argparse
import sys


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from flagtrail import settings
    from relay.logs import open_log
    from relay.tree import check_against_log, open_store

    chain = settings.chain_id(args.chain)
    log_url = settings.log_url(args.log_url)
    store = open_store(settings.tree_url(log_url, args.tree_url), chain, read_only=True)
    try:
        if args.check:
            with open_log(log_url, chain, read_only=True) as audit_log:
                print(check_against_log(audit_log, store))
            return 0
        note = store.latest_checkpoint()
    finally:
        store.close()
    if note is None:
        print(
            f"chain {chain} has no signed checkpoint yet (the relay signs them with "
            "FLAGTRAIL_NOTE_KEY_PATH)",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(note.decode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_backends

    p = sub.add_parser(
        "checkpoint",
        help="print the chain's latest signed Merkle checkpoint",
        description="Prints the latest C2SP tlog-checkpoint the relay signed for the chain "
        "(origin <note key name>/<chain>, tree size, root hash, signing time). With "
        "--check, rebuilds the tree from the log and compares it with the stored tree "
        "and that checkpoint.",
    )
    p.add_argument(
        "--tree-url",
        help="where the Merkle trees are stored [env FLAGTRAIL_TREE_URL; default the "
        "SQLite log's file, else the outbox database]",
    )
    p.add_argument("--check", action="store_true", help="rebuild the tree from the log")
    add_backends(p, outbox=False)
    p.set_defaults(func=cmd_checkpoint)
