"""Benchmarks of `flagtrail serve` (issue 8): streaming a big window beside `flagtrail
export`, concurrent week pulls, one-day latency. Run through bench/bench.py (part "api").

The logs are built with the relay's own sealing (relay.relay.seal_records) straight
into the SQLite log, so a million records take a minute instead of an outbox drain.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parent.parent
FLAGTRAIL = [sys.executable, "-m", "flagtrail.cli"]
START = date(2026, 1, 1)


def synthetic_log(folder: Path, events: int, days: int = 180) -> None:
    """``events`` realistic changes spread evenly over ``days``, relayed in batches of
    ten records a second after the last was recorded (no outage, as in production)."""
    from producers.controls import controls_for_change
    from producers.events import change_record, format_timestamp
    from relay.canonical import GENESIS
    from relay.logs import open_log
    from relay.relay import ChainHead, seal_records

    sys.path.insert(0, str(REPO / "bench"))
    from bench import change  # the realistic change the other benchmarks use

    step = timedelta(days=days) / events
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    head = ChainHead(0, GENESIS, "", None)
    pending = []
    with open_log(f"sqlite:///{folder / 'log.db'}", "flag-audit") as log:
        for first in range(0, events, 10):
            items = []
            for n in range(first, min(first + 10, events)):
                moment += step
                record = change_record(
                    change(n),
                    chain_id="flag-audit",
                    recorded_at=moment,
                    action="rollout",
                    controls=controls_for_change(True, "bob@example.com"),
                    environment_class="production",
                )
                items.append((record, None))
            relayed = format_timestamp(moment + timedelta(seconds=1))
            entries = seal_records(head, items, relayed)
            last = entries[-1]
            head = ChainHead(last.sequence, last.record_hash, last.timestamp_utc, None)
            pending += entries
            if len(pending) >= 20_000:
                log.append(pending, pending[0].sequence - 1)
                pending = []
        if pending:
            log.append(pending, pending[0].sequence - 1)


def _env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLAGTRAIL_OUTBOX_URL": f"sqlite:///{folder / 'outbox.db'}",
        "FLAGTRAIL_LOG_URL": f"sqlite:///{folder / 'log.db'}",
        "FLAGTRAIL_IDENTITIES": str(folder / "identities.toml"),
        "AUDIT_SIGNING_KEY_PATH": str(folder / "keys" / "audit-private.pem"),
        "FLAGTRAIL_API_RATE_LIMIT": "1000000",
    }


def _token(folder: Path) -> str:
    out = subprocess.run(
        [*FLAGTRAIL, "token", "create", "--name", f"bench-{time.time_ns()}", "--scope",
         "export:read"],
        env=_env(folder), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()[-1]


class Served:
    """`flagtrail serve` as a process of its own (its RSS is what is measured)."""

    def __init__(self, folder: Path, *options: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*FLAGTRAIL, "--log-level", "warning", "serve", "--port", str(self.port), *options],
            env=_env(folder),
            stdout=subprocess.DEVNULL,
            stderr=(folder / "serve.log").open("ab"),  # warnings and errors only
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("flagtrail serve did not start")
            time.sleep(0.1)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """CPU time of the server and its worker processes (user + system)."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _pull(url: str, token: str, params: dict[str, str]) -> tuple[int, int, float]:
    """(status, bytes, seconds) of one streamed pull read to its end."""
    started = time.perf_counter()
    size = 0
    with httpx.stream(
        "GET", f"{url}/v1/export", params=params, headers={"Authorization": f"Bearer {token}"},
        timeout=600,
    ) as response:  # fmt: skip
        for chunk in response.iter_raw():
            size += len(chunk)
        status = response.status_code
    return status, size, time.perf_counter() - started


