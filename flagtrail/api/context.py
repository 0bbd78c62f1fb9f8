"""What every handler shares: the settings, the token store, the limiter, the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flagtrail.api.config import ApiConfig
from flagtrail.api.metrics import ApiMetrics
from flagtrail.api.ratelimit import RateLimiter
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
    _outbox: Outbox | None = None

    @classmethod
    def build(cls, config: ApiConfig) -> ApiContext:
        from flagtrail.settings import make_engine

        engine = make_engine(config.settings.outbox_url)
        return cls(
            config,
            engine,
            TokenStore(engine),
            RateLimiter(config.rate_per_minute, config.rate_burst),
            ApiMetrics(),
        )

    def outbox(self) -> Outbox:
        """The outbox that chains evidence_exported receipts (made on first use)."""
        if self._outbox is None:
            from producers.outbox import Outbox

            s = self.config.settings
            self._outbox = Outbox(self.engine, s.identities, chain_id=s.chain_id)
        return self._outbox


def context_of(request: Request) -> ApiContext:
    return request.app.state.ctx  # type: ignore[no-any-return]
