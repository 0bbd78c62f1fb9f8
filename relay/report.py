"""``flagtrail report``: one self-contained HTML file an auditor reads, and its PDF.

The report runs the real verifier (``relay.verify.verify_export``) and shows
its outcome as it is: a package that fails verification, or is signed by a
key the auditor did not name, is shown in red at the top, and the command
exits non-zero after writing it. Everything below the status comes from the
records (``relay.changes``) and the signed manifest.

Every value in the records was written by someone the auditor does not trust
(flag names, reasons, actors), so every value is made visible
(``relay.changes.show``) and HTML-escaped; the page carries no script, and its
Content-Security-Policy allows none, loads nothing from anywhere (inline CSS by
hash, inline SVG charts), so even an escaping mistake could not run code or
call out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from relay.changes import (
    BLOCKED_COLUMNS,
    CHANGE_COLUMNS,
    ChangeListing,
    is_production,
    list_changes,
    show,
)
from relay.charts import LagSeries, changes_per_week_svg, e, lag_svg
from relay.manifest import PackagePaths, parse_manifest
from relay.trust import Trust
from relay.verify import VerifyReport, verify_export


# -- what the report reads ---------------------------------------------------------------------
@dataclass
class Report:
    path: Path
    verification: VerifyReport | None
    verify_error: str | None
    listing: ChangeListing | None
    listing_error: str | None
    manifest: dict[str, Any] | None
    lags: LagSeries
    sha256: str
    trust_sources: list[str]

    @property
    def exit_code(self) -> int:
        if self.verification is None:
            return EvidenceError.exit_code
        return self.verification.exit_code

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.ok


def _read_package(path: Path) -> tuple[bytes, bytes | None]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"export {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read export {path}: {exc.strerror}") from None
    try:
        return data, PackagePaths.beside(path).manifest.read_bytes()
    except OSError:
        return data, None


def build_report(path: Path, trust: Trust) -> Report:
    """Verify the package and read what the report shows; a package that fails
    verification still gets a report (that says so).

    The page shows the bytes read before verification; when the files on disk differ
    afterwards (swapped while verify ran), the verification does not vouch for them."""
    data, manifest_data = _read_package(path)
    verification, verify_error = None, None
    try:
        verification = verify_export(path, trust=trust)
    except EvidenceError as exc:  # ConfigError (the user's mistake) propagates
        verify_error = str(exc)
    if _read_package(path) != (data, manifest_data):
        verification, verify_error = (
            None,
            (
                f"{path.name} or its manifest changed while it was being verified: run the "
                "report again on files nobody is writing"
            ),
        )
    lags = LagSeries()
    listing, listing_error = None, None
    try:
        listing = list_changes(path, observe=lags, data=data)
    except EvidenceError as exc:
        listing_error = str(exc)
    manifest = None
    if manifest_data is not None:
        with contextlib.suppress(EvidenceError):  # the status already says what failed
            manifest = parse_manifest(manifest_data)
    return Report(
        path,
        verification,
        verify_error,
        listing,
        listing_error,
        manifest,
        lags,
        hashlib.sha256(data).hexdigest(),
        trust.sources,
    )


# -- the page ----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#1a202c}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #cbd5e0}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #cbd5e0;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#edf2f7}table.records tr.head td{border-bottom:none;background:#f7fafc}
table.records tr.head+tr td{border-top:none;padding-bottom:.6em}
td.mono,span.mono{font-family:ui-monospace,Menlo,monospace;word-break:break-all}
.banner{padding:1em;font-size:1.3em;font-weight:bold;border-radius:4px}
.ok{background:#c6f6d5;color:#22543d;border:2px solid #38a169}
.fail{background:#fed7d7;color:#742a2a;border:4px solid #e53e3e}
.finding{color:#9b2c2c;font-weight:bold}
@media print{body{margin:0}.banner{break-inside:avoid}}
"""


def _csp() -> str:
    style = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{style}'; img-src 'none'; "
        "script-src 'none'; form-action 'none'; base-uri 'none'"
    )


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]], mono: set[str]) -> str:
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="mono">{e(row.get(c))}</td>' if c in mono else f"<td>{e(row.get(c))}</td>"
            for c in columns
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STATE_FIELDS = ("before", "after")  # null is a state there (no flag yet, or deleted)


def _detail(name: str, value: Any) -> str:
    return "null" if value is None and name in STATE_FIELDS else e(value)


