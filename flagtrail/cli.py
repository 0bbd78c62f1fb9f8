"""The ``flagtrail`` command: thin argument handling over producers/ and relay/.

Commands import what they use inside their function, so that `flagtrail verify`
starts in a tenth of a second instead of loading SQLAlchemy and Kafka clients.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from flagtrail import __version__, options
from producers.errors import (
    EXIT_ERROR,
    ConfigError,
    FlagtrailError,
    InvalidChange,
    PolicyError,
)


def _outbox(args: argparse.Namespace):  # -> producers.Outbox
    from flagtrail.service import open_outbox
    from flagtrail.settings import Settings

    return open_outbox(Settings.from_args(args))


def cmd_record(args: argparse.Namespace) -> int:
    from flagtrail.controlplane import apply_change, ensure_flag_store
    from producers import FlagChange

    outbox = _outbox(args)
    ensure_flag_store(outbox)
    change = FlagChange(
        actor=args.actor,
        approver=args.approver or None,
        role=args.role,
        flag_key=args.flag,
        environment=args.env,
        action=args.action,
        before=args.before,
        after=args.after,
        reason=args.reason,
        change_ref=args.change_ref,
    )
    tokens = {  # the [oidc] provider's JWTs (flags, else env: not in the process list)
        "actor_token": args.actor_token or os.environ.get("FLAGTRAIL_ACTOR_TOKEN") or None,
        "approval_token": args.approval_token or os.environ.get("FLAGTRAIL_APPROVAL_TOKEN") or None,
    }
    with outbox.engine.begin() as conn:
        event_id = apply_change(conn, outbox, change, **tokens)
    print(f"recorded {args.action} of {args.flag} in {args.env}: event {event_id}")
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    from flagtrail.loadgen import generate

    outbox = _outbox(args)
    directory = outbox.identities.directory()
    result = generate(
        outbox,
        directory,
        args.events,
        args.rate,
        args.per_transaction,
        args.blocked_ratio,
        args.seed,
        progress=lambda r: print(
            f"  … {r.recorded + r.rejected} changes ({r.rejected} blocked), {r.seconds:.1f}s",
            file=sys.stderr,
        ),
    )
    rate = (result.recorded + result.rejected) / result.seconds if result.seconds else 0
    print(
        f"recorded {result.recorded} changes and {result.rejected} blocked attempts in "
        f"{result.seconds:.2f}s ({rate:,.0f}/s)"
    )
    return 0


def _relay(args: argparse.Namespace):  # -> relay.relay.Relay
    from flagtrail.service import make_relay
    from flagtrail.settings import Settings

    return make_relay(
        Settings.from_args(args),
        args.batch_size,
        args.clock_skew_tolerance,
        args.max_payload_bytes,
    )


def cmd_relay(args: argparse.Namespace) -> int:
    from relay.lease import lease_for

    relay = _relay(args)
    if args.once:
        from flagtrail.service import relay_once

        count = relay_once(relay)
        print(f"relayed {count} events; chain head is sequence {relay.head.sequence}")
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    lease = lease_for(relay.source.engine, relay.source.chain_id)
    server = None
    port = args.metrics_port or os.environ.get("FLAGTRAIL_METRICS_PORT")
    if port:
        from relay.metrics import RelayMetrics, serve

        relay.observer = RelayMetrics(relay.source.chain_id, None, args.clock_skew_tolerance)
        try:
            latest = relay.tree.store.latest_checkpoint if relay.tree else None
            server = serve(relay.observer, int(port), args.metrics_host, latest)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot serve metrics on {args.metrics_host}:{port}: {exc}"
            ) from None
    try:
        relay.run(stop, idle_wait=args.idle_wait, lease=lease)
    finally:
        if server is not None:
            server.shutdown()
        if relay.witnesses is not None:
            relay.witnesses.close()  # the last checkpoint goes to the witnesses before exit
        if relay.stamper is not None:
            relay.stamper.close()
        lease.release()
        relay.log.close()
        relay.source.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from flagtrail import service
    from flagtrail.settings import Settings
    from producers.controls import parse_controls

    controls = None
    if args.controls:
        try:
            controls = parse_controls(args.controls)
        except ValueError as exc:
            raise ConfigError(f"--controls: {exc}") from None
    from relay.stamping import tsa_url as chosen_tsa

    settings = replace(
        Settings.from_args(args), tsa_url=chosen_tsa(args.tsa_url, args.no_timestamp)
    )
    paths, manifest = service.export(
        settings,
        args.start,
        args.end,
        Path(args.out),
        controls,
        previous=Path(args.previous) if args.previous else None,
        progress=lambda n: print(f"  … {n:,} records", file=sys.stderr),
    )
    tsa_url = settings.tsa_url
    print(f"Evidence file : {paths.jsonl}")
    print(f"Signature file: {paths.signature}")
    print(f"Manifest      : {paths.manifest} (signed: {paths.manifest_signature.name})")
    print(f"Summary       : {paths.summary}")
    print(f"Records       : {manifest['record_count']}")
    print(f"SHA-256       : {manifest['sha256']}")
    if manifest["record_count"] == 0:
        print("Note: no events in this window.", file=sys.stderr)
    if manifest["link"]:
        print(f"Linking records: {paths.link} ({manifest['link']['record_count']})")
    if manifest["timestamp"]:
        print(f"Timestamp     : {paths.manifest.name}.tsr (RFC 3161, {tsa_url})")
    if manifest["merkle"]:
        print(f"Merkle proofs : {paths.proof}")
    else:
        print("Note: no signed Merkle checkpoint for this chain: no proofs.", file=sys.stderr)
    print(f"Key           : {manifest['public_key_fingerprint']}")
    print(f"Verify with   : {manifest['verify_commands'][3]}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from flagtrail.options import proof_keys
    from flagtrail.service import verify
    from relay.verify import render

    report = verify(
        Path(args.file),
        [Path(p) for p in args.pubkey],
        args.key_fingerprint,
        chain_only=args.chain_only,
        anchor=args.anchor,
        workers=args.workers,
        previous=Path(args.previous) if args.previous else None,
        **proof_keys(args, checked=not args.chain_only),
    )
    print(render(report))
    return report.exit_code


def cmd_summary(args: argparse.Namespace) -> int:
    from collections import Counter

    from producers.controls import parse_controls
    from relay.summary import count_controls, format_summary

    try:
        controls = parse_controls(args.controls) if args.controls else None
    except ValueError as exc:
        raise ConfigError(f"--controls: {exc}") from None
    changes: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    counts, rotations = count_controls(Path(args.file), changes, exceptions)
    print(format_summary(counts, controls, rotations, changes, exceptions), end="")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from relay.signing import generate_keypair

    if args.type == "note":
        from relay.tree import generate_note_key

        private, public = generate_note_key(Path(args.out), args.name, args.force)
        print(f"note key   : {private} (mode 0600; point FLAGTRAIL_NOTE_KEY_PATH at it)")
        print(f"verifier   : {public} (give it to auditors: flagtrail verify --note-key)")
        return 0

    private, public = generate_keypair(Path(args.out), args.type, args.force)
    print(f"private key: {private} (mode 0600; keep it secret, point AUDIT_SIGNING_KEY_PATH at it)")
    print(f"public key : {public} (register it in your security controls documentation)")
    return 0


def _timestamp(text: str):  # -> datetime
    """RFC 3339 (2026-03-01T10:00:00Z) or a date (its midnight, UTC)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time like 2026-03-01T10:00:00Z or a date like 2026-03-01"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def cmd_rotate(args: argparse.Namespace) -> int:
    from flagtrail.service import rotate
    from flagtrail.settings import Settings

    event_id = rotate(Settings.from_args(args), args.actor, args.reason)
    print(
        f"rotation requested (event {event_id}, signed); the relay starts the new epoch when "
        "it chains it, naming the previous head"
    )
    return 0


