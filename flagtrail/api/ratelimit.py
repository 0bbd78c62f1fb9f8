"""A token bucket per API token (and per address for refused requests), shared by every
worker of `flagtrail serve`: a leaked CI token cannot hammer the log, and running four
workers does not give it four times the rate.

The buckets live in a fixed table of ``slots`` entries in shared memory (an mmap of a
file when workers share it, anonymous otherwise), so the table's size is bounded however
many addresses guess tokens. A key's slot is found by open addressing over a short probe
window. A bucket that has refilled to capacity is the same as no bucket, so its slot is
reused freely; only when every slot of a window holds a bucket still refilling (thousands
of keys busy in the same minute) is the fullest one evicted, which can only make the
limit more lenient for that key, never refuse anyone early. Slots are chosen by a hash
keyed with a secret drawn when the table is made (kept in its header): otherwise anyone
could pick, offline, addresses that land in a token's window and, by emptying their own
buckets there, get that token's bucket evicted (a fresh burst) as often as they like.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import math
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SLOTS = 4096
PROBE = 32


SECRET_BYTES = 16


class _Bucket(ctypes.Structure):
    _fields_ = [("key", ctypes.c_uint64), ("tokens", ctypes.c_double), ("when", ctypes.c_double)]


def _key_digest(key: str, secret: bytes) -> int:
    hashed = hashlib.blake2b(key.encode(), digest_size=8, key=secret).digest()
    return int.from_bytes(hashed, "big") or 1  # 0 marks an empty slot


class RateLimiter:
    """``per_minute`` requests a minute per key, bursts up to ``burst``.

    With ``table`` (a file path), every process that opens the same path shares the
    buckets; the limiter pickles as that path, so a worker process re-opens it. The
    clock must be one all the sharing processes agree on (time.monotonic is system-wide).
    """

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        table: Path | None = None,
        slots: int = SLOTS,
    ) -> None:
        self.per_minute, self.burst = per_minute, burst
        self.rate = per_minute / 60.0
        self.capacity = float(burst or per_minute)
        self.clock = clock
        self.table, self.slots = table, slots
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing an fd
        size = SECRET_BYTES + ctypes.sizeof(_Bucket) * slots
        self._fd: int | None = None
        if table is None:
            self._map = mmap.mmap(-1, size)
            self._map[:SECRET_BYTES] = os.urandom(SECRET_BYTES)
        else:
            self._fd = os.open(table, os.O_RDWR | os.O_CREAT, 0o600)
            with self._locked():  # the first opener draws the secret, the others read it
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)  # zeros: every slot empty
                self._map = mmap.mmap(self._fd, size)
                if not any(self._map[:SECRET_BYTES]):
                    self._map[:SECRET_BYTES] = os.urandom(SECRET_BYTES)
        self._secret = bytes(self._map[:SECRET_BYTES])
        self._buckets = (_Bucket * slots).from_buffer(self._map, SECRET_BYTES)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.table is None:
            raise TypeError("only a RateLimiter with a table file can be shared with a process")
        args = (self.per_minute, self.burst, self.clock)
        return (_reopen, (args, self.table, self.slots))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + max(0.0, now - bucket.when) * self.rate)

    def _slot(self, digest: int, now: float) -> _Bucket:
        """The key's bucket, or a slot claimed for it with a full bucket."""
        first = digest % self.slots
        reusable: _Bucket | None = None
        fullest: _Bucket | None = None
        for step in range(min(PROBE, self.slots)):
            bucket = self._buckets[(first + step) % self.slots]
            if bucket.key == digest:
                return bucket
            if reusable is None:
                if bucket.key == 0 or self._refilled(bucket, now) >= self.capacity:
                    reusable = bucket
                elif fullest is None or self._refilled(bucket, now) > self._refilled(fullest, now):
                    fullest = bucket
        claimed = reusable or fullest
        assert claimed is not None  # the window always has at least one slot
        claimed.key, claimed.tokens, claimed.when = digest, self.capacity, now
        return claimed

    def take(self, key: str) -> float:
        """0 when the request may go; else the seconds to wait (Retry-After)."""
        digest = _key_digest(key, self._secret)
        with self._locked():
            now = self.clock()
            bucket = self._slot(digest, now)
            tokens = self._refilled(bucket, now)
            if tokens >= 1:
                bucket.tokens, bucket.when = tokens - 1, now
                return 0.0
            bucket.tokens, bucket.when = tokens, now
            return (1 - tokens) / self.rate if self.rate else math.inf


def _reopen(args: tuple[Any, ...], table: Path, slots: int) -> RateLimiter:
    return RateLimiter(*args, table=table, slots=slots)