def _records(columns: tuple[str, ...], details: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """Records two lines each: the short fields as columns, then the long ones (state,
    reason, message, hash) labelled across the row, so nothing is squeezed or cut."""
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td>{e(row.get(c))}</td>" for c in columns)
        long = "".join(
            f'<div><b>{e(c)}</b> <span class="mono">{_detail(c, row.get(c))}</span></div>'
            for c in details
            if row.get(c) is not None or c in STATE_FIELDS
        )
        body.append(
            f'<tr class="head">{cells}</tr><tr><td colspan="{len(columns)}">{long}</td></tr>'
        )
    rows_html = "".join(body)
    return (
        f"<table class='records'><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"
    )


def _head(columns: tuple[str, ...], details: tuple[str, ...]) -> tuple[str, ...]:
    """The table row's columns: relay.changes' list, in its order, less the long ones."""
    return tuple(c for c in columns if c not in details)


# the long fields go under the row; relay.changes keeps the one list of columns
CHANGE_DETAILS = ("before", "after", "reason", "hash")
CHANGE_HEAD = _head(CHANGE_COLUMNS, CHANGE_DETAILS)
BLOCKED_DETAILS = ("message", "before", "after", "reason", "hash")
BLOCKED_HEAD = _head(BLOCKED_COLUMNS, BLOCKED_DETAILS)


def _breaks_of(report: Report) -> int:
    return len(report.listing.breaks) if report.listing is not None else 0


def _status(report: Report) -> str:
    v = report.verification
    if v is None:
        banner = f"VERIFICATION FAILED: {report.verify_error}"
        rows = [("Verification", report.verify_error)]
    else:
        if v.ok:
            banner = f"VERIFIED: chain intact, {v.records} records, signed by a trusted key"
            findings = len(v.findings) + (1 if _breaks_of(report) else 0)
            if findings:
                banner += f"; {findings} finding(s) below an auditor must read"
        elif v.finding is not None:
            banner = f"VERIFICATION FAILED: {v.finding}"
        else:
            banner = "NOT TRUSTED: the package is intact but signed by a key you did not name"
        rows = [
            ("Chain", f"intact, {v.records} records" if v.intact else f"FAILED: {v.finding}"),
            ("Anchor", f"{v.anchor} ({v.anchor_source})"),
            ("Signature", v.signature),
            ("Signing key fingerprint", v.signer or "unknown"),
            ("Key trusted", "yes" if v.trusted else "NO"),
            ("Trusted keys given", ", ".join(report.trust_sources) or "none"),
            ("Previous export", v.previous),
            *(("Manifest", note) for note in v.notes),
            *(("Rotation", str(note)) for note in v.rotation_notes),
            *(("Finding", finding) for finding in v.findings),
        ]
    rows.append(("Evidence file SHA-256", report.sha256))
    breaks = _breaks_of(report)
    if breaks:  # intact evidence of a state nobody recorded: the auditor must see it here
        rows.append(("Finding", f"{breaks} state continuity break(s): see State continuity"))
    css = "ok" if report.verified else "fail"
    table = "".join(
        f'<tr><th>{e(name)}</th><td class="mono{" finding" if name == "Finding" else ""}">'
        f"{e(value)}</td></tr>"
        for name, value in rows
    )
    return f'<div class="banner {css}" id="status">{e(banner)}</div><table>{table}</table>'


def _controls(listing: ChangeListing) -> str:
    rows = [
        {
            "control": control,
            "changes made": counts["change"],
            "blocked attempts": counts["blocked"],
            "meta-events": counts["meta"],
            "total (as the summary counts)": sum(counts.values()),
        }
        for control, counts in sorted(listing.controls.items())
    ]
    columns = (
        "control",
        "changes made",
        "blocked attempts",
        "meta-events",
        "total (as the summary counts)",
    )
    return _table(columns, rows, set())


def _dicts(container: Any, name: str) -> list[dict[str, Any]]:
    """The objects listed under ``name``: an unverified manifest may hold anything there."""
    value = container.get(name) if isinstance(container, dict) else None
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _meta(item: dict[str, Any], *names: str) -> dict[str, Any]:
    details = item.get("details")
    return {n: details.get(n) if isinstance(details, dict) else None for n in names}


def _gaps(manifest: dict[str, Any] | None, verified: bool) -> str:
    if manifest is None:
        return "<p class='finding'>No readable manifest: rotations and gaps are unknown.</p>"
    note = "" if verified else "<p class='finding'>UNVERIFIED: the package did not verify.</p>"
    gaps = [*_dicts(manifest, "undocumented_gaps"), *_dicts(manifest, "documented_gaps")]
    gap_rows = [
        {
            "kind": g.get("kind"),
            "from": g.get("start"),
            "to": g.get("end"),
            "sequence": g.get("sequence"),
            "detail": g.get("detail"),
            "documented by": g.get("documented_by") or "UNDOCUMENTED",
        }
        for g in gaps
    ]
    statements = [
        {
            "sequence": s.get("sequence"),
            "time": s.get("timestamp_utc"),
            "event_id": s.get("event_id"),
            **_meta(s, "from", "to", "reason", "author"),
        }
        for s in _dicts(manifest, "gap_statements")
    ]
    rotations = [
        {
            "sequence": r.get("sequence"),
            "time": r.get("timestamp_utc"),
            "event_id": r.get("event_id"),
            **_meta(r, "reason", "rotated_by", "automatic", "previous_sequence", "previous_hash"),
        }
        for r in _dicts(manifest, "rotations")
    ]
    return (
        note
        + "<h3>Gaps</h3>"
        + _table(
            ("kind", "from", "to", "sequence", "detail", "documented by"), gap_rows, {"detail"}
        )
        + "<h3>Gap statements (signed)</h3>"
        + _table(
            ("sequence", "time", "event_id", "from", "to", "reason", "author"), statements, set()
        )
        + "<h3>Sentinel rotations</h3>"
        + _table(
            (
                "sequence",
                "time",
                "event_id",
                "reason",
                "rotated_by",
                "automatic",
                "previous_sequence",
                "previous_hash",
            ),
            rotations,
            {"previous_hash"},
        )
    )


def _breaks(listing: ChangeListing) -> str:
    if not listing.breaks:
        return "<p>None: every change starts where the one before it ended.</p>"
    rows = [
        {
            "flag_key": b.flag_key,
            "environment": b.environment,
            "previous record": f"sequence {b.previous_sequence}, hash {b.previous_hash}",
            "previous after": b.previous_after,
            "this record": f"sequence {b.sequence}, hash {b.hash}",
            "this before": b.before,
        }
        for b in listing.breaks
    ]
    columns = (
        "flag_key",
        "environment",
        "previous record",
        "previous after",
        "this record",
        "this before",
    )
    return (
        f"<p class='finding'>{len(rows)} state continuity break(s): a change made outside "
        "flagtrail, or a <code>before</code> that is not the truth.</p>"
        + _table(columns, rows, {"previous record", "this record"})
    )


def render_html(report: Report) -> str:
    title = f"flagtrail evidence report: {show(report.path.name)}"
    manifest = report.manifest or {}
    window = manifest.get("window") if isinstance(manifest.get("window"), dict) else {}
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Window {e(window.get('start'))} → {e(window.get('end'))} (UTC days, both "
        f"included), chain {e(manifest.get('chain_id'))}. Generated "
        f"{e(datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))}.</p>",
        "<h2>Verification</h2>",
        _status(report),
    ]
    listing = report.listing
    if listing is None:
        sections.append(f"<p class='finding'>Records unreadable: {e(report.listing_error)}</p>")
    else:
        production = [c for c in listing.changes if is_production(c)]
        sections += [
            "<h2>Per-control counts</h2>",
            "<p>Changes made and blocked attempts are counted apart; the summary file counts "
            "every event carrying the control.</p>",
            _controls(listing),
            f"<h2>Production changes ({len(production)})</h2>",
            _records(CHANGE_HEAD, CHANGE_DETAILS, production),
            f"<h2>Blocked attempts ({len(listing.blocked)})</h2>",
            "<p>Writes the SOC2 controls refused (HTTP 403), each with its message.</p>",
            _records(BLOCKED_HEAD, BLOCKED_DETAILS, listing.blocked),
            f"<h2>State continuity ({len(listing.breaks)} break(s))</h2>",
            _breaks(listing),
            "<h2>Changes per week</h2>",
            changes_per_week_svg(listing),
            "<h2>Relay lag and outages</h2>",
            "<p>Worst lag per slice of the window between a change being recorded and the relay "
            "sealing it (relayed_at, else timestamp_utc, minus recorded_at); gaps shaded.</p>",
            lag_svg(
                report.lags,
                [*_dicts(manifest, "undocumented_gaps"), *_dicts(manifest, "documented_gaps")],
                window.get("from_utc") or listing.first_timestamp or "",
                window.get("until_utc") or listing.last_timestamp or "",
            ),
            f"<h2>Other changes ({len(listing.changes) - len(production)}, not production)</h2>",
            _records(
                CHANGE_HEAD, CHANGE_DETAILS, [c for c in listing.changes if not is_production(c)]
            ),
        ]
    sections += ["<h2>Rotations, gaps and statements</h2>", _gaps(report.manifest, report.verified)]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


# -- PDF through Debian's headless chromium ---------------------------------------------------
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    return next((found for n in CHROMIUM_NAMES if (found := shutil.which(n))), None)


def chromium_command(browser: str, profile: Path, *args: str) -> list[str]:
    """Headless chromium with a throwaway profile; as root it has no sandbox to run in."""
    command = [browser, "--headless", "--disable-gpu", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        command.append("--no-sandbox")
    return [*command, "--no-first-run", "--disable-extensions", *args]


def write_pdf(html_path: Path, pdf_path: Path, timeout: float = 180) -> None:
    browser = find_chromium()
    if browser is None:
        raise ConfigError(
            f"--pdf needs Debian's headless chromium, which is not installed "
            f"(apt-get install chromium); the HTML report is at {html_path}"
        )
    pdf_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="flagtrail-chromium-") as profile:
        command = chromium_command(
            browser,
            Path(profile),
            f"--print-to-pdf={pdf_path.resolve()}",
            "--no-pdf-header-footer",
            html_path.resolve().as_uri(),
        )
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"chromium did not print {pdf_path} within {timeout:.0f} s") from None
    if result.returncode != 0 or not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"chromium could not print {pdf_path}: {last}")
