"""Unleash from afar: follow ``/api/admin/search/events`` with a durable cursor.

Unleash 7's event search pages newest first (``created_at`` then ``id``, both
descending; ``offset``/``limit``, at most 1000 a page; ``from`` filters by whole
days) and offers no "after id" filter. A poll therefore pages back from the newest
event until it passes the cursor (the last event id recorded) by a look-back
window, then records what it found oldest first. A new event arriving while it
pages only shifts older ones to later pages (seen twice, never skipped).

Exactly once: each chunk of records and the cursor that covers it are written in
one outbox transaction, and an event's ``event_id`` (``unleash:<id>``) is unique in
the outbox, so a follower killed anywhere (before, during, after a commit) reads
again from the last committed cursor and records each event once. The look-back
window re-reads events younger than the cursor's time: an Unleash transaction that
took its event id earlier but committed after the cursor moved on is recorded
then, not lost (the outbox's unique event_id makes the re-read harmless).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, String, Table, select

from producers.errors import BackendUnavailable, ConfigError
from producers.policy import Policy
from producers.schema import SOURCES_LOCK, create_tables, ensure_schema
from producers.sources.common import (
    insert_records,
    is_production,
    policy_findings,
    production_environments,
    source_record,
)
from producers.sources.unleash import unleash_change
from relay.outbox.sql import translated

PAGE_LIMIT = 1000  # Unleash's maximum page size
SEARCH_PATH = "/api/admin/search/events"

_metadata = MetaData()
# the follower's cursor, in the outbox database: written in the transaction that
# writes the outbox rows it covers
source_cursor = Table(
    "flagtrail_source_cursor",
    _metadata,
    Column("name", String(200), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("last_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Cursor:
    last_id: int
    last_at: datetime


Fetch = Callable[[int, int, str | None], list[dict[str, Any]]]


def http_fetch(base_url: str, token: str, timeout: float = 30.0) -> Fetch:
    """A page of Unleash's event search: (offset, limit, from-day) → events."""
    base = base_url.rstrip("/")

    def fetch(offset: int, limit: int, from_day: str | None) -> list[dict[str, Any]]:
        query = {"offset": str(offset), "limit": str(limit)}
        if from_day:
            query["from"] = f"IS:{from_day}"
        request = urllib.request.Request(
            f"{base}{SEARCH_PATH}?{urllib.parse.urlencode(query)}",
            headers={"Authorization": token, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ConfigError(
                    f"Unleash at {base} refused the token ({exc.code}): give an admin API token"
                ) from None
            raise BackendUnavailable(f"Unleash at {base} answered {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"Unleash at {base} is unreachable: {exc}") from None
        except ValueError:
            raise BackendUnavailable(f"Unleash at {base} answered something not JSON") from None
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise BackendUnavailable(f"Unleash at {base} answered without an events list")
        return events

    return fetch


def _id(event: dict[str, Any]) -> int:
    value = event.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BackendUnavailable(f"Unleash sent an event without an integer id: {value!r:.40}")
    return value


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event.get("createdAt"))).astimezone(UTC)


class UnleashFollower:
    def __init__(
        self,
        engine: Engine,
        fetch: Fetch,
        *,
        policy: Policy,
        chain_id: str,
        name: str = "unleash",
        lookback: timedelta = timedelta(seconds=30),
        chunk: int = 1000,
    ) -> None:
        self.engine = engine
        self.fetch = fetch
        self.policy = policy
        self.production = production_environments(policy)
        self.chain_id = chain_id
        self.name = name
        self.lookback = lookback
        self.chunk = chunk
        ensure_schema(engine)
        create_tables(engine, _metadata, SOURCES_LOCK)

    def cursor(self) -> Cursor | None:
        with translated(self.engine, "reading the Unleash cursor"), self.engine.connect() as conn:
            row = conn.execute(
                select(source_cursor).where(source_cursor.c.name == self.name)
            ).first()
        if row is None:
            return None
        return Cursor(row.last_id, datetime.fromtimestamp(row.last_at_us / 1e6, UTC))

    def _pages(self, cursor: Cursor | None) -> Iterator[dict[str, Any]]:
        """Events newest first, until past the cursor by the look-back window."""
        horizon = cursor.last_at - self.lookback if cursor else None
        from_day = horizon.date().isoformat() if horizon else None
        offset = 0
        while True:
            page = self.fetch(offset, PAGE_LIMIT, from_day)
            yield from page
            if len(page) < PAGE_LIMIT:
                return
            oldest = page[-1]
            if cursor and _id(oldest) <= cursor.last_id and horizon and _at(oldest) < horizon:
                return
            offset += len(page)

    def pending(self) -> list[dict[str, Any]]:
        """Events after the cursor or inside its look-back window, oldest first."""
        cursor = self.cursor()
        horizon = cursor.last_at - self.lookback if cursor else None
        found: dict[int, dict[str, Any]] = {}
        for event in self._pages(cursor):
            event_id = _id(event)
            if cursor is None or event_id > cursor.last_id or _at(event) >= horizon:
                found[event_id] = event
        return [found[i] for i in sorted(found)]

    def poll_once(self, before_commit: Callable[[int], None] | None = None) -> int:
        """Record what is new; returns how many records were written."""
        events = self.pending()
        written = 0
        for start in range(0, len(events), self.chunk):
            batch = events[start : start + self.chunk]
            records = []
            for event in batch:
                change = unleash_change(event)
                if change is None:
                    continue
                production = is_production(change, self.production)
                records.append(
                    source_record(
                        change,
                        chain_id=self.chain_id,
                        production=production,
                        findings=policy_findings(change, production),
                        limits=self.policy.limits,
                    )
                )
            last = batch[-1]
            with translated(self.engine, "recording Unleash events"), self.engine.begin() as conn:
                written += insert_records(conn, self.chain_id, records)
                self._advance(conn, Cursor(_id(last), _at(last)))
                if before_commit is not None:
                    before_commit(written)
        return written

    def _advance(self, conn: Connection, cursor: Cursor) -> None:
        """Move the cursor forward only (a re-read in the look-back never moves it back)."""
        values = {
            "last_id": cursor.last_id,
            "last_at_us": int(cursor.last_at.timestamp() * 1_000_000),
            "updated_at_us": time.time_ns() // 1000,
        }
        current = conn.execute(
            select(source_cursor.c.last_id).where(source_cursor.c.name == self.name)
        ).first()
        if current is None:
            conn.execute(source_cursor.insert().values(name=self.name, **values))
        elif current.last_id < cursor.last_id:
            conn.execute(
                source_cursor.update().where(source_cursor.c.name == self.name).values(**values)
            )

    def run(
        self,
        interval: float,
        should_stop: Callable[[], bool],
        report: Callable[[int, str | None], None] = lambda written, problem: None,
    ) -> None:
        """Poll until ``should_stop``; ``report(written, problem)`` after each poll (an
        outage of Unleash or the outbox is reported and retried, never fatal)."""
        while not should_stop():
            try:
                report(self.poll_once(), None)
            except BackendUnavailable as exc:
                report(0, str(exc))
                if should_stop():
                    return
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, interval))
