"""``flagtrail report FILE``: the evidence package as one self-contained HTML page (and PDF)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from producers.errors import ConfigError
    from relay.manifest import PackagePaths
    from relay.report import build_report, render_html, write_pdf
    from relay.trust import Trust

    evidence, out = Path(args.file), Path(args.out)
    package = {p.resolve() for p in vars(PackagePaths.beside(evidence)).values()}
    for target in (out, Path(args.pdf) if args.pdf else None):
        if target is not None and target.resolve() in package:
            raise ConfigError(
                f"{target} is a file of the evidence package: write the report elsewhere"
            )
    trust = Trust.from_environment([Path(p) for p in args.pubkey], args.key_fingerprint)
    report = build_report(evidence, trust)
    try:
        out.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
    print(f"report: {out}")
    if not report.verified:
        reason = report.verify_error or (
            report.verification.finding if report.verification else None
        )
        print(
            f"VERIFICATION FAILED: {reason or 'signed by a key that is not trusted'} "
            "(the report says so in red)"
        )  # a verdict on the evidence, as verify prints it: not an error of the command
    if args.pdf:
        write_pdf(out, Path(args.pdf))
        print(f"pdf   : {args.pdf}")
    return report.exit_code


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_trusted_keys

    p = sub.add_parser(
        "report",
        help="write an auditor's report of an export: one self-contained HTML file (and a PDF)",
        description="Verify an export with the registered key and write one self-contained "
        "HTML report: verification status, per-control counts (changes and blocked attempts "
        "apart), production changes, blocked attempts, state continuity, rotations, gaps and "
        "statements, and charts. Exits as `flagtrail verify` does (1 tampered, 4 untrusted "
        "key) after writing the report. --pdf prints it with Debian's headless chromium.",
    )
    p.add_argument("file", help="the export's JSONL file (the package's files beside it)")
    add_trusted_keys(
        p,
        pubkey_help="the registered public key (repeatable)",
        fingerprint_help="trust the package's key only if it has this fingerprint (repeatable)",
    )
    p.add_argument("--out", required=True, help="where to write the HTML report")
    p.add_argument("--pdf", help="also print the report to this PDF (needs chromium)")
    p.set_defaults(func=cmd_report)
