"""``flagtrail approval-digest``: the change_digest an approval token must carry.

An approval UI asks the OpenID Connect provider for a token whose
``authorization_details`` entry names the flag, the environment and this digest
(producers/oidc/approval.py); the command prints it for the change described
exactly as it will be recorded, so a script or a person can check the UI.
"""

from __future__ import annotations

import argparse
import json


def cmd_approval_digest(args: argparse.Namespace) -> int:
    from producers.events import FlagChange
    from producers.oidc.approval import APPROVAL_TYPE, change_digest

    change = FlagChange(
        actor="",
        role="",
        flag_key=args.flag,
        environment=args.env,
        action=args.action,
        before=args.before,
        after=args.after,
    )
    change.validate_shape()  # a change that could never be recorded has no digest
    entry = {
        "type": APPROVAL_TYPE,
        "flag_key": change.flag_key,
        "environment": change.environment,
        "change_digest": change_digest(change),
    }
    print(json.dumps(entry, sort_keys=True) if args.json else entry["change_digest"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import json_arg

    p = sub.add_parser(
        "approval-digest",
        help="the change_digest an OpenID Connect approval token must carry",
        description="Prints the SHA-256 of the canonical JSON of the change's flag_key, "
        "environment, action, before and after: what an approval token's "
        "authorization_details entry of type flagtrail_change binds.",
    )
    p.add_argument("--flag", required=True, help="flag key, e.g. checkout-v2")
    p.add_argument("--env", required=True, help="environment, exactly as it will be recorded")
    p.add_argument("--action", required=True, choices=["create", "update", "rollout", "delete"])
    p.add_argument("--before", type=json_arg, default=None, help="prior state, JSON")
    p.add_argument("--after", type=json_arg, default=None, help="new state, JSON")
    p.add_argument(
        "--json", action="store_true", help="print the whole authorization_details entry"
    )
    p.set_defaults(func=cmd_approval_digest)
