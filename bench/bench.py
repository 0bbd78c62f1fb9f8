"""flagtrail benchmarks: `make bench` (or `python bench/bench.py [embedded] [scale]`).

Figures go to bench/results.md with the command that produced them. Ratios are
measured side by side in one run; this machine is noisy, so compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flagtrail import loadgen, settings  # noqa: E402
from producers import FlagChange, Outbox  # noqa: E402
from producers.identity import SAMPLE_DIRECTORY  # noqa: E402
from relay.export import export_window  # noqa: E402
from relay.logs import open_log  # noqa: E402
from relay.outbox import open_outbox_source  # noqa: E402
from relay.relay import Relay  # noqa: E402
from relay.signing import generate_keypair  # noqa: E402

WORK = REPO / "bench" / "work"
REPEATS = 3
VERIFY_REPEATS = 5
RESULTS = REPO / "bench" / "results.md"
SEED_VERIFY = REPO / "tests" / "seed" / "verify_chain.py"
H1 = "flag-audit-soc2_2026-01-01_2026-06-30.jsonl"

flag_table = Table(
    "bench_flags",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("flag_key", String(100)),
    Column("state", String(200)),
)


class Clock:
    """Producer clock stepping through the first half of 2026."""

    def __init__(self, events: int) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.step = timedelta(days=180) / max(events, 1)

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def change(n: int, all_non_ascii: bool = False) -> FlagChange:
    """Realistic text: the load generator's reasons, one in six with non-ASCII."""
    reason = "Gradual rollout — step ✅" if all_non_ascii else loadgen.REASONS[n % 6]
    return FlagChange(
        actor="alice@example.com",
        approver="bob@example.com",
        role="release-manager",
        flag_key=f"flag-{n % 50}",
        environment="production",
        action="rollout",
        before={"enabled": True, "rollout": n % 100},
        after={"enabled": True, "rollout": (n + 5) % 100, "segments": ["beta", "eu"]},
        reason=reason,
        change_ref=f"CHG-{n}",
    )


def fill_outbox(
    outbox: Outbox, events: int, per_transaction: int = 1000, all_non_ascii: bool = False
) -> float:
    started = time.perf_counter()
    for first in range(0, events, per_transaction):
        with outbox.engine.begin() as conn:
            for n in range(first, min(first + per_transaction, events)):
                outbox.record(conn, change(n, all_non_ascii))
    return time.perf_counter() - started


def fresh(name: str) -> Path:
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "identities.toml").write_text(SAMPLE_DIRECTORY)
    # a new chain pseudonymises by default: its keys stay in the bench folder
    os.environ["FLAGTRAIL_PSEUDONYM_KEY_PATH"] = str(folder / "pseudonym.key")
    os.environ["FLAGTRAIL_VAULT_KEY_PATH"] = str(folder / "vault.key")
    return folder


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed_drain(outbox: Outbox, log_url: str) -> tuple[int, float]:
    relay = Relay(
        open_outbox_source(outbox.engine, outbox.chain_id), open_log(log_url), batch_size=2000
    )
    relay.resume()
    started = time.perf_counter()
    count = relay.drain()
    seconds = time.perf_counter() - started
    relay.log.close()
    return count, seconds


# -- embedded ------------------------------------------------------------------------------
def bench_embedded(lines: list[str], drain_events: int, verify_events: int) -> None:
    rates = []
    for attempt in range(REPEATS):  # the machine is noisy: report every drain and the median
        folder = fresh(f"embedded-{attempt}")
        engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
        outbox = Outbox(engine, str(folder / "identities.toml"), clock=Clock(drain_events))
        fill_outbox(outbox, drain_events)
        count, seconds = timed_drain(outbox, f"sqlite:///{folder / 'log.db'}")
        rates.append(count / seconds)
        engine.dispose()
    lines.append(
        f"| embedded relay drain (SQLite → SQLite), {drain_events:,} backlog, median of "
        f"{REPEATS} | {statistics.median(rates):,.0f} events/s "
        f"({', '.join(f'{r:,.0f}' for r in rates)}) | goal ≥ 30,000 |"
    )

    verify_vs_seed(lines, verify_events, all_non_ascii=False)
    verify_vs_seed(lines, verify_events, all_non_ascii=False, foreign=True)
    verify_vs_seed(lines, verify_events, all_non_ascii=True)

    folder = fresh("producer")
    engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
    lines.extend(producer_overhead(engine, folder, "SQLite", samples=2000))
    engine.dispose()