def bench_api(lines: list[str], events: int, fresh: Callable[[str], Path]) -> None:
    from producers.identity import SAMPLE_DIRECTORY
    from relay.signing import generate_keypair

    folder = fresh("api")
    (folder / "identities.toml").write_text(SAMPLE_DIRECTORY)
    generate_keypair(folder / "keys", "rsa")
    started = time.perf_counter()
    synthetic_log(folder, events)
    build_s = time.perf_counter() - started
    window = {"start": "2026-01-01", "end": "2026-06-30"}

    # 1. a big window: `flagtrail export` and the stream, side by side, alternating
    export_rates, stream_rates = [], []
    server = Served(folder)
    token = _token(folder)
    try:
        for attempt in range(2):
            t0 = time.perf_counter()
            subprocess.run(
                [*FLAGTRAIL, "export", "--start", window["start"], "--end", window["end"],
                 "--out", str(folder / f"out-{attempt}")],
                env=_env(folder), check=True, capture_output=True,
            )  # fmt: skip
            export_rates.append(events / (time.perf_counter() - t0))
            status, size, seconds = _pull(server.url, token, window)
            assert status == 200, status
            exported = folder / f"out-{attempt}" / "flag-audit-soc2_2026-01-01_2026-06-30.jsonl"
            assert size == exported.stat().st_size, (size, exported.stat().st_size)
            stream_rates.append(events / seconds)
        rss = server.peak_rss_mb()
    finally:
        server.stop()
    ratio = statistics.median(s / e for s, e in zip(stream_rates, export_rates, strict=True))
    lines.append(
        f"| `/v1/export` streaming {events:,} records (built in {build_s:.0f} s) vs "
        f"`flagtrail export` of the same window, 2 alternating runs | stream "
        f"{', '.join(f'{r:,.0f}' for r in stream_rates)} records/s; export "
        f"{', '.join(f'{r:,.0f}' for r in export_rates)} records/s: **{ratio:.0%} of "
        f"export's rate**; server peak RSS **{rss:.0f} MB** | goal ≥ 80%, < 200 MB |"
    )

    # 2. 50 concurrent pulls of a week's window
    server = Served(folder)
    try:
        token = _token(folder)
        week = {"start": "2026-03-02", "end": "2026-03-08"}
        results: list[tuple[int, int, float] | Exception] = []

        def pull_week() -> None:
            try:
                results.append(_pull(server.url, token, week))
            except Exception as exc:  # counted as an error below
                results.append(exc)

        threads = [threading.Thread(target=pull_week) for _ in range(50)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ok = [r for r in results if isinstance(r, tuple) and r[0] == 200]
        sizes = {r[1] for r in ok}
        errors = len(results) - len(ok)
        rss = server.peak_rss_mb()
    finally:
        server.stop()
    lines.append(
        f"| 50 concurrent `/v1/export` pulls of one week ({events * 7 // 180:,} records "
        f"each) | {errors} errors, {len(sizes)} distinct size(s), {wall:.1f} s for all; "
        f"server peak RSS {rss:.0f} MB | goal: no error |"
    )


LOAD_SECONDS = 30
CLIENTS = 20


def _one_day_load(folder: Path, workers: int) -> tuple[list[float], int, float]:
    """(seconds of each pull, errors, server CPU ms per pull) of CLIENTS clients pulling
    one day over and over for LOAD_SECONDS from a server with ``workers`` workers."""
    server = Served(folder, "--workers", str(workers))
    try:
        token = _token(folder)
        day = {"start": "2026-02-10", "end": "2026-02-10"}
        timings: list[float] = []
        errors = 0
        cpu_before = server.cpu_seconds()
        stop_at = time.monotonic() + LOAD_SECONDS

        def client() -> None:
            # http.client, not httpx: twenty clients share this process's one GIL, and a
            # heavy client would measure itself rather than the server
            nonlocal errors
            target = f"/v1/export?{urlencode(day)}"
            auth = {"Authorization": f"Bearer {token}"}
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    conn.request("GET", target, headers=auth)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    errors += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                    continue
                timings.append(time.perf_counter() - t0)
                errors += response.status != 200
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / max(1, len(timings))
    finally:
        server.stop()
    return timings, errors, cpu_ms


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000


def bench_latency(lines: list[str], per_day: int, fresh: Callable[[str], Path]) -> None:
    """p50/p99 of a one-day /v1/export at 20 concurrent clients: one worker and one
    worker per core, side by side in one run."""
    from producers.identity import SAMPLE_DIRECTORY
    from relay.signing import generate_keypair

    folder = fresh("api-latency")
    (folder / "identities.toml").write_text(SAMPLE_DIRECTORY)
    generate_keypair(folder / "keys", "rsa")
    synthetic_log(folder, per_day * 180)
    cores = os.cpu_count() or 1
    measured = {}
    for workers in sorted({1, cores}):
        measured[workers] = _one_day_load(folder, workers)
    for workers, (timings, errors, cpu_ms) in measured.items():
        ordered = sorted(timings)
        goal = "goal p99 < 100 ms" if workers == cores else "one worker, for comparison"
        lines.append(
            f"| one-day `/v1/export` ({per_day} records), {CLIENTS} concurrent clients for "
            f"{LOAD_SECONDS} s, `serve --workers {workers}` ({cores} cores) | p50 "
            f"{_percentile(ordered, 0.5):.1f} ms, **p99 {_percentile(ordered, 0.99):.1f} ms**, "
            f"{len(timings) / LOAD_SECONDS:,.0f} pulls/s, server CPU {cpu_ms:.1f} ms a pull, "
            f"{errors} errors | {goal} |"
        )
