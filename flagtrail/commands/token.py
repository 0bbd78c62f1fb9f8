"""`flagtrail token create|list|revoke`: read-only tokens for the evidence API."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_backends

    token = sub.add_parser("token", help="create, list and revoke evidence API tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    p = actions.add_parser(
        "create",
        help="create a token; it is printed once, on the last line",
        description="Only the token's SHA-256 is stored (in the outbox database).",
    )
    p.add_argument("--name", required=True, help="who or what uses it, e.g. ci-weekly")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        help="export:read (pull evidence) or metrics:read; repeatable",
    )
    p.add_argument("--expires", default="90d", help="lifetime: 90d, 12h, 30m or never (90d)")
    add_backends(p, log=False)
    p.set_defaults(func=cmd_create)

    p = actions.add_parser("list", help="names, scopes, expiry and last use (never secrets)")
    add_backends(p, log=False)
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("revoke", help="revoke a token at once (a running pull stops too)")
    p.add_argument("name")
    add_backends(p, log=False)
    p.set_defaults(func=cmd_revoke)


def _store(args: argparse.Namespace):  # -> TokenStore
    from flagtrail.api.tokens import TokenStore
    from flagtrail.settings import make_engine, outbox_url

    return TokenStore(make_engine(outbox_url(args.outbox_url)))


def cmd_create(args: argparse.Namespace) -> int:
    from flagtrail.api.tokens import check_name, check_scopes, parse_expiry

    check_name(args.name)
    scopes = sorted(check_scopes([s for given in args.scope for s in given.split(",") if s]))
    lifetime = parse_expiry(args.expires)
    now = datetime.now(UTC)
    token = _store(args).create(args.name, scopes, lifetime, now)
    expiry = (now + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ") if lifetime else "never"
    print(f"token {args.name} ({' '.join(scopes)}), expires {expiry}; shown once, keep it secret:")
    print(token)
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def cmd_list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    tokens = _store(args).list()
    if not tokens:
        print("no tokens (create one with `flagtrail token create`)")
        return 0
    print(f"{'NAME':24} {'SCOPES':26} {'STATE':8} {'EXPIRES':20} {'LAST USED':20}")
    for t in tokens:
        print(
            f"{t.name:24} {' '.join(sorted(t.scopes)):26} {t.state(now):8} "
            f"{_when(t.expires_at) if t.expires_at else 'never':20} {_when(t.last_used_at):20}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _store(args).revoke(args.name, datetime.now(UTC))
    print(f"token {args.name} revoked")
    return 0