class ForeignLayout:
    """A log read back with each line laid out by another tool, not by flagtrail.

    ``json.dumps(record)`` with its default separators and the keys in reverse
    order (hash first, prev_hash last): the seed's snippet still verifies it, as
    it re-encodes every record. Wraps the real log by delegation, so the real
    export writes, signs and describes the foreign-layout file.
    """

    def __init__(self, log: object) -> None:
        self._log = log

    def read(self, since: str | None = None, until: str | None = None):
        for entry in self._log.read(since, until):
            record = json.loads(entry.line)
            yield entry._replace(line=json.dumps(dict(reversed(record.items()))))

    def __getattr__(self, name: str):
        return getattr(self._log, name)


def verify_vs_seed(
    lines: list[str], events: int, all_non_ascii: bool, foreign: bool = False
) -> None:
    """Export ``events`` records, then time the seed's snippet and flagtrail verify on it."""
    folder = fresh("verify")
    engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
    outbox = Outbox(engine, str(folder / "identities.toml"), clock=Clock(events))
    fill_outbox(outbox, events, all_non_ascii=all_non_ascii)
    timed_drain(outbox, f"sqlite:///{folder / 'log.db'}")
    engine.dispose()
    generate_keypair(folder / "keys", "rsa")  # the registered key, apart from the package
    with open_log(f"sqlite:///{folder / 'log.db'}") as audit_log:
        started = time.perf_counter()
        _, manifest = export_window(
            ForeignLayout(audit_log) if foreign else audit_log,
            date(2026, 1, 1),
            date(2026, 6, 30),
            folder,
            folder / "keys" / "audit-private.pem",
        )
        export_s = time.perf_counter() - started
    records = manifest["record_count"]
    data = "every reason non-ASCII" if all_non_ascii else "realistic text"
    data += ", lines laid out by json.dumps, keys reversed" if foreign else ", flagtrail's layout"
    if not all_non_ascii and not foreign:
        lines.append(
            f"| export with RSA-3072 signing, {records:,} records | "
            f"{records / export_s:,.0f} records/s ({export_s:.2f} s) | |"
        )
    seed_runs, our_runs = [], []
    for _ in range(VERIFY_REPEATS):  # alternate, so both meet the same noise
        seed_runs.append(run_timed([sys.executable, str(SEED_VERIFY)], folder))
        our_runs.append(
            run_timed(
                [
                    sys.executable,
                    "-m",
                    "flagtrail.cli",
                    "verify",
                    H1,
                    "--pubkey",
                    "keys/audit-public.pem",
                ],
                folder,
            )
        )
    seed_s = statistics.median(wall for wall, _ in seed_runs)
    ours_s = statistics.median(wall for wall, _ in our_runs)
    pairs = [s[0] / o[0] for s, o in zip(seed_runs, our_runs, strict=True)]
    cpu_ratio = statistics.median(s[1] / o[1] for s, o in zip(seed_runs, our_runs, strict=True))
    lines.append(
        f"| verify {records:,} records ({data}): seed snippet, median of {VERIFY_REPEATS} | "
        f"{seed_s:.2f} s | |"
    )
    lines.append(
        f"| verify {records:,} records ({data}): `flagtrail verify` with signature "
        f"and manifest, median of {VERIFY_REPEATS} | {ours_s:.2f} s: "
        f"**{statistics.median(pairs):.2f}x the seed** (median of pairs: "
        f"{', '.join(f'{r:.2f}x' for r in pairs)}; CPU time {cpu_ratio:.2f}x) | goal >= 3x |"
    )


def run_timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0 or "Chain intact" not in result.stdout:
        raise SystemExit(f"{command} failed: {result.stdout}{result.stderr}")
    return seconds, cpu


def producer_overhead(engine, folder: Path, label: str, samples: int) -> list[str]:
    """A flag write transaction with and without Outbox.record, interleaved."""
    outbox = Outbox(engine, str(folder / "identities.toml"))
    flag_table.metadata.create_all(engine)
    plain, audited = [], []
    for n in range(samples):
        for with_outbox, bucket in ((False, plain), (True, audited)):
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(insert(flag_table), {"flag_key": f"f{n}", "state": "on"})
                if with_outbox:
                    outbox.record(conn, change(n))
            bucket.append((time.perf_counter() - started) * 1000)
    return [
        f"| {label} flag write transaction alone, p50 / p99 | {percentile(plain, 50):.3f} / "
        f"{percentile(plain, 99):.3f} ms | |",
        f"| {label} same transaction + `Outbox.record`, p50 / p99 | "
        f"{percentile(audited, 50):.3f} / {percentile(audited, 99):.3f} ms | "
        f"outbox adds {statistics.median(audited) - statistics.median(plain):+.3f} ms (p50) |",
    ]


