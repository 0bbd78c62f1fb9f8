"""Realistic flag changes through the producer path, for load tests and benchmarks."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producers import FlagChange, Outbox, PolicyError
from producers.errors import ConfigError
from producers.identity import IdentityDirectory

FLAGS = [
    "checkout-v2",
    "search-ranking",
    "new-onboarding",
    "dark-mode",
    "pricing-page-b",
    "ledger-sync",
    "fraud-rules-v3",
    "recommendations",
    "mobile-nav",
    "edge-cache",
]
REASONS = [
    "Gradual rollout",
    "Rollback after error budget burn",
    "Enable for beta cohort",
    "Kill switch during incident",
    "Experiment concluded",
    "Résumé upload fix ✅",
]


@dataclass
class LoadResult:
    recorded: int = 0
    rejected: int = 0
    seconds: float = 0.0


def _people(directory: IdentityDirectory) -> tuple[list[str], list[str]]:
    managers = sorted(n for n, roles in directory.identities.items() if "release-manager" in roles)
    engineers = sorted(n for n, roles in directory.identities.items() if roles)
    if len(managers) < 2:
        raise ConfigError(
            "loadgen needs two identities with the release-manager role in the "
            "identity directory (`flagtrail demo` writes a sample)"
        )
    return managers, engineers


def realistic_change(
    rng: random.Random,
    directory: IdentityDirectory,
    managers: list[str],
    engineers: list[str],
    sequence: int,
    blocked_ratio: float,
    states: dict[tuple[str, str], Any] | None = None,
) -> FlagChange:
    """A plausible change; with ``states`` (each flag and environment's last recorded
    ``after``) its ``before`` is the truth, so the load shows no state-continuity breaks."""
    flag = rng.choice(FLAGS)
    rollout_after = rng.randrange(0, 101, 5)
    if rng.random() < 0.4:
        actor, approver = rng.sample(managers, 2)
        environment, role = "production", "release-manager"
        if rng.random() < blocked_ratio:
            approver = actor  # a self-approval: blocked by CC8.1
    else:
        actor = rng.choice(engineers)
        environment, approver = rng.choice(["staging", "development"]), None
        role = sorted(directory.identities[actor])[0]
    rollout_before = rng.randrange(0, 100, 5)
    before = (states or {}).get(
        (flag, environment), {"enabled": rollout_before > 0, "rollout": rollout_before}
    )
    return FlagChange(
        actor=actor,
        approver=approver,
        role=role,
        flag_key=flag,
        environment=environment,
        action=rng.choice(["update", "rollout", "rollout", "create"]),
        before=before,
        after={
            "enabled": rollout_after > 0,
            "rollout": rollout_after,
            "segments": rng.sample(["beta", "eu", "us", "staff"], 2),
        },
        reason=rng.choice(REASONS),
        change_ref=f"CHG-{4000 + sequence}",
    )


def generate(
    outbox: Outbox,
    directory: IdentityDirectory,
    events: int,
    rate: float | None,
    per_transaction: int = 1,
    blocked_ratio: float = 0.02,
    seed: int = 7,
    progress: Callable[[LoadResult], None] | None = None,
) -> LoadResult:
    from flagtrail.controlplane import apply_change, ensure_flag_store

    if events < 1 or per_transaction < 1:
        raise ConfigError("--events and --per-transaction must be at least 1")
    ensure_flag_store(outbox)
    managers, engineers = _people(directory)
    rng = random.Random(seed)
    states: dict[tuple[str, str], Any] = {}  # (flag, environment) -> last recorded after
    result = LoadResult()
    started = time.perf_counter()
    done = 0
    while done < events:
        size = min(per_transaction, events - done)
        changes = [
            realistic_change(rng, directory, managers, engineers, done + i, blocked_ratio, states)
            for i in range(size)
        ]
        with outbox.engine.begin() as conn:
            for change in changes:
                try:
                    with conn.begin_nested():
                        apply_change(conn, outbox, change)
                    states[(change.flag_key, change.environment)] = change.after
                    result.recorded += 1
                except PolicyError:
                    result.rejected += 1
        done += size
        if rate:
            # pace to the wanted rate without drifting
            delay = started + done / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if progress and done % 10_000 < size:
            result.seconds = time.perf_counter() - started
            progress(result)
    result.seconds = time.perf_counter() - started
    return result
