"""Webhook receivers (LaunchDarkly, Flagsmith) as library calls, with no HTTP in them:
``WebhookReceiver.receive(body, headers)`` answers the status and body the HTTP route
sends (`flagtrail serve`, /v1/sources/<platform>).

- The body is bounded before anything else (413), then the signature is checked on
  the raw bytes in constant time: a bad or missing one is 401 and a ``rejected``
  record (CC7.2) is committed; the same bad request replayed is one record, not one
  per replay (its event_id is the digest of body and signature).
- A signed body that is not JSON, nests too deep or lacks a documented field is 400
  (a problem document), nothing recorded: it proves nothing.
- A flag change is committed to the outbox before the answer (200): the 2xx means
  durable. The platform's id is the event_id, so a redelivery or a replay of a signed
  body is recorded once (200, ``"duplicate": true``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from producers.controls import controls_for_rejection
from producers.errors import InvalidChange
from producers.events import event_record, utc_now
from producers.identity import IdentityProvider
from producers.policy import Policy
from producers.schema import ensure_schema
from producers.sources.common import (
    SourceChange,
    insert_records,
    is_production,
    policy_findings,
    production_environments,
    source_record,
)
from producers.validation import check_json_value

MAX_BODY_BYTES = 1024 * 1024  # LaunchDarkly's entries carry whole flag versions


@dataclass(frozen=True)
class Platform:
    name: str
    signature_header: str  # lower case
    mapper: Callable[[Mapping[str, Any]], SourceChange | None]


def launchdarkly() -> Platform:
    from producers.sources.launchdarkly import PLATFORM, SIGNATURE_HEADER, launchdarkly_change

    return Platform(PLATFORM, SIGNATURE_HEADER, launchdarkly_change)


def flagsmith() -> Platform:
    from producers.sources.flagsmith import PLATFORM, SIGNATURE_HEADER, flagsmith_change

    return Platform(PLATFORM, SIGNATURE_HEADER, flagsmith_change)


PLATFORMS: dict[str, Callable[[], Platform]] = {
    "launchdarkly": launchdarkly,
    "flagsmith": flagsmith,
}


@dataclass
class WebhookAnswer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # the problem kind, for 4xx answers


def sign(secret: str, body: bytes) -> str:
    """How both platforms sign: hex HMAC-SHA256 of the raw body under the secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookReceiver:
    def __init__(
        self,
        engine: Engine,
        platform: Platform,
        secret: str,
        *,
        chain_id: str,
        policy: Policy,
        identities: IdentityProvider | None = None,
        clock: Callable[[], datetime] = utc_now,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if not secret:
            raise ValueError("a webhook receiver needs its platform's signing secret")
        self.engine = engine
        self.platform = platform
        self.secret = secret
        self.chain_id = chain_id
        self.policy = policy
        self.production = production_environments(policy)
        self.identities = identities
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        ensure_schema(engine)

    def receive(self, body: bytes, headers: Mapping[str, str]) -> WebhookAnswer:
        if len(body) > self.max_body_bytes:
            return WebhookAnswer(
                413, problem="body-too-large", body={"detail": "webhook body is too large"}
            )
        given = _header(headers, self.platform.signature_header)
        if not given or not hmac.compare_digest(given.strip().lower(), sign(self.secret, body)):
            event_id = self._reject(body, given)
            return WebhookAnswer(
                401,
                problem="bad-signature",
                body={
                    "detail": f"{self.platform.name} webhook signature is missing or wrong",
                    "event_id": event_id,
                },
            )
        try:
            change = self._parse(body)
        except InvalidChange as exc:
            return WebhookAnswer(400, problem="malformed-webhook", body={"detail": str(exc)})
        if change is None:
            return WebhookAnswer(200, {"recorded": False, "reason": "not a flag change"})
        production = is_production(change, self.production)
        record = source_record(
            change,
            chain_id=self.chain_id,
            production=production,
            findings=policy_findings(change, production, self.identities, self.policy),
            limits=self.policy.limits,
        )
        with self.engine.begin() as conn:
            new = insert_records(conn, self.chain_id, [record])
        return WebhookAnswer(
            200, {"recorded": True, "duplicate": new == 0, "event_id": record["event_id"]}
        )

    def _parse(self, body: bytes) -> SourceChange | None:
        try:
            value = json.loads(body)
        except RecursionError:
            raise InvalidChange("webhook body nests too deep") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidChange(f"webhook body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidChange("webhook body is not a JSON object")
        # a signed body is still refused if the chain could not carry it safely
        limits = replace(self.policy.limits, max_state_bytes=self.max_body_bytes)
        check_json_value("webhook body", value, limits)
        return self.platform.mapper(value)

    def _reject(self, body: bytes, given: str | None) -> str:
        """Commit the refused attempt (CC7.2): who cannot be known, what arrived can."""
        digest = hashlib.sha256(body + b"\0" + (given or "").encode("utf-8", "replace"))
        event_id = f"{self.platform.name}:rejected:{digest.hexdigest()[:40]}"
        message = f"SOC2 CC7.2: {self.platform.name} webhook with a missing or wrong signature"
        record = event_record(
            event_id=event_id,
            chain_id=self.chain_id,
            recorded_at=self.clock(),
            action="rejected",
            controls=controls_for_rejection(False, None, "CC7.2"),
            actor=f"{self.platform.name}-webhook",
            reason=message,
            meta={
                "attempted_action": "webhook",
                "rule": "bad-signature",
                "control": "CC7.2",
                "status": 401,
                "message": message,
                "platform": self.platform.name,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_bytes": len(body),
                "signature_given": given is not None,
            },
        )
        with self.engine.begin() as conn:
            insert_records(conn, self.chain_id, [record])
        return event_id


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