def bench_privacy(lines: list[str], batches: int = 300) -> None:
    """Pseudonymising an identity: the HMAC alone, and Outbox.record's whole step with
    a warm vault cache; then a flag write with Outbox.record, pseudonyms on vs off."""
    from producers.pseudonyms import create_key, pseudonym

    folder = fresh("privacy")
    key = create_key(folder / "pseudonym.key", "pseudonym").material
    names = [f"user-{n}@example.com" for n in range(1000)]
    hmac_us = []
    for _ in range(batches):
        started = time.perf_counter()
        for name in names:
            pseudonym(key, name)
        hmac_us.append((time.perf_counter() - started) / len(names) * 1e6)
    engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
    outbox = Outbox(engine, str(folder / "identities.toml"))
    people = names[:50]
    with engine.begin() as conn:  # first sight: sealed into the vault, then cached
        for name in people:
            outbox.privacy.person(conn, name)
    step_us = []
    with engine.begin() as conn:
        for _ in range(batches):
            started = time.perf_counter()
            for name in people:
                outbox.privacy.person(conn, name)
            step_us.append((time.perf_counter() - started) / len(people) * 1e6)
    engine.dispose()
    lines.append(
        f"| pseudonymise an identity (HMAC-SHA256 of the NFC name), p50 / p99 per call | "
        f"{percentile(hmac_us, 50):.2f} / {percentile(hmac_us, 99):.2f} µs | goal < 50 µs |"
    )
    lines.append(
        f"| `Outbox.record`'s pseudonymising step per identity, warm vault cache, p50 / p99 | "
        f"{percentile(step_us, 50):.2f} / {percentile(step_us, 99):.2f} µs | goal < 50 µs |"
    )
    for mode in ("off", "on"):
        os.environ["FLAGTRAIL_PSEUDONYMS"] = mode
        folder = fresh(f"privacy-{mode}")
        engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
        lines.extend(producer_overhead(engine, folder, f"SQLite, pseudonyms {mode},", 2000))
        engine.dispose()
    del os.environ["FLAGTRAIL_PSEUDONYMS"]


def bench_oidc(lines: list[str], samples: int) -> None:
    """Outbox.record with an actor and an approval token from a real OpenID Connect
    provider (deploy/local/oidc), warm key cache, beside the directory and no outbox."""
    from tests.oidc.conftest import Provider

    folder = fresh("oidc")
    provider = Provider.start(folder / "provider")
    try:
        (folder / "policy.toml").write_text(provider.policy())
        engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
        directory = Outbox(engine, str(folder / "identities.toml"))
        oidc = Outbox(engine, str(folder / "identities.toml"), policy=str(folder / "policy.toml"))
        flag_table.metadata.create_all(engine)
        actor_token = provider.token("alice@example.com", "urn:flagtrail:rs256")
        approvals = [
            provider.token("bob@example.com", "urn:flagtrail:es256", approves=change(n))
            for n in range(samples)
        ]
        verifier = oidc.identity_source.verifier
        verifier.keys.warm()
        listed, proven, listed_tx, proven_tx, verify_two = [], [], [], [], []
        for n in range(samples):
            for outbox, calls, transactions in (
                (directory, listed, listed_tx),
                (oidc, proven, proven_tx),
            ):
                tokens = (
                    {"actor_token": actor_token, "approval_token": approvals[n]}
                    if outbox is oidc
                    else {}
                )
                started = time.perf_counter()
                with engine.begin() as conn:
                    conn.execute(insert(flag_table), {"flag_key": f"f{n}", "state": "on"})
                    called = time.perf_counter()
                    outbox.record(conn, change(n), **tokens)
                    calls.append((time.perf_counter() - called) * 1000)
                transactions.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            verifier.verify(actor_token)
            verifier.verify(approvals[n])
            verify_two.append((time.perf_counter() - started) * 1000)
        assert verifier.keys.fetches == 1, "the key cache was not warm"
    finally:
        provider.stop()

    def p50_p99(values: list[float]) -> str:
        return f"{percentile(values, 50):.3f} / {percentile(values, 99):.3f} ms"

    added = statistics.median(proven) - statistics.median(listed)
    lines += [
        f"| `Outbox.record` call, identities from the directory, p50 / p99 | {p50_p99(listed)} | |",
        f"| `Outbox.record` call verifying an RS256 actor token and an ES256 approval token "
        f"(warm key cache) and spending the approval, p50 / p99 | {p50_p99(proven)} | tokens "
        f"add {added:+.3f} ms (p50); goal < 1 ms |",
        f"| verifying the two tokens alone (RS256 + ES256), p50 / p99 | {p50_p99(verify_two)} | |",
        f"| SQLite flag write transaction + `Outbox.record`, directory / tokens, p50 | "
        f"{statistics.median(listed_tx):.3f} / {statistics.median(proven_tx):.3f} ms | "
        "commit included |",
    ]


