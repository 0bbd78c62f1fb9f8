"""``flagtrail witness keygen | serve``: an independent C2SP tlog-witness."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path


def cmd_keygen(args: argparse.Namespace) -> int:
    from relay.witness.keys import generate_key_files

    path, vkey = generate_key_files(Path(args.out), args.name, overwrite=args.force)
    print(f"Witness key    : {path} (mode 0600: it never leaves the witness's host)")
    print(f"Verifier key   : {vkey}")
    print(
        "Give the verifier key to the relay (FLAGTRAIL_WITNESSES) and to auditors "
        "(flagtrail verify --witness-key)."
    )
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    from producers.errors import ConfigError
    from relay.witness.keys import load_cosigner, parse_logs, read_logs_file
    from relay.witness.server import make_server
    from relay.witness.service import Witness
    from relay.witness.state import WitnessState

    key = args.key or os.environ.get("FLAGTRAIL_WITNESS_KEY")
    if not key:
        raise ConfigError("flagtrail witness serve needs its key: --key (flagtrail witness keygen)")
    entries = list(args.trusted_log)
    logs_file = args.trusted_logs or os.environ.get("FLAGTRAIL_WITNESS_LOGS")
    if logs_file:
        entries += read_logs_file(Path(logs_file))
    cosigner = load_cosigner(Path(key))
    logs = parse_logs(entries)
    state = WitnessState(
        Path(args.state or os.environ.get("FLAGTRAIL_WITNESS_STATE") or "witness.db")
    )
    try:
        server = make_server(Witness(cosigner, logs, state), args.host, args.port, args.prefix)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    host, port = server.server_address[:2]
    print(
        f"witness {cosigner.name} listening on http://{host}:{port}"
        f"{args.prefix.rstrip('/')}/add-checkpoint for {len(logs)} log(s); "
        f"verifier key {cosigner.verifier().vkey()}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # requests run in threads: stop between them
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        state.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "witness",
        help="an independent witness that cosigns checkpoints (C2SP tlog-witness)",
        description="A witness cosigns a log's checkpoint only when a consistency proof "
        "shows it extends the last checkpoint the witness cosigned for that log, so a "
        "rewritten log is refused even when re-signed with the log's own key.",
    )
    group = p.add_subparsers(dest="witness_command", required=True, metavar="keygen|serve")

    k = group.add_parser("keygen", help="make the witness's Ed25519 cosignature key")
    k.add_argument("--name", required=True, help="the witness's name, e.g. witness.example/w1")
    k.add_argument("--out", default=".", help="folder for witness.key and witness.vkey")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.set_defaults(func=cmd_keygen)

    s = group.add_parser(
        "serve",
        help="serve POST /add-checkpoint",
        description="Answers C2SP tlog-witness add-checkpoint requests: 200 with a "
        "cosignature/v1 line, 409 with its size when 'old' is not what it last cosigned, "
        "422 when the consistency proof fails, 403/404 for an unsigned checkpoint or an "
        "unknown log. Its state (the last cosigned checkpoint per log) is an fsync'd "
        "SQLite file: keep it, a witness that forgets can be rolled back.",
    )
    s.add_argument("--key", help="witness.key [env FLAGTRAIL_WITNESS_KEY]")
    s.add_argument(
        "--trusted-log",
        action="append",
        default=[],
        metavar="ORIGIN=VKEY",
        help="a log to witness: its checkpoint origin and note verifier key; repeatable",
    )
    s.add_argument(
        "--trusted-logs", help="file of 'ORIGIN VKEY' lines [env FLAGTRAIL_WITNESS_LOGS]"
    )
    s.add_argument("--state", help="state database [env FLAGTRAIL_WITNESS_STATE; witness.db]")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    s.add_argument("--port", type=int, default=7380, help="port (default 7380; 0: any free)")
    s.add_argument("--prefix", default="", help="URL prefix before /add-checkpoint")
    s.set_defaults(func=cmd_serve)
