"""Attacks on the shared rate limiter's fixed table of buckets."""

from __future__ import annotations

import hashlib
from pathlib import Path

from flagtrail.api.ratelimit import SLOTS, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def home_slot(key: str) -> int:
    """Where the table starts looking for a key, as anyone reading the source can compute."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return (digest or 1) % SLOTS


def addresses_aimed_at(key: str, count: int) -> list[str]:
    """Refused-request keys (one per IPv6 address of the attacker's /64) whose probe
    window is exactly ``key``'s."""
    target, found, n = home_slot(key), [], 0
    while len(found) < count:
        candidate = f"unauthenticated:2001:db8::{n:x}"
        if home_slot(candidate) == target:
            found.append(candidate)
        n += 1
    return found


def test_crafted_addresses_cannot_reset_a_tokens_bucket(tmp_path: Path) -> None:
    """Failing on the current code: the holder of a leaked token, with addresses picked
    offline so that they share the token's probe window, fills the window with buckets
    emptied right after the token's (refused requests), then makes one more address claim
    a slot: the table evicts the fullest bucket of the window, which is the token's, and
    the token starts again with a full burst. Round after round, the token has no limit."""
    clock = Clock()
    limiter = RateLimiter(3, clock=clock, table=tmp_path / "buckets")
    rounds = 5
    aimed = iter(addresses_aimed_at("leaked-ci", 32 * rounds))
    allowed = 0
    for _ in range(rounds):
        allowed += sum(limiter.take("leaked-ci") == 0 for _ in range(10))
        clock.now += 0.1
        for address in [next(aimed) for _ in range(31)]:  # fresh buckets, emptied
            while limiter.take(address) == 0:
                pass
        clock.now += 0.1
        limiter.take(next(aimed))  # a newcomer evicts the window's fullest bucket
        clock.now += 0.1
    # 3 a minute, and these rounds took 1.5 s: a fourth would need 20 s of refill
    assert allowed == 3, f"the token got {allowed} requests through in 1.5 s"