# -- scale: PostgreSQL + Kafka ---------------------------------------------------------------
def local_services() -> tuple[str, str]:
    out = subprocess.run(
        ["bash", str(REPO / "deploy/local/up")], capture_output=True, text=True, check=True
    ).stdout
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    return values["FLAGTRAIL_OUTBOX_URL"].rsplit("/", 1)[0], values[
        "FLAGTRAIL_LOG_URL"
    ].removeprefix("kafka://").split("/")[0]


def new_database(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


def bench_scale(lines: list[str], drain_events: int, latency_seconds: int) -> None:
    server, kafka = local_services()
    folder = fresh("scale")
    engine = settings.make_engine(new_database(server))
    outbox = Outbox(engine, str(folder / "identities.toml"))
    fill_outbox(outbox, drain_events)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    count, seconds = timed_drain(outbox, f"kafka://{kafka}/{topic}")
    lines.append(
        f"| PostgreSQL → Kafka drain (acks=all, transactions), {count:,} backlog | "
        f"{count / seconds:,.0f} events/s | goal ≥ 15,000 |"
    )
    engine.dispose()

    lines.extend(commit_to_log_latency(server, kafka, folder, latency_seconds))

    engine = settings.make_engine(new_database(server))
    lines.extend(producer_overhead(engine, folder, "PostgreSQL", samples=2000))
    lines.append(concurrent_writers(engine, folder, writers=8, seconds=10))
    engine.dispose()


def commit_to_log_latency(server: str, kafka: str, folder: Path, seconds: int) -> list[str]:
    """Writers at 500 changes/s; a read_committed consumer timestamps each arrival."""
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    url = new_database(server)
    engine = settings.make_engine(url)
    outbox = Outbox(engine, str(folder / "identities.toml"))
    topic = f"latency-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "FLAGTRAIL_OUTBOX_URL": url,
        "FLAGTRAIL_LOG_URL": f"kafka://{kafka}/{topic}",
    }
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flagtrail.cli",
            "--log-level",
            "warning",
            "relay",
            "--batch-size",
            "500",
        ],
        cwd=folder,
        env=env,
    )
    commit_times: dict[str, float] = {}
    latencies: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka, isolation_level="read_committed", enable_auto_commit=False
        )
        tp = TopicPartition(topic, 0)
        while not stop.is_set():
            try:
                consumer.assign([tp])
                consumer.seek_to_beginning(tp)
                break
            except Exception:
                time.sleep(0.2)
        while not stop.is_set():
            for messages in consumer.poll(timeout_ms=100).values():
                arrived = time.time()
                for message in messages:
                    committed = commit_times.get(orjson.loads(message.value)["event_id"])
                    if committed is not None:
                        latencies.append((arrived - committed) * 1000)
        consumer.close()

    reader = threading.Thread(target=consume)
    time.sleep(2)  # relay and topic up
    reader.start()
    time.sleep(1)
    rate, writers = 500, 4  # one writer alone cannot commit 500 transactions/s here

    def write(slot: int) -> None:
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            with engine.begin() as conn:
                event_id = outbox.record(conn, change(slot * 1_000_000 + n))
            commit_times[event_id] = time.time()  # committed
            n += 1
            delay = started + n / (rate / writers) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(3)
    stop.set()
    reader.join()
    relay.terminate()
    relay.wait(timeout=30)
    engine.dispose()
    if not latencies:
        return ["| commit-to-log latency | no records observed | |"]
    return [
        f"| commit-to-log latency at {rate}/s for {seconds} s ({len(latencies):,} changes), "
        f"p50 / p99 | {percentile(latencies, 50):.1f} / {percentile(latencies, 99):.1f} ms | "
        "goal p99 < 250 ms |"
    ]


