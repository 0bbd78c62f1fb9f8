"""What every handler shares: the settings, the token store, the limiter, the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flagtrail.api.config import ApiConfig
from flagtrail.api.metrics import ApiMetrics
from flagtrail.api.ratelimit import RateLimiter
from flagtrail.api.receipts import ReceiptWriter
from flagtrail.api.tokens import TokenStore

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.requests import Request

    from producers.outbox import Outbox


@dataclass
class ApiContext:
    config: ApiConfig
    engine: Engine
    tokens: TokenStore
    limiter: RateLimiter
    metrics: ApiMetrics
    outbox: Outbox
    receipts: ReceiptWriter
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @asynccontextmanager
    async def stream_slot(self) -> AsyncIterator[None]:
        """Wait for one of this worker's share of ``max_streams``: memory stays bounded
        however many pull."""
        if self._slots is None:  # made in the event loop that serves
            # rounded down: the workers together never exceed --max-streams (unless
            # there are more workers than streams: each holds one)
            share = max(1, self.config.max_streams // self.config.workers)
            self._slots = asyncio.Semaphore(share)
        async with self._slots:
            yield

    @classmethod
    def build(
        cls,
        config: ApiConfig,
        limiter: RateLimiter | None = None,
        receipt_turns: Path | None = None,
    ) -> ApiContext:
        """Everything made once, at start-up (the outbox schema too: never in a race).
        Workers of one server pass the ``limiter`` they share and the lock file through
        which they take turns committing receipts."""
        from flagtrail.settings import make_engine
        from producers.outbox import Outbox

        s = config.settings
        engine = make_engine(s.outbox_url)
        outbox = Outbox(engine, s.identities, chain_id=s.chain_id)
        return cls(
            config,
            engine,
            TokenStore(engine),
            limiter or RateLimiter(config.rate_per_minute, config.rate_burst),
            ApiMetrics(),
            outbox,
            ReceiptWriter(outbox, receipt_turns),
        )


def context_of(request: Request) -> ApiContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
