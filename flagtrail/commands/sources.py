"""`flagtrail sources unleash install|follow|check`: Unleash as a source of evidence."""

from __future__ import annotations

import argparse
import os
import signal

from flagtrail.options import add_backends, positive, seconds
from producers.errors import ConfigError

# a late-committing Unleash transaction is seconds behind, not days: a day is plenty
MAX_LOOKBACK_S = 86_400


def register(sub: argparse._SubParsersAction) -> None:
    sources = sub.add_parser("sources", help="flag platforms as sources (Unleash)")
    platforms = sources.add_subparsers(dest="platform", required=True, metavar="PLATFORM")
    unleash = platforms.add_parser("unleash", help="Unleash: same-database trigger or follower")
    how = unleash.add_subparsers(dest="how", required=True, metavar="COMMAND")

    p = how.add_parser(
        "install",
        help="install the outbox trigger on Unleash's events table",
        description="Creates the outbox in Unleash's PostgreSQL database and a trigger that "
        "writes each Unleash flag event's outbox row in Unleash's own transaction. "
        "The policy's production environments and the chain are fixed at install: "
        "install again after changing them.",
    )
    p.add_argument("--database-url", required=True, help="Unleash's PostgreSQL database URL")
    p.add_argument("--chain", help="chain id [env FLAGTRAIL_CHAIN, default flag-audit]")
    p.add_argument("--uninstall", action="store_true", help="remove the trigger instead")
    p.set_defaults(func=cmd_install)

    p = how.add_parser(
        "check",
        help="is the trigger enabled, and has every Unleash flag event an outbox row?",
    )
    p.add_argument("--database-url", required=True, help="Unleash's PostgreSQL database URL")
    p.set_defaults(func=cmd_check)

    p = how.add_parser(
        "follow",
        help="follow Unleash's event search API into the outbox (exactly once)",
        description="Reads /api/admin/search/events with a cursor kept in the outbox "
        "database, written with the rows it covers. SIGTERM finishes the current chunk.",
    )
    p.add_argument("--url", required=True, help="Unleash's base URL, e.g. http://unleash:4242")
    p.add_argument("--token", help="admin API token [env FLAGTRAIL_UNLEASH_TOKEN]")
    add_backends(p, log=False)
    p.add_argument("--name", default="unleash", help="cursor name (one per Unleash instance)")
    p.add_argument("--once", action="store_true", help="record what is there and exit")
    p.add_argument("--interval", type=seconds, default=2.0, help="seconds between polls")
    p.add_argument(
        "--lookback",
        type=seconds,
        default=30.0,
        help=f"seconds re-read behind the cursor (at most {MAX_LOOKBACK_S:,})",
    )
    p.add_argument("--chunk", type=positive, default=1000, help="events per outbox transaction")
    p.set_defaults(func=cmd_follow)


def cmd_install(args: argparse.Namespace) -> int:
    from flagtrail import settings
    from producers.policy import load_policy
    from producers.sources.unleash_trigger import (
        TriggerSettings,
        install_trigger,
        uninstall_trigger,
    )

    engine = settings.make_engine(args.database_url)
    try:
        if args.uninstall:
            uninstall_trigger(engine)
            print("Unleash trigger removed")
            return 0
        trigger = TriggerSettings.from_policy(settings.chain_id(args.chain), load_policy())
        install_trigger(engine, trigger)
    finally:
        engine.dispose()
    production = ", ".join(sorted(trigger.production)) or "(none)"
    print(
        f"Unleash trigger installed: chain {trigger.chain_id}, production environments {production}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from flagtrail import settings
    from producers.sources.unleash_audit import audit_trigger

    engine = settings.make_engine(args.database_url)
    try:
        report = audit_trigger(engine)
    finally:
        engine.dispose()
    print(f"trigger: {report.state}")
    print(f"Unleash flag events without an outbox row: {len(report.missing)}")
    for event_id in report.missing[:20]:
        print(f"  unleash event {event_id}")
    print(f"outbox rows whose Unleash event is gone: {len(report.deleted)}")
    return 0 if report.ok else 1


def cmd_follow(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from flagtrail import settings
    from producers.policy import load_policy
    from producers.sources.unleash_follow import UnleashFollower, http_fetch

    if not args.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {args.url!r} is not Unleash's http(s) base URL")
    token = args.token or os.environ.get("FLAGTRAIL_UNLEASH_TOKEN")
    if not token:
        raise ConfigError("give Unleash's admin API token: --token or FLAGTRAIL_UNLEASH_TOKEN")
    if args.interval <= 0 or args.lookback > MAX_LOOKBACK_S:
        raise ConfigError(
            f"--interval must be more than 0 seconds, --lookback at most {MAX_LOOKBACK_S:,}"
        )
    follower = UnleashFollower(
        settings.make_engine(settings.outbox_url(args.outbox_url)),
        http_fetch(args.url, token),
        policy=load_policy(),
        chain_id=settings.chain_id(args.chain),
        name=args.name,
        lookback=timedelta(seconds=args.lookback),
        chunk=args.chunk,
    )
    if args.once:
        written = follower.poll_once()
        print(f"recorded {written} Unleash event(s)")
        return 0
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    import structlog

    log = structlog.get_logger("flagtrail.sources.unleash")
    log.info("unleash.follow.started", url=args.url, cursor=args.name)

    def report(written: int, problem: str | None) -> None:
        if problem:
            log.warning("unleash.follow.waiting", reason=problem)
        elif written:
            log.info("unleash.follow.recorded", events=written)

    follower.run(args.interval, lambda: bool(stopping), report)
    return 0