def cmd_gap_document(args: argparse.Namespace) -> int:
    from flagtrail.service import gap_document
    from flagtrail.settings import Settings

    event_id, statement = gap_document(
        Settings.from_args(args), args.start, args.end, args.reason, args.author
    )
    print(
        f"gap {statement['from']} → {statement['to']} documented (event {event_id}, signed); "
        "it is chained with the next relay batch"
    )
    return 0


def cmd_gap_scan(args: argparse.Namespace) -> int:
    from flagtrail.service import gap_scan
    from flagtrail.settings import Settings

    scan = gap_scan(
        Settings.from_args(args),
        args.start,
        args.end,
        args.lag_threshold,
        args.silence_threshold,
        args.clock_skew_tolerance,
        [Path(p) for p in args.pubkey],
    )
    if not scan.signatures_checked:
        print(
            "statement signatures NOT checked: no key (pass --pubkey, FLAGTRAIL_TRUSTED_KEYS "
            "or AUDIT_SIGNING_KEY_PATH)"
        )
    if not scan.gaps and not scan.unreadable:
        print(f"no suspicious gaps between {scan.since} and {scan.until}")
    for problem in scan.unreadable:
        print(f"{'unreadable':14} {problem}")
    for gap in scan.gaps:
        state = f"documented by {gap.documented_by}" if gap.documented_by else "UNDOCUMENTED"
        print(
            f"{gap.kind:14} {gap.start} → {gap.end}  seq {gap.sequence}  {state}\n"
            f"{'':14} {gap.detail}"
        )
    undocumented = scan.undocumented
    if undocumented:
        print(
            f"{len(undocumented)} undocumented: document each with `flagtrail gap document "
            "--from T --to T --reason … --author …`"
        )
    if scan.unreadable:
        count = len(scan.unreadable)
        print(f"{count} unreadable record(s): the log is damaged (`flagtrail verify`)")
        return 1
    return 1 if undocumented and args.fail_on_undocumented else 0