def concurrent_writers(engine, folder: Path, writers: int, seconds: float) -> str:
    outbox = Outbox(engine, str(folder / "identities.toml"))
    counts = [0] * writers
    deadline = time.perf_counter() + seconds

    def write(slot: int) -> None:
        n = slot * 10_000_000
        while time.perf_counter() < deadline:
            with engine.begin() as conn:
                conn.execute(insert(flag_table), {"flag_key": f"w{n}", "state": "on"})
                outbox.record(conn, change(n))
            counts[slot] += 1
            n += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(counts)
    return (
        f"| PostgreSQL writer throughput, {writers} concurrent writers (flag write + outbox "
        f"per transaction) | {total / seconds:,.0f} transactions/s | |"
    )


def unleash_server() -> dict[str, str]:
    """deploy/local/unleash's exports (it starts PostgreSQL and Unleash when needed)."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy/local/unleash"), "up"],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    return {
        k.removeprefix("export "): v.strip("'")
        for k, v in (line.split("=", 1) for line in out.splitlines() if line.startswith("export "))
    }


def unleash_admin(server: dict[str, str], method: str, path: str, body: object = None) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"{server['UNLEASH_URL']}/api/admin{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": server["UNLEASH_ADMIN_TOKEN"],
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def bench_unleash(lines: list[str], samples: int, follow_events: int) -> None:
    """The trigger's cost on an Unleash flag change (Admin API call, and the events
    insert alone), and the follower's throughput over Unleash's event search API."""
    from producers.policy import load_policy
    from producers.sources.unleash_follow import UnleashFollower, http_fetch
    from producers.sources.unleash_trigger import (
        TRIGGER,
        TriggerSettings,
        install_trigger,
        uninstall_trigger,
    )

    server = unleash_server()
    engine = settings.make_engine(server["UNLEASH_DATABASE_URL"])
    flag = f"bench-{uuid.uuid4().hex[:8]}"
    unleash_admin(server, "POST", "/projects/default/features", {"name": flag, "type": "release"})
    trigger = TriggerSettings.from_policy("bench-unleash", load_policy())
    toggle = f"/projects/default/features/{flag}/environments/development"
    api: dict[bool, list[float]] = {False: [], True: []}
    insert_row = text(
        "INSERT INTO events (type, created_by, feature_name, project, environment, data) "
        "VALUES ('feature-updated', 'bench', :flag, 'default', 'development', "
        "CAST(:data AS json))"
    )
    sql: dict[bool, list[float]] = {False: [], True: []}
    state = {"enabled": True, "strategies": [{"name": "default", "parameters": {}}]}
    block = 20
    for n in range(samples // block):
        with_trigger = n % 2 == 1
        if with_trigger:
            install_trigger(engine, trigger)
        else:
            uninstall_trigger(engine)
        for i in range(block):
            started = time.perf_counter()
            unleash_admin(server, "POST", f"{toggle}/{'on' if i % 2 == 0 else 'off'}")
            api[with_trigger].append(time.perf_counter() - started)
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(insert_row, {"flag": flag, "data": json.dumps(state)})
            sql[with_trigger].append(time.perf_counter() - started)
    # the trigger's own execution time, as PostgreSQL times it (free of the machine's noise
    # around it): EXPLAIN ANALYZE of the insert, rolled back
    install_trigger(engine, trigger)
    own: list[float] = []
    explain = text(
        "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO events (type, created_by, feature_name, "
        "project, environment, data) VALUES ('feature-updated', 'bench', :flag, 'default', "
        "'production', CAST(:data AS json))"
    )
    for _ in range(samples):
        with engine.connect() as conn:
            plan = conn.execute(explain, {"flag": flag, "data": json.dumps(state)}).scalar_one()
            conn.rollback()
        plan = plan if isinstance(plan, list) else json.loads(plan)
        own += [t["Time"] for t in plan[0]["Triggers"] if t["Trigger Name"] == TRIGGER]
    lines.append(
        f"| the trigger's own time per Unleash event (EXPLAIN ANALYZE, {len(own)} samples), "
        f"p50 / p99 | {percentile(own, 50):.3f} / {percentile(own, 99):.3f} ms | goal < 1 ms |"
    )
    uninstall_trigger(engine)
    for label, measured in (("Unleash Admin API toggle", api), ("events INSERT transaction", sql)):
        without, within = (percentile(measured[k], 50) * 1000 for k in (False, True))
        lines.append(
            f"| {label}: without / with the trigger, p50 ({len(measured[True])} each) | "
            f"{without:.3f} / {within:.3f} ms | trigger adds {within - without:+.3f} ms "
            "(goal < 1 ms) |"
        )
    # the follower: a backlog of realistic events, read from an empty cursor
    rows = [{"flag": flag, "data": json.dumps({**state, "n": n})} for n in range(follow_events)]
    with engine.begin() as conn:
        conn.execute(insert_row, rows)
    engine.dispose()
    outbox_url = new_database(server["UNLEASH_DATABASE_URL"].rsplit("/", 1)[0])
    follower = UnleashFollower(
        settings.make_engine(outbox_url),
        http_fetch(server["UNLEASH_URL"], server["UNLEASH_ADMIN_TOKEN"]),
        policy=load_policy(),
        chain_id="bench-unleash",
    )
    started = time.perf_counter()
    written = follower.poll_once()
    seconds = time.perf_counter() - started
    lines.append(
        f"| Unleash follower, backlog read from an empty cursor ({written:,} records) | "
        f"{written / seconds:,.0f} events/s ({seconds:.1f} s) | goal ≥ 500/s; through "
        "Unleash's search API, 1,000 a page |"
    )


# -- Merkle tree and checkpoints (issue 10) ---------------------------------------------------
def tree_writer(tree_url: str, chain: str, folder: Path):  # -> relay.tree.TreeWriter
    from relay.tree import TreeWriter, generate_note_key, load_note_signer, open_store

    if not (folder / "note-private.key").exists():
        generate_note_key(folder, "bench.example")
    return TreeWriter(open_store(tree_url, chain), load_note_signer(folder / "note-private.key"))


def drain_with(
    engine, log_url: str, tree_url: str | None, folder: Path
) -> tuple[int, float, float]:
    """One drain of the outbox behind ``engine``, with the tree and checkpoints or
    without: (records, seconds, seconds spent in the tree's work)."""
    audit_log = open_log(log_url)
    tree = tree_writer(tree_url, audit_log.chain_id, folder) if tree_url else None
    relay = Relay(
        open_outbox_source(engine, audit_log.chain_id), audit_log, batch_size=2000, tree=tree
    )
    relay.resume()
    in_tree = 0.0
    if tree is not None:  # time the tree's own share of each batch, in the same run
        extend = tree.extend

        def timed_extend(entries) -> None:
            nonlocal in_tree
            started = time.perf_counter()
            extend(entries)
            in_tree += time.perf_counter() - started

        tree.extend = timed_extend  # type: ignore[method-assign]
    started = time.perf_counter()
    count = relay.drain()
    seconds = time.perf_counter() - started
    audit_log.close()
    if tree is not None:
        tree.store.close()
    return count, seconds, in_tree


def tree_side_by_side(
    lines: list[str], label: str, runs: list[tuple[float, float]], shares: list[float]
) -> None:
    """Median rates of pairs of drains (without, with the tree), run alternately, and
    the share of the tree drains' time spent in the tree (less exposed to the noise of
    a shared machine than a difference of two rates)."""
    plain = statistics.median(p for p, _ in runs)
    tree = statistics.median(t for _, t in runs)
    overheads = [1 - t / p for p, t in runs]
    lines.append(
        f"| {label}: drain without / with the Merkle tree and checkpoints (every 1,000 "
        f"records), median of {len(runs)} alternating pairs | {plain:,.0f} / {tree:,.0f} "
        f"events/s: rate difference {statistics.median(overheads):.1%} (pairs: "
        f"{', '.join(f'{o:.1%}' for o in overheads)}); time inside the tree "
        f"**{statistics.median(shares):.1%}** of the drain (runs: "
        f"{', '.join(f'{x:.1%}' for x in shares)}) | goal < 10% |"
    )


def bench_merkle_drain(lines: list[str], drain_events: int, pairs: int) -> None:
    folder = fresh("merkle-drain")
    engine = settings.make_engine(f"sqlite:///{folder / 'outbox.db'}")
    outbox = Outbox(engine, str(folder / "identities.toml"), clock=Clock(drain_events))
    fill_outbox(outbox, drain_events)
    engine.dispose()
    runs, shares = [], []
    for attempt in range(pairs):
        rates = []
        for mode in ("plain", "tree"):  # the same backlog, copied: both meet the same data
            run = folder / f"{mode}-{attempt}"
            run.mkdir()
            shutil.copy(folder / "outbox.db", run / "outbox.db")
            engine = settings.make_engine(f"sqlite:///{run / 'outbox.db'}")
            log_url = f"sqlite:///{run / 'log.db'}"
            tree_url = log_url if mode == "tree" else None
            count, seconds, in_tree = drain_with(engine, log_url, tree_url, run)
            engine.dispose()
            rates.append(count / seconds)
        runs.append((rates[0], rates[1]))
        shares.append(in_tree / seconds)
    tree_side_by_side(lines, f"SQLite → SQLite, {drain_events:,} backlog", runs, shares)


def bench_merkle_scale(lines: list[str], drain_events: int, pairs: int) -> None:
    """PostgreSQL → Kafka, the tree in the outbox's PostgreSQL database."""
    server, kafka = local_services()
    folder = fresh("merkle-scale")
    runs, shares = [], []
    for _ in range(pairs):
        rates = []
        for mode in ("plain", "tree"):
            url = new_database(server)
            engine = settings.make_engine(url)
            fill_outbox(Outbox(engine, str(folder / "identities.toml")), drain_events)
            topic = f"kafka://{kafka}/bench-{uuid.uuid4().hex[:8]}"
            tree_url = url if mode == "tree" else None
            count, seconds, in_tree = drain_with(engine, topic, tree_url, folder)
            engine.dispose()
            rates.append(count / seconds)
        runs.append((rates[0], rates[1]))
        shares.append(in_tree / seconds)
    tree_side_by_side(lines, f"PostgreSQL → Kafka, {drain_events:,} backlog", runs, shares)


def synthetic_log(log_url: str, total: int) -> float:
    """``total`` chained records written straight to the log; returns the seconds."""
    from producers.events import format_timestamp
    from relay.canonical import GENESIS, seal
    from relay.logs.base import LogEntry

    audit_log = open_log(log_url)
    prev, start = GENESIS, datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    for first in range(1, total + 1, 10_000):
        batch = []
        for sequence in range(first, min(first + 10_000, total + 1)):
            stamp = format_timestamp(start + timedelta(seconds=sequence))
            record = {
                "action": "rollout",
                "chain_id": "flag-audit",
                "flag_key": f"flag-{sequence % 50}",
                "reason": loadgen.REASONS[sequence % 6],
                "sequence": sequence,
                "timestamp_utc": stamp,
            }
            prev, line = seal(record, prev)
            batch.append(LogEntry(sequence, stamp, prev, line, None))
        audit_log.append(batch, after_sequence=first - 1)
    audit_log.close()
    return time.perf_counter() - started


def bench_merkle_prove(lines: list[str], window: int) -> None:
    """A log of the window and 700 records around it: build its tree from the log, prove
    the window as export does (range and inclusion proofs, checked against the records),
    check them as verify does, and time one checkpoint and inclusion verification."""
    from relay.package_proofs import write_proofs
    from relay.proofs.checkpoint import parse_checkpoint
    from relay.proofs.merkle import inclusion_proof, leaf_hash, verify_inclusion
    from relay.proofs.note import open_note, parse_vkey
    from relay.tree import TreeReader, open_store
    from relay.verify_proofs import check_merkle

    folder = fresh("merkle-prove")
    log_url = f"sqlite:///{folder / 'log.db'}"
    total, begin = window + 700, 300
    write_s = synthetic_log(log_url, total)
    audit_log = open_log(log_url)
    writer = tree_writer(log_url, "flag-audit", folder)
    started = time.perf_counter()
    writer.catch_up(audit_log)
    writer.maybe_checkpoint(force=True)
    build_s = time.perf_counter() - started
    lines.append(
        f"| Merkle tree of {total:,} records hashed from the log and checkpointed (a relay's "
        f"first start on an existing log) | {build_s:.2f} s ({total / build_s:,.0f} "
        f"records/s; writing the log took {write_s:.1f} s) | |"
    )
    jsonl = folder / "window.jsonl"
    with jsonl.open("w") as out:
        for entry in audit_log.read():
            if begin < entry.sequence <= begin + window:
                out.write(entry.line + "\n")
    store = open_store(log_url, "flag-audit", read_only=True)
    proof_path = folder / "window.proof.json"
    started = time.perf_counter()
    entry = write_proofs(store, audit_log, jsonl, proof_path, begin + window, window, None)
    prove_s = time.perf_counter() - started
    lines.append(
        f"| prove a {window:,}-record window (range proof and first/last inclusion proofs, "
        f"checked against every record, as export does) | {prove_s:.2f} s | goal < 30 s |"
    )
    vkey = parse_vkey((folder / "note-public.vkey").read_text())
    manifest = {
        "merkle": entry,
        "chain_id": "flag-audit",
        "record_count": window,
        "head": {"sequence": begin + window},
        "window": {"until_utc": "~"},
    }
    started = time.perf_counter()
    check_merkle(jsonl, proof_path, manifest, [vkey])
    check_s = time.perf_counter() - started
    lines.append(
        f"| verify the {window:,}-record window's signed checkpoint and proofs "
        f"(hashing every record, as verify does) | {check_s:.2f} s | |"
    )
    note = store.latest_checkpoint()
    size = parse_checkpoint(open_note(note, [vkey]).text).size
    index = size // 3
    proof = inclusion_proof(TreeReader(store, audit_log).node, index, size)
    leaf = leaf_hash(audit_log.entry_at(index + 1).line.encode())
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        checkpoint = parse_checkpoint(open_note(note, [vkey]).text)
        verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root_hash)
    each_ms = (time.perf_counter() - started) / rounds * 1000
    lines.append(
        f"| verify one checkpoint (signature, parse) and one inclusion proof in a tree of "
        f"{size:,} ({len(proof)} hashes), mean of {rounds:,} | {each_ms:.3f} ms | goal < 1 ms |"
    )
    store.close()
    audit_log.close()


