"""Unleash end to end, against a real Unleash server (npm unleash-server 7.5) on the
test PostgreSQL: the trigger and the follower record every change once, in order,
byte-identical between the two ways in, and the export verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

from flagtrail import settings
from producers.events import canonical_json
from producers.policy import load_policy
from producers.sources.common import is_production, policy_findings, source_record
from producers.sources.unleash import unleash_change
from producers.sources.unleash_follow import UnleashFollower, http_fetch
from tests.conftest import FLAGTRAIL, REPO, run_cli, wait_for

pytestmark = pytest.mark.integration
SCRIPT = REPO / "deploy/local/unleash"


@dataclass(frozen=True)
class UnleashServer:
    url: str
    token: str
    database_url: str  # SQLAlchemy URL of Unleash's own database

    @property
    def server_url(self) -> str:
        return self.database_url.rsplit("/", 1)[0]

    def admin(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/api/admin{path}",
            data=data,
            method=method,
            headers={"Authorization": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def psql_url(self, database: str | None = None) -> str:
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        return url if database is None else f"{url.rsplit('/', 1)[0]}/{database}"


@pytest.fixture(scope="session")
def unleash() -> Iterator[UnleashServer]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900, check=True
    ).stdout
    values = {
        key: value.strip("'")
        for key, value in (
            line.removeprefix("export ").split("=", 1)
            for line in out.splitlines()
            if line.startswith("export ")
        )
    }
    yield UnleashServer(
        values["UNLEASH_URL"], values["UNLEASH_ADMIN_TOKEN"], values["UNLEASH_DATABASE_URL"]
    )
    subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=60)


@pytest.fixture
def outbox_db(unleash: UnleashServer) -> Iterator[str]:
    """A fresh outbox database on Unleash's PostgreSQL server (the follower's side)."""
    name = f"ft_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(unleash.psql_url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{unleash.server_url}/{name}"
    with psycopg.connect(unleash.psql_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def trigger_chain(unleash: UnleashServer, workdir: Path) -> Iterator[str]:
    """The trigger installed in Unleash's database on a chain of this test's own."""
    chain = f"unleash-{uuid.uuid4().hex[:8]}"
    done = run_cli(
        "sources", "unleash", "install", "--database-url", unleash.database_url, "--chain", chain
    )
    assert done.returncode == 0, done.stderr
    yield chain
    run_cli("sources", "unleash", "install", "--database-url", unleash.database_url, "--uninstall")


def exercise(unleash: UnleashServer, flag: str) -> None:
    """Every kind of change the issue names, through Unleash's Admin API."""
    base = f"/projects/default/features/{flag}"
    unleash.admin("POST", "/projects/default/features", {"name": flag, "type": "release"})
    unleash.admin("POST", f"{base}/environments/production/on")
    unleash.admin("POST", f"{base}/environments/development/on")
    strategy = unleash.admin(
        "POST",
        f"{base}/environments/production/strategies",
        {"name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "default"}},
    )
    strategy_id = strategy["id"]  # type: ignore[index]
    unleash.admin(
        "PUT",
        f"{base}/environments/production/strategies/{strategy_id}",
        {"name": "flexibleRollout", "parameters": {"rollout": "75", "stickiness": "default"}},
    )
    unleash.admin("POST", f"{base}/environments/production/off")
    unleash.admin("DELETE", f"/projects/default/features/{flag}")  # archive


def toggle(unleash: UnleashServer, flag: str, n: int) -> None:
    """The n-th switch of ``flag`` in development: on, off, on, ..."""
    state = "on" if n % 2 == 0 else "off"
    unleash.admin("POST", f"/projects/default/features/{flag}/environments/development/{state}")


def unleash_rows(unleash: UnleashServer, flag: str) -> list[dict]:
    with psycopg.connect(unleash.psql_url()) as conn:
        cursor = conn.execute(
            "SELECT id, type, created_by, created_by_user_id, created_at, data, pre_data, "
            "feature_name, project, environment FROM events WHERE feature_name = %s ORDER BY id",
            (flag,),
        )
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def python_payload(event: dict, chain: str) -> str:
    change = unleash_change(event)
    assert change is not None
    production = is_production(change, frozenset({"production"}))
    record = source_record(
        change,
        chain_id=chain,
        production=production,
        findings=policy_findings(change, production),
    )
    return canonical_json(record)


def outbox_payloads(url: str, flag: str) -> dict[str, str]:
    """event_id → payload of the flag's outbox rows, in outbox order."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, payload FROM flagtrail_outbox ORDER BY id")
        ).all()
    engine.dispose()
    return {
        row.event_id: row.payload for row in rows if json.loads(row.payload)["flag_key"] == flag
    }


def relay_export_verify(workdir: Path, outbox_url: str, chain: str, rsa_keys: Path) -> list[dict]:
    env = {
        "FLAGTRAIL_OUTBOX_URL": outbox_url,
        "FLAGTRAIL_LOG_URL": f"sqlite:///{workdir / 'log.db'}",
        "FLAGTRAIL_CHAIN": chain,
        "AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem"),
    }
    relayed = run_cli("relay", "--once", cwd=workdir, env=env)
    assert relayed.returncode == 0, relayed.stderr
    today = datetime.now(UTC).date()
    days = ["--start", (today - timedelta(days=1)).isoformat(), "--end", today.isoformat()]
    exported = run_cli("export", *days, "--out", "ev", cwd=workdir, env=env)
    assert exported.returncode == 0, exported.stderr
    jsonl = next((workdir / "ev").glob("*.jsonl"))
    pubkey = str(rsa_keys / "audit-public.pem")
    verified = run_cli("verify", str(jsonl), "--pubkey", pubkey, cwd=workdir, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Chain intact" in verified.stdout
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert not [r for r in records if r["action"] == "quarantined"]
    return records


def test_trigger_and_follower_record_every_change_once_in_order_and_alike(
    unleash: UnleashServer, trigger_chain: str, outbox_db: str, workdir: Path, rsa_keys: Path
) -> None:
    flag = f"ft-{uuid.uuid4().hex[:10]}"
    exercise(unleash, flag)
    events = unleash_rows(unleash, flag)
    kinds = [e["type"] for e in events]
    assert {"feature-created", "feature-environment-enabled", "feature-strategy-add"} <= set(kinds)
    assert {"feature-strategy-update", "feature-environment-disabled"} <= set(kinds)
    assert kinds[-1] == "feature-archived"
    wanted = [f"unleash:{e['id']}" for e in events]

    # (a) the trigger: one row per event, in Unleash's order, as the Python path builds it
    by_trigger = outbox_payloads(unleash.database_url, flag)
    assert list(by_trigger) == wanted
    for event in events:
        assert by_trigger[f"unleash:{event['id']}"] == python_payload(event, trigger_chain)

    # (b) the follower, twice (the second poll finds nothing new): the same bytes
    follow = [
        "sources", "unleash", "follow", "--url", unleash.url, "--token", unleash.token,
        "--outbox-url", outbox_db, "--chain", trigger_chain, "--once",
    ]  # fmt: skip
    first = run_cli(*follow, cwd=workdir)
    assert first.returncode == 0, first.stderr
    again = run_cli(*follow, cwd=workdir)
    assert again.returncode == 0 and "recorded 0 " in again.stdout, again.stdout
    by_follower = outbox_payloads(outbox_db, flag)
    assert list(by_follower) == wanted
    assert by_follower == by_trigger

    # what the issue asks of the records themselves
    records = [json.loads(p) for p in by_follower.values()]
    enabled = next(r for r in records if r["source"]["type"] == "feature-environment-enabled")
    assert enabled["after"] == {"enabled": True, "environment": "production"}
    assert enabled["policy_findings"][0]["control"] == "CC8.1"  # no approver in Unleash OSS
    assert "CC7.2" in enabled["soc2_controls"] and "CC8.1" not in enabled["soc2_controls"]
    update = next(r for r in records if r["source"]["type"] == "feature-strategy-update")
    assert update["before"]["parameters"]["rollout"] == "25"
    assert update["after"]["parameters"]["rollout"] == "75"
    assert records[-1]["action"] == "delete" and records[-1]["policy_findings"]
    development = [r for r in records if r["environment"] == "development"]
    assert development and all(r["policy_findings"] == [] for r in development)
    assert records[0]["actor"] == "admin" and records[0]["source"]["user_id"] == -42

    # both outboxes relay, export and verify (no row quarantined: the bytes are canonical)
    exported = relay_export_verify(workdir, outbox_db, trigger_chain, rsa_keys)
    assert [r["event_id"] for r in exported if r["flag_key"] == flag] == wanted
    other = workdir / "trigger"
    other.mkdir()
    exported = relay_export_verify(other, unleash.database_url, trigger_chain, rsa_keys)
    assert [r["event_id"] for r in exported if r["flag_key"] == flag] == wanted


def raw_event(unleash: UnleashServer, **columns: object) -> int:
    """Insert an event straight into Unleash's table (what Unleash's own write does)."""
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    values = [json.dumps(v) if isinstance(v, dict | list) else v for v in columns.values()]
    with psycopg.connect(unleash.psql_url()) as conn:
        return conn.execute(
            f"INSERT INTO events ({names}) VALUES ({marks}) RETURNING id", values
        ).fetchone()[0]


def test_odd_unicode_huge_and_deep_events_match_the_python_path_and_seal(
    unleash: UnleashServer, trigger_chain: str, workdir: Path, rsa_keys: Path
) -> None:
    """Flag names and states no Unleash UI would accept still reach the table through its
    database: the trigger encodes them as json.dumps does, or omits them alike."""
    flag = f"ﬂag-🚀-\u202eevil-\u00e9\u0301-{uuid.uuid4().hex[:6]}"
    deep: object = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    states = [
        {"name": 'Zoë "q" \\ \t\n\x01\x7f \u2028 😀 \U0010ffff', "n": [0, -7, 2**60, 1.5, 0.25]},
        deep,
        {"blob": "x" * 70_000},
        {"b": 1, "a": {"é": None, "E": True, "e": False}, "": []},
    ]
    for state in states:
        raw_event(
            unleash,
            type="feature-updated",
            created_by="Zoë \u202e admin",
            feature_name=flag,
            project="default",
            environment="Production",
            data=state,
            pre_data={"k": "v"},
        )
    events = unleash_rows(unleash, flag)
    by_trigger = outbox_payloads(unleash.database_url, flag)
    assert len(by_trigger) == len(states)
    for event in events:
        assert by_trigger[f"unleash:{event['id']}"] == python_payload(event, trigger_chain)
    afters = [json.loads(p)["after"] for p in by_trigger.values()]
    assert "flagtrail_omitted" in afters[1] and "flagtrail_omitted" in afters[2]
    assert afters[3] == states[3]
    assert all(json.loads(p)["policy_findings"] for p in by_trigger.values())  # "Production"
    exported = relay_export_verify(workdir, unleash.database_url, trigger_chain, rsa_keys)
    assert len([r for r in exported if r["flag_key"] == flag]) == len(states)


def _counts(check: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(flag events without an outbox row, outbox rows whose event is gone)."""
    numbers = [
        int(line.rsplit(":", 1)[1])
        for line in check.stdout.splitlines()
        if line.startswith(("Unleash flag", "outbox rows"))
    ]
    return numbers[0], numbers[1]