def cmd_drift(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from flagtrail.service import drift
    from flagtrail.settings import Settings

    as_of = args.as_of or datetime.now(UTC).date()
    report = drift(Settings.from_args(args), as_of, args.weeks, args.threshold)
    start, end = report.week
    print(
        f"events {start} → {end}: {report.count}; trailing {args.weeks} weeks: "
        f"{report.trailing} (mean {report.baseline:.1f})"
    )
    if report.dropped:
        print(
            f"DRIFT: the count fell below {args.threshold:.0%} of the trailing mean; the "
            "audit pipeline may be broken (check the relay, the outbox and producers)"
        )
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flagtrail.demo import run_demo

    if args.log_level == "info":  # keep the demo's screen for the story, not the relay's logs
        configure_logging(args.log_format, "warning")
    return run_demo(Path(args.dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagtrail",
        description="Provable SOC2 evidence for feature-flag changes: outbox → relay → "
        "hash-chained log → signed exports.",
    )
    parser.add_argument("--version", action="version", version=f"flagtrail {__version__}")
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="structured log format on stderr (auto: console on a terminal)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded default",
        description="Record sample changes (some blocked), relay, export with "
        "a fresh key, verify, and show how to check it with openssl.",
    )
    p.add_argument("--dir", default=".", help="folder for the demo's files (default: here)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "record",
        help="record one flag change through the producer path",
        description="Runs the write-time policy and records the change; a "
        "blocked change exits 3 with the policy message.",
    )
    p.add_argument("--flag", required=True, help="flag key, e.g. checkout-v2")
    p.add_argument("--env", required=True, help="environment, e.g. production")
    p.add_argument("--action", required=True, choices=["create", "update", "rollout", "delete"])
    p.add_argument(
        "--actor", default="", help="identity making the change (from the token when given)"
    )
    p.add_argument("--approver", help="identity approving it (required in production)")
    p.add_argument("--role", required=True, help="role the actor acts in")
    p.add_argument("--before", type=options.json_arg, default=None, help="prior state, JSON")
    p.add_argument("--after", type=options.json_arg, default=None, help="new state, JSON")
    p.add_argument("--reason", default="", help="justification (required)")
    p.add_argument("--change-ref", default="", help="ticket, e.g. CHG-4821 (production)")
    p.add_argument(
        "--actor-token", help="the actor's JWT from the [oidc] provider [env FLAGTRAIL_ACTOR_TOKEN]"
    )
    p.add_argument(
        "--approval-token",
        help="the approver's approval JWT, bound to this change [env FLAGTRAIL_APPROVAL_TOKEN]",
    )
    options.add_identities(p)
    options.add_backends(p, log=False)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("loadgen", help="record N realistic changes (load tests, benchmarks)")
    p.add_argument("--events", type=options.positive, required=True, help="how many changes")
    p.add_argument("--rate", type=float, help="changes per second (default: as fast as possible)")
    p.add_argument(
        "--per-transaction",
        type=options.positive,
        default=1,
        help="changes per database transaction (default 1, as a control plane)",
    )
    p.add_argument(
        "--blocked-ratio",
        type=float,
        default=0.02,
        help="share of production changes that self-approve and get blocked",
    )
    p.add_argument("--seed", type=int, default=7, help="random seed")
    options.add_identities(p)
    options.add_backends(p, log=False)
    p.set_defaults(func=cmd_loadgen)

    p = sub.add_parser(
        "relay",
        help="move committed outbox rows into the immutable log",
        description="The relay daemon, single writer of the chain. SIGTERM "
        "finishes the current batch and exits.",
    )
    p.add_argument("--once", action="store_true", help="drain what is committed and exit")
    p.add_argument("--batch-size", type=options.positive, default=2000, help="rows per log append")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /healthz and /ready on this port [env FLAGTRAIL_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for the metrics port (0.0.0.0 in a container; default 127.0.0.1)",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        default=1.0,
        help="seconds to wait for new rows between polls (default 1)",
    )
    p.add_argument(
        "--clock-skew-tolerance",
        type=options.seconds,
        default=os.environ.get("FLAGTRAIL_CLOCK_SKEW_TOLERANCE_S", "5"),
        help="seconds a producer's recorded_at may run ahead of the relay's clock before "
        "it is flagged [env FLAGTRAIL_CLOCK_SKEW_TOLERANCE_S, default 5]",
    )
    p.add_argument(
        "--max-payload-bytes",
        type=options.positive,
        default=os.environ.get("FLAGTRAIL_MAX_PAYLOAD_BYTES", str(256 * 1024)),
        help="outbox payloads larger than this are quarantined, not sealed "
        "[env FLAGTRAIL_MAX_PAYLOAD_BYTES, default 262144]",
    )
    options.add_backends(p)
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser(
        "export",
        help="write the signed evidence package for a window",
        description="Whole UTC days, both included. Writes the JSONL, its "
        ".sig, a manifest and the per-control summary.",
    )
    options.add_window(p)
    p.add_argument(
        "--controls", help="controls to report, e.g. CC6.1,CC6.6,CC8.1 (never removes records)"
    )
    options.add_signing_key(p, "the export")
    p.add_argument("--out", default=".", help="output folder (default: here)")
    p.add_argument(
        "--previous",
        metavar="OLD.manifest.json",
        help="the previous export's manifest: this manifest names its head, and carries "
        "the records between that head and this window (<stem>.link.jsonl) if any",
    )
    p.add_argument(
        "--tsa-url",
        metavar="URL",
        help="RFC 3161 time-stamping authority that stamps the manifest "
        "(<stem>.manifest.json.tsr) [env FLAGTRAIL_TSA_URL]; when one is set and does not "
        "answer, nothing is exported",
    )
    p.add_argument(
        "--no-timestamp",
        action="store_true",
        help="export without a timestamp even when FLAGTRAIL_TSA_URL is set",
    )
    options.add_backends(p, outbox=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "verify",
        help="check an export's chain, signed manifest and signature against a trusted key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checks the chain, the .jsonl signature and the signed manifest (window, "
        "chain id, counts, anchor and head, rotations, gaps, statements, summary).\n"
        "Trusted keys: --pubkey PEM, --key-fingerprint SHA256:<hex> (trusts the key shipped "
        "in the package only if it has this fingerprint), or FLAGTRAIL_TRUSTED_KEYS=FILE: a "
        "PEM bundle of public keys, or lines of SHA256:<hex> fingerprints (# comments). "
        "A key found only in the package is never trusted.\n"
        "Exit codes: 0 intact and signed by a trusted key; 1 a check failed (tampered, "
        "missing or bad signature, a manifest that does not match); 2 usage; 4 intact but "
        "signed by an untrusted key.",
    )
    p.add_argument("file", help="the .jsonl export")
    options.add_trusted_keys(
        p,
        pubkey_help="a registered public key (trusted); repeatable",
        fingerprint_help="trust the package's key if its DER SubjectPublicKeyInfo has this "
        "SHA-256 (openssl pkey -pubin -outform DER | sha256sum); repeatable",
    )
    p.add_argument(
        "--previous",
        metavar="OLD.manifest.json",
        help="the previous export's manifest: check that this export continues its chain",
    )
    options.add_proof_keys(p)
    p.add_argument(
        "--chain-only",
        action="store_true",
        help="check hashes and links only: NOT the signature, the signer, the manifest or "
        "the window",
    )
    p.add_argument(
        "--anchor",
        help="hash the first record must link to (default: the manifest's anchor, else GENESIS)",
    )
    p.add_argument("--workers", type=options.positive, help="processes (default: one per core)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("summary", help="per-control summary of an export (the seed's format)")
    p.add_argument("file", help="the .jsonl export")
    p.add_argument("--controls", help="only these controls, e.g. CC6.1,CC8.1")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "rotate",
        help="start a new chain epoch (sentinel_rotation)",
        description="Writes a signed sentinel_rotation meta-event through the outbox; "
        "the relay chains it after the current head, which it names (sequence and "
        "hash), and starts a new epoch there. Needs an operator "
        "role (the policy's operator_roles, audit-admin by default).",
    )
    p.add_argument("--reason", required=True, help="why the chain restarts")
    p.add_argument(
        "--actor", required=True, help="identity rotating it (must hold an operator role)"
    )
    options.add_signing_key(p, "the rotation")
    options.add_identities(p)
    options.add_backends(p, log=False)
    p.set_defaults(func=cmd_rotate)

    gap = sub.add_parser("gap", help="find and document gaps in the evidence")
    gap_sub = gap.add_subparsers(dest="gap_command", required=True, metavar="ACTION")
    p = gap_sub.add_parser(
        "scan",
        help="list suspicious gaps in a window and which are documented",
        description="Relay outages (events that reached the "
        "log late), silences, sequence jumps and rotations.",
    )
    options.add_window(p)
    p.add_argument(
        "--lag-threshold",
        type=float,
        default=300.0,
        help="seconds from recorded to relayed that count as an outage (300)",
    )
    p.add_argument(
        "--silence-threshold",
        type=float,
        help="hours without any event that count as a gap (off by default)",
    )
    p.add_argument(
        "--fail-on-undocumented",
        action="store_true",
        help="exit 1 when a gap is undocumented (for CI and alerting)",
    )
    p.add_argument(
        "--pubkey",
        action="append",
        default=[],
        metavar="PEM",
        help="registered public key that checks statement signatures; repeatable (also "
        "FLAGTRAIL_TRUSTED_KEYS and the signing key at AUDIT_SIGNING_KEY_PATH)",
    )
    p.add_argument(
        "--clock-skew-tolerance",
        type=options.seconds,
        default=5.0,
        help="seconds a producer's recorded_at may run ahead of the relay's clock (5)",
    )
    options.add_backends(p, outbox=False)
    p.set_defaults(func=cmd_gap_scan)
    p = gap_sub.add_parser(
        "document",
        help="write a signed gap_documented meta-event",
        description="An operator's signed statement that events in a time "
        "range are late or lost, chained through the outbox. Needs an operator "
        "role (the policy's operator_roles, audit-admin by default).",
    )
    p.add_argument(
        "--from",
        dest="start",
        type=_timestamp,
        required=True,
        help="gap start, RFC 3339 (2026-03-01T10:00:00Z) or a date",
    )
    p.add_argument("--to", dest="end", type=_timestamp, required=True, help="gap end")
    p.add_argument("--reason", required=True, help="what happened")
    p.add_argument(
        "--author", required=True, help="identity making the statement (an operator role)"
    )
    options.add_signing_key(p, "the statement")
    options.add_identities(p)
    options.add_backends(p, log=False)
    p.set_defaults(func=cmd_gap_document)

    p = sub.add_parser(
        "drift",
        help="fail when weekly event counts drop sharply",
        description="Compares the 7 days ending --as-of with the trailing "
        "weeks; exit 1 when the count falls below --threshold of their mean.",
    )
    p.add_argument(
        "--as-of", type=options.date_arg, help="last day of the week checked (default today)"
    )
    p.add_argument("--weeks", type=options.positive, default=4, help="trailing weeks (default 4)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="fraction of the trailing mean below which it fails (default 0.5)",
    )
    options.add_backends(p, outbox=False)
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("keygen", help="create a signing key pair")
    p.add_argument("--out", default=".", help="folder for audit-private.pem and audit-public.pem")
    p.add_argument(
        "--type",
        choices=["rsa", "ec", "note"],
        default="rsa",
        help="RSA 3072 (default) or EC P-256; note: the Ed25519 key that signs Merkle "
        "checkpoints (note-private.key, note-public.vkey)",
    )
    p.add_argument(
        "--name",
        default="flagtrail.example",
        help="--type note: the key's name, which starts each chain's checkpoint origin "
        "(<name>/<chain>); default flagtrail.example",
    )
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keygen)

    from flagtrail.commands import register_all

    register_all(sub)
    return parser


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports `… | head -1`


def _say(message: str) -> None:
    """One line on stderr, with any password redacted."""
    from flagtrail.logs import redact_text

    print(redact_text(" ".join(str(message).split())), file=sys.stderr)


def _report(exc: FlagtrailError) -> int:
    if isinstance(exc, PolicyError):
        _say(f"blocked ({exc.status}): {exc.message}")
    elif isinstance(exc, InvalidChange):
        _say(f"flagtrail: invalid change ({exc.status}): {exc}")
    else:
        _say(f"flagtrail: error: {exc}")
    return exc.exit_code


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null, so that the
    interpreter's last flush at exit cannot fail (and print) a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# commands that write no log lines skip structlog's import: `verify` starts faster
QUIET_COMMANDS = frozenset({"verify", "summary", "keygen"})


def configure_logging(*args: Any, **kwargs: Any) -> None:
    from flagtrail.logs import configure

    configure(*args, **kwargs)


def _run(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error, already printed
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else (EXIT_ERROR if exc.code else 0)
    if args.command not in QUIET_COMMANDS:
        configure_logging(
            args.log_format,
            args.log_level,
            urls=(getattr(args, "outbox_url", None), getattr(args, "log_url", None)),
        )
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        raise
    except FlagtrailError as exc:
        return _report(exc)
    except Exception as exc:
        from flagtrail.failures import translate

        translated = translate(exc)
        if translated is None:  # a bug, not bad input: the traceback is what helps
            raise
        return _report(translated)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error a user can cause ends as one sentence and an
    exit code from producers/errors.py."""
    try:
        return _run(argv)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
