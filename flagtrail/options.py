"""Argument types and option groups shared by cli.py and every flagtrail/commands module.

One place, so that a port, a count or a trusted key is parsed and worded the same
way by every command. Only the standard library here: every command imports it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import date
from typing import Any

from producers.errors import ConfigError


def date_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-31") from None


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:200]!r}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("JSON nested too deeply to read") from None


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def at_most(most: int) -> Callable[[str], int]:
    """A ``positive`` type that also refuses more than ``most``."""

    def bounded(text: str) -> int:
        value = positive(text)
        if value > most:  # not echoed: it may be hundreds of digits
            raise argparse.ArgumentTypeError(f"must be at most {most}")
        return value

    return bounded


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be zero or more seconds")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1-65535)")
    return value


def chain_id(text: str) -> str:
    # a chain id becomes part of file names, topics and locks: refuse anything else
    from relay.logs.base import check_chain_id

    try:
        return check_chain_id(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_backends(parser: argparse.ArgumentParser, outbox: bool = True, log: bool = True) -> None:
    if outbox:
        parser.add_argument(
            "--outbox-url",
            help="SQLAlchemy URL of the outbox database "
            "[env FLAGTRAIL_OUTBOX_URL, default sqlite:///outbox.db]",
        )
    if log:
        parser.add_argument(
            "--log-url",
            help="immutable log: sqlite:///log.db or "
            "kafka://host:port/topic [env FLAGTRAIL_LOG_URL, default "
            "sqlite:///log.db]",
        )
    parser.add_argument(
        "--chain", type=chain_id, help="chain id [env FLAGTRAIL_CHAIN, default flag-audit]"
    )


def add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=date_arg, required=True, help="first day, YYYY-MM-DD")
    parser.add_argument(
        "--end", type=date_arg, required=True, help="last day, YYYY-MM-DD (included)"
    )


def add_signing_key(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--signing-key",
        help=f"private key PEM that signs {what} "
        "[env AUDIT_SIGNING_KEY_PATH, default audit-private.pem]",
    )


def add_identities(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identities", help="identity directory TOML [env FLAGTRAIL_IDENTITIES]")


def add_trusted_keys(
    parser: argparse.ArgumentParser, pubkey_help: str, fingerprint_help: str
) -> None:
    """--pubkey and --key-fingerprint, read by relay.trust.Trust.from_environment.

    The help differs per command (what the key checks), the options do not.
    """
    parser.add_argument("--pubkey", action="append", default=[], metavar="PEM", help=pubkey_help)
    parser.add_argument(
        "--key-fingerprint",
        action="append",
        default=[],
        metavar="SHA256:HEX",
        help=fingerprint_help,
    )


def add_proof_keys(parser: argparse.ArgumentParser) -> None:
    """What beyond the signer a package must prove (verify, pull): the log's note keys,
    witnesses' keys and how many must have cosigned, trusted TSA certificates."""
    parser.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a trusted witness's cosignature key (name+hash+base64, as `flagtrail witness "
        "keygen` wrote it), or a file of them; repeatable [env FLAGTRAIL_WITNESS_KEYS]",
    )
    parser.add_argument(
        "--min-witnesses",
        type=int,
        metavar="N",
        help="how many of the --witness-key witnesses must have cosigned the package's "
        "checkpoint (default 1 when a witness key is given)",
    )
    parser.add_argument(
        "--tsa-cert",
        action="append",
        default=[],
        metavar="PEM",
        help="a trusted TSA (or TSA CA) certificate: the manifest's RFC 3161 token must "
        "chain to one, and a package without a token fails; repeatable "
        "[env FLAGTRAIL_TSA_CERTS, paths separated by ':']",
    )
    parser.add_argument(
        "--note-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="the log's checkpoint verifier key (name+hash+base64, as `flagtrail keygen "
        "--type note` wrote it), or a file of them; repeatable [env FLAGTRAIL_NOTE_KEYS]. "
        "Then the package's Merkle checkpoint must be signed by it and its proofs hold",
    )


def proof_keys(args: argparse.Namespace, checked: bool = True) -> dict[str, Any]:
    """verify_export's keyword arguments from add_proof_keys's options (and their
    environment variables); nothing when ``checked`` is false (--chain-only)."""
    import os

    from relay.stamping import trusted_tsa_certs
    from relay.verify_proofs import load_note_keys
    from relay.witness.package import load_witness_keys

    witness_keys = load_witness_keys(args.witness_key) if checked else []
    minimum = args.min_witnesses if args.min_witnesses is not None else (1 if witness_keys else 0)
    return {
        "tsa_certs": trusted_tsa_certs(args.tsa_cert) if checked else (),
        "witness_keys": witness_keys,
        "min_witnesses": minimum,
        "note_keys": load_note_keys(
            args.note_key or [k for k in [os.environ.get("FLAGTRAIL_NOTE_KEYS")] if k]
        ),
    }