def _verify_only(lines: list[str], args: argparse.Namespace) -> None:
    verify_vs_seed(lines, args.verify_events, all_non_ascii=False)
    verify_vs_seed(lines, args.verify_events, all_non_ascii=False, foreign=True)


def _bench_api(lines: list[str], args: argparse.Namespace) -> None:
    from api_bench import bench_api, bench_latency

    bench_api(lines, args.api_events, fresh)
    bench_latency(lines, args.api_per_day, fresh)


# name -> (what it measures, run); `embedded` includes the verify ratios
PARTS: dict[str, tuple[str, Callable[[list[str], argparse.Namespace], None]]] = {
    "embedded": (
        "SQLite: producer overhead, drain, export, verify ratios",
        lambda lines, a: bench_embedded(lines, a.drain_events, a.verify_events),
    ),
    "scale": (
        "PostgreSQL + Kafka: drain, latency, writers",
        lambda lines, a: bench_scale(lines, a.drain_events, a.latency_seconds),
    ),
    "verify": ("only the verify ratios against the seed's verifier", _verify_only),
    "privacy": ("pseudonymisation costs", lambda lines, a: bench_privacy(lines)),
    "oidc": (
        "Outbox.record with OpenID Connect tokens (real provider)",
        lambda lines, a: bench_oidc(lines, a.oidc_samples),
    ),
    "merkle": (
        "the Merkle tree's cost on SQLite, and proving a window",
        lambda lines, a: (
            bench_merkle_drain(lines, a.drain_events, a.tree_pairs),
            bench_merkle_prove(lines, a.proof_window),
        ),
    ),
    "merkle-scale": (
        "the Merkle tree's cost on PostgreSQL → Kafka",
        lambda lines, a: bench_merkle_scale(lines, a.drain_events, a.tree_pairs),
    ),
    "api": ("the evidence API: streaming a large window, concurrent pulls, latency", _bench_api),
    "unleash": (
        "Unleash: the trigger's cost per change, the follower's throughput (real Unleash)",
        lambda lines, a: bench_unleash(lines, a.unleash_samples, a.unleash_follow_events),
    ),
}
DEFAULT_PARTS = (
    "embedded",
    "scale",
    "privacy",
    "oidc",
    "merkle",
    "merkle-scale",
    "api",
    "unleash",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="parts: " + "; ".join(f"{name}: {what}" for name, (what, _) in PARTS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"which benchmarks (default: {', '.join(DEFAULT_PARTS)})",
    )
    parser.add_argument("--oidc-samples", type=int, default=2000)
    parser.add_argument("--drain-events", type=int, default=100_000)
    parser.add_argument("--verify-events", type=int, default=300_000)
    parser.add_argument("--latency-seconds", type=int, default=60)
    parser.add_argument("--proof-window", type=int, default=1_000_000)
    parser.add_argument("--tree-pairs", type=int, default=5, help="drains with/without the tree")
    parser.add_argument("--api-events", type=int, default=1_000_000)
    parser.add_argument("--api-per-day", type=int, default=200)
    parser.add_argument("--unleash-samples", type=int, default=200)
    parser.add_argument("--unleash-follow-events", type=int, default=20_000)
    args = parser.parse_args()
    args.parts = args.parts or list(DEFAULT_PARTS)
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    lines = ["| benchmark | result | note |", "|---|---|---|"]
    for name in args.parts:
        PARTS[name][1](lines, args)
    header = (
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — `{' '.join(sys.argv)}`\n\n"
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}.\n\n"
    )
    text_block = header + "\n".join(lines) + "\n\n"
    print(text_block)
    previous = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    title, _, rest = previous.partition("\n\n")
    RESULTS.write_text(f"{title}\n\n{text_block}{rest}")


if __name__ == "__main__":
    main()
