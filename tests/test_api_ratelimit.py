"""The API's rate limiter: a bucket per key, shared by every worker, bounded in memory."""

from __future__ import annotations

import pickle
import stat
from pathlib import Path

import pytest

from flagtrail.api.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_refills_at_the_rate_and_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=2, clock=clock)  # one a second, two at once
    assert [limiter.take("ci") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("ci") == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.take("ci") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("ci") == 0.0
    assert limiter.take("other") == 0.0  # keys do not share a bucket


def test_limiters_opened_on_one_table_share_their_buckets(tmp_path: Path) -> None:
    """What two workers see: the pickled limiter (how a worker receives it) re-opens the
    same table, so a token's third request is refused whichever worker answers it."""
    clock = Clock()
    first = RateLimiter(60, burst=2, clock=clock, table=tmp_path / "buckets")
    second = pickle.loads(pickle.dumps(first))
    assert second is not first and second.table == first.table
    assert first.take("ci") == 0.0
    assert second.take("ci") == 0.0
    assert first.take("ci") > 0 and second.take("ci") > 0
    assert stat.S_IMODE((tmp_path / "buckets").stat().st_mode) == 0o600


def test_a_limiter_without_a_table_cannot_be_sent_to_another_process() -> None:
    with pytest.raises(TypeError, match="table file"):
        pickle.dumps(RateLimiter(60))


def test_a_flood_of_addresses_neither_grows_the_table_nor_refuses_a_newcomer(
    tmp_path: Path,
) -> None:
    """Refused requests are limited per address: an attacker with many addresses must
    not grow the server's memory, and a full table must never refuse a key early."""
    clock = Clock()
    limiter = RateLimiter(3, clock=clock, table=tmp_path / "buckets", slots=256)
    size = (tmp_path / "buckets").stat().st_size
    for n in range(20_000):
        assert limiter.take(f"unauthenticated:10.{n // 65536}.{n // 256 % 256}.{n % 256}") == 0
        clock.now += 0.0001
    assert (tmp_path / "buckets").stat().st_size == size
    # a key in normal use is still limited once the flood has passed
    assert [limiter.take("busy") == 0 for _ in range(4)] == [True, True, True, False]
