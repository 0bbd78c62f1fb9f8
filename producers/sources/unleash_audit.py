"""Is the Unleash trigger still doing its job? (`flagtrail sources unleash check`)

An operator with rights on Unleash's database can disable or drop the trigger
(``ALTER TABLE events DISABLE TRIGGER …``) or delete Unleash's events; neither can be
prevented from inside that database. Both can be detected: every flag event Unleash
wrote after the install (its events table is append-only in normal operation) must
have its outbox row, and every outbox row names an event Unleash still holds unless
Unleash's own retention removed it. A relayed record stays in the chain whatever
happens to Unleash's table afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from producers.sources.unleash_trigger import WATERMARK_TABLE, trigger_state


@dataclass(frozen=True)
class TriggerAudit:
    state: str  # enabled | disabled | missing
    missing: list[int]  # Unleash flag event ids after the install with no outbox row
    deleted: list[str]  # outbox event ids whose Unleash event is gone

    @property
    def ok(self) -> bool:
        return self.state == "enabled" and not self.missing


def audit_trigger(engine: Engine) -> TriggerAudit:
    with engine.connect() as conn:
        state = trigger_state(conn)
        installed_after = conn.execute(
            text(f"SELECT coalesce(min(after_event_id), 0) FROM {WATERMARK_TABLE}")
        ).scalar_one()
        missing = conn.execute(
            text(
                "SELECT e.id FROM events e WHERE e.id > :after AND e.feature_name <> '' "
                "AND NOT EXISTS (SELECT 1 FROM flagtrail_outbox o "
                "WHERE o.event_id = 'unleash:' || e.id::text) ORDER BY e.id"
            ),
            {"after": installed_after},
        ).scalars()
        deleted = conn.execute(
            text(
                "SELECT o.event_id FROM flagtrail_outbox o WHERE o.event_id LIKE 'unleash:%' "
                "AND NOT EXISTS (SELECT 1 FROM events e "
                "WHERE 'unleash:' || e.id::text = o.event_id) ORDER BY o.id"
            )
        ).scalars()
        return TriggerAudit(state, list(missing), list(deleted))
