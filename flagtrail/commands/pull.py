"""`flagtrail pull`: the seed's Step 2 in Python, from the evidence API, verified on arrival.

Downloads the signed package for a window from ``/v1/package`` into
``<stem>.tar.gz.partial`` (renamed when complete), unpacks it without trusting the
archive, and verifies it against the registered key: the exit code is verify's
(0 intact and trusted, 1 tampered, 4 untrusted signer) or the refusal's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # heavy imports stay inside the command (see flagtrail/commands)
    from relay.trust import Trust
    from relay.unpack import Unpacked
    from relay.verify import VerifyReport

DEFAULT_MAX_BYTES = 16 << 30  # a year of a busy chain fits; a server sending more is refused


class Progress:
    """One self-rewriting line on a terminal; nothing at all otherwise (CI logs stay clean)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._last = 0.0

    def _show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.1):
            return
        self._last = now
        self.stream.write(f"\r\x1b[2K{text}" + ("\n" if final else ""))
        self.stream.flush()

    def bytes(self, done: int, total: int | None) -> None:
        if total:
            filled = min(30, done * 30 // total)
            bar = "#" * filled + "." * (30 - filled)
            self._show(f"downloading [{bar}] {done:,}/{total:,} bytes", done >= total)
        else:
            self._show(f"downloading {done:,} bytes")

    def records(self, count: int) -> None:
        self._show(f"unpacking {count:,} records")

    def done(self, text: str) -> None:
        self._show(text, final=True)


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--max-bytes must be at least 1")
    return value


def cmd_pull(args: argparse.Namespace) -> int:
    from flagtrail.client import api_base, fetch_package
    from flagtrail.options import proof_keys
    from producers.errors import ConfigError, FlagtrailError
    from relay.manifest import window_stem
    from relay.trust import Trust
    from relay.unpack import check_not_there, unpack_package
    from relay.verify import render

    api = args.api or os.environ.get("AUDIT_API_URL")
    if not api:
        raise ConfigError("no evidence API: pass --api https://host:port or set AUDIT_API_URL")
    api_base(api)  # a bad or plain-http URL fails before anything else
    token = args.token or os.environ.get("AUDIT_TOKEN")
    if not token:
        raise ConfigError("no token: set AUDIT_TOKEN (or pass --token)")
    if args.start > args.end:
        raise ConfigError(f"--start {args.start} is after --end {args.end}")
    # the registered key is required up front: an unverified package is not evidence
    trust = Trust.from_environment([Path(p) for p in args.pubkey], args.key_fingerprint)
    proofs = proof_keys(args)  # bad key text fails here, before anything is downloaded
    if trust.empty:
        raise ConfigError(
            "no registered key to verify against: pass --pubkey PEM, --key-fingerprint "
            "SHA256:<hex> or set FLAGTRAIL_TRUSTED_KEYS"
        )
    out = Path(args.out)
    stem = window_stem(args.start, args.end)
    archive = out / f"{stem}.tar.gz"
    partial = archive.with_name(archive.name + ".partial")
    check_not_there([archive, out / f"{stem}.jsonl"], args.force)
    progress = Progress(sys.stderr, sys.stderr.isatty() and not args.quiet)
    download = fetch_package(
        api,
        token,
        args.start,
        args.end,
        partial,
        cacert=args.cacert,
        max_bytes=args.max_bytes,
        timeout=args.timeout,
        progress=progress.bytes,
    )
    unpacked = unpack_package(
        partial,
        out,
        args.start,
        args.end,
        max_bytes=args.max_bytes,
        force=args.force,
        progress=progress.records,
    )
    os.replace(partial, archive)  # complete and well-formed: only now under its own name
    progress.done(f"pulled {download.size:,} bytes, {unpacked.records:,} records")
    previous = Path(args.previous) if args.previous else None
    try:
        report = _check(unpacked, trust, previous, args.max_age, proofs)
    except FlagtrailError as exc:
        aside = _set_aside(unpacked, archive, stem)
        raise type(exc)(f"{exc}; the package is set aside in {aside}") from None
    print(f"Package       : {archive}")
    print(f"Evidence file : {unpacked.paths.jsonl}")
    print(f"Records       : {unpacked.records}")
    print(render(report))
    if not report.ok:
        print(f"Set aside     : {_set_aside(unpacked, archive, stem)} (NOT evidence)")
    return report.exit_code


def _check(
    unpacked: Unpacked,
    trust: Trust,
    previous: Path | None,
    max_age: float,
    proofs: dict[str, Any],
) -> VerifyReport:
    from relay.pulled_package import check_continues, check_fresh
    from relay.verify import verify_export

    # a package that names its previous export is checked by verify, link records and
    # all; one the API built without it, by the chain itself (relay/pulled_package.py)
    linked = previous is not None and _names_previous(unpacked.paths.manifest)
    report = verify_export(
        unpacked.paths.jsonl, trust=trust, previous=previous if linked else None, **proofs
    )
    if report.ok and max_age:
        report.notes.append(f"Freshness: {check_fresh(unpacked.paths, max_age)}")
    if previous is not None and not linked and report.ok:
        report.previous = check_continues(unpacked.paths, previous, trust)
    return report


def _set_aside(unpacked: Unpacked, archive: Path, stem: str) -> Path:
    """A package that failed never sits under the evidence's names (nor blocks a retry)."""
    from datetime import UTC, datetime

    from relay.unpack import set_aside

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return set_aside(unpacked.files, archive, archive.parent / f"{stem}.rejected-{stamp}")


def _names_previous(manifest: Path) -> bool:
    from relay.manifest import parse_manifest, read_file

    return parse_manifest(read_file(manifest, "manifest")).get("previous_export") is not None


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_proof_keys, add_trusted_keys, add_window

    p = sub.add_parser(
        "pull",
        help="download a window's signed evidence package from the evidence API and verify it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fetches /v1/package from `flagtrail serve` with a read-only token, "
        "writes <stem>.tar.gz.partial and renames it when complete, unpacks the package "
        "beside it and verifies it against the registered key.\n"
        "Exit codes: 0 intact and signed by a trusted key; 1 tampered or a malformed "
        "archive; 2 usage, a refused request or an untrusted server certificate; 4 signed "
        "by an untrusted key; 5 unreachable, rate limited or cut short (retry); 7 the token "
        "was refused (401/403).",
    )
    p.add_argument(
        "--api", help="the evidence API, e.g. https://audit-api.internal [env AUDIT_API_URL]"
    )
    add_window(p)
    p.add_argument("--out", default=".", help="folder for the package (default: here)")
    p.add_argument(
        "--token",
        help="read-only API token [env AUDIT_TOKEN; prefer it: arguments show in ps]",
    )
    add_trusted_keys(
        p,
        pubkey_help="the registered public key to verify against; repeatable",
        fingerprint_help="trust the package's key if it has this fingerprint; repeatable "
        "(or FLAGTRAIL_TRUSTED_KEYS)",
    )
    add_proof_keys(p)
    p.add_argument(
        "--previous",
        metavar="OLD.manifest.json",
        help="the previous export's manifest: check that this package continues its chain",
    )
    p.add_argument(
        "--cacert",
        help="CA bundle that signs the server's certificate [env CURL_CA_BUNDLE, SSL_CERT_FILE; "
        "default the system's]",
    )
    p.add_argument(
        "--max-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_BYTES,
        help=f"refuse a package larger than this, packed or unpacked (default {DEFAULT_MAX_BYTES})",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the server (60)"
    )
    p.add_argument(
        "--max-age",
        type=float,
        default=3600.0,
        help="refuse a package generated more than this many seconds ago: a stale or "
        "replayed copy (default 3600; 0 turns the check off)",
    )
    p.add_argument("--force", action="store_true", help="replace a package already pulled")
    p.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")
    p.set_defaults(func=cmd_pull)