def test_a_disabled_trigger_and_deleted_events_are_detected(
    unleash: UnleashServer, trigger_chain: str
) -> None:
    """An operator can disable the trigger or delete Unleash's events; `check` shows both
    (events since the first install with no outbox row count even across a re-install)."""
    flag = f"ft-{uuid.uuid4().hex[:10]}"
    unleash.admin("POST", "/projects/default/features", {"name": flag, "type": "release"})
    check = ["sources", "unleash", "check", "--database-url", unleash.database_url]
    missing, gone = _counts(run_cli(*check))
    with psycopg.connect(unleash.psql_url(), autocommit=True) as conn:
        conn.execute("ALTER TABLE events DISABLE TRIGGER flagtrail_unleash_outbox")
    try:
        unleash.admin("POST", f"/projects/default/features/{flag}/environments/production/on")
        found = run_cli(*check)
        assert found.returncode == 1
        assert "trigger: disabled" in found.stdout
        assert _counts(found)[0] == missing + len(unleash_rows(unleash, flag)) - 1
    finally:
        with psycopg.connect(unleash.psql_url(), autocommit=True) as conn:
            conn.execute("ALTER TABLE events ENABLE TRIGGER flagtrail_unleash_outbox")
    with psycopg.connect(unleash.psql_url(), autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE feature_name = %s", (flag,))  # 1 had a row
    found = run_cli(*check)
    assert "trigger: enabled" in found.stdout
    assert _counts(found) == (missing, gone + 1)


def test_a_late_committing_unleash_event_is_recorded_not_skipped(
    unleash: UnleashServer, outbox_db: str
) -> None:
    """An Unleash transaction that took its event id first but commits after younger
    events were followed is read by the look-back window: recorded once."""
    flag = f"ft-{uuid.uuid4().hex[:10]}"
    unleash.admin("POST", "/projects/default/features", {"name": flag, "type": "release"})
    follower = UnleashFollower(
        settings.make_engine(outbox_db),
        http_fetch(unleash.url, unleash.token),
        policy=load_policy(),
        chain_id="late",
    )
    follower.poll_once()
    held = psycopg.connect(unleash.psql_url())
    try:
        late_id = held.execute(
            # no environment: Unleash's own per-environment counter trigger would hold a
            # row lock that blocks the Admin API's write below
            "INSERT INTO events (type, created_by, feature_name, project, data) "
            "VALUES ('feature-updated', 'late', %s, 'default', '{}') RETURNING id",
            (flag,),
        ).fetchone()[0]
        unleash.admin("POST", f"/projects/default/features/{flag}/environments/development/on")
        follower.poll_once()
        assert follower.cursor().last_id > late_id  # type: ignore[union-attr]
        held.commit()
    finally:
        held.close()
    follower.poll_once()
    follower.poll_once()
    rows = outbox_payloads(outbox_db, flag)
    assert f"unleash:{late_id}" in rows
    assert len(rows) == len(unleash_rows(unleash, flag))


class Crash(BaseException):
    """The process dying between reading Unleash and committing the outbox."""


def test_a_follower_dying_between_reading_and_committing_records_each_event_once(
    unleash: UnleashServer, outbox_db: str
) -> None:
    flag = f"ft-{uuid.uuid4().hex[:10]}"
    unleash.admin("POST", "/projects/default/features", {"name": flag, "type": "release"})
    for n in range(30):
        toggle(unleash, flag, n)
    engine = settings.make_engine(outbox_db)
    follower = UnleashFollower(
        engine, http_fetch(unleash.url, unleash.token), policy=load_policy(), chain_id="crash",
        chunk=7,
    )  # fmt: skip
    commits: list[int] = []

    def die_on_the_third_chunk(written: int) -> None:
        commits.append(written)
        if len(commits) == 3:
            raise Crash

    with pytest.raises(Crash):
        follower.poll_once(before_commit=die_on_the_third_chunk)
    with engine.connect() as conn:
        committed = conn.execute(text("SELECT count(*) FROM flagtrail_outbox")).scalar_one()
    assert 0 < committed <= 14  # two chunks of 7 committed, the third rolled back
    follower.poll_once()
    rows = outbox_payloads(outbox_db, flag)
    events = unleash_rows(unleash, flag)
    assert list(rows) == [f"unleash:{e['id']}" for e in events]
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT event_id FROM flagtrail_outbox ORDER BY id")).scalars()
        numbers = [int(i.split(":")[1]) for i in ids]
    assert numbers == sorted(set(numbers))  # each once, in Unleash's order


def test_a_follower_killed_mid_run_resumes_exactly_once(
    unleash: UnleashServer, outbox_db: str, workdir: Path
) -> None:
    flag = f"ft-{uuid.uuid4().hex[:10]}"
    unleash.admin("POST", "/projects/default/features", {"name": flag, "type": "release"})
    for n in range(200):
        toggle(unleash, flag, n)
    args = [
        *FLAGTRAIL, "sources", "unleash", "follow", "--url", unleash.url, "--token",
        unleash.token, "--outbox-url", outbox_db, "--chain", "kill", "--chunk", "3",
        "--interval", "0.1",
    ]  # fmt: skip
    follower = subprocess.Popen(args, cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        engine = create_engine(outbox_db)

        def some_rows() -> bool:
            try:
                with engine.connect() as conn:
                    return bool(
                        conn.execute(text("SELECT count(*) FROM flagtrail_outbox")).scalar()
                    )
            except Exception:
                return False

        wait_for(some_rows, 60, "the follower's first rows")
        os.kill(follower.pid, signal.SIGKILL)
        follower.wait(10)
        engine.dispose()
    finally:
        if follower.poll() is None:
            follower.kill()
    resumed = subprocess.run(
        [*args[: args.index("--interval")], "--once"], cwd=workdir, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    rows = outbox_payloads(outbox_db, flag)
    events = unleash_rows(unleash, flag)
    assert sorted(rows, key=lambda e: int(e.split(":")[1])) == [
        f"unleash:{e['id']}" for e in events
    ]
    assert sys.executable  # the follower ran under this interpreter


def test_install_and_follow_refuse_the_wrong_database_or_token(
    unleash: UnleashServer, outbox_db: str, workdir: Path
) -> None:
    wrong = run_cli("sources", "unleash", "install", "--database-url", outbox_db)
    assert wrong.returncode == 2 and "no Unleash events table" in wrong.stderr
    refused = run_cli(
        "sources", "unleash", "follow", "--url", unleash.url, "--token", "*:*.not-a-token",
        "--outbox-url", outbox_db, "--once", cwd=workdir,
    )  # fmt: skip
    assert refused.returncode == 2 and "refused the token" in refused.stderr
    assert "Traceback" not in wrong.stderr + refused.stderr
