"""Read-only API tokens: stored as SHA-256 hashes in the outbox database, never in clear.

A token is 32 random bytes (256 bits), so a plain SHA-256 is enough to make a stolen
table useless (no password-style stretching needed). The server hashes what a client
presents, looks the hash up, and compares with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, Text, select

from producers.errors import ConfigError
from producers.schema import TOKENS_LOCK, create_tables

TOKEN_PREFIX = "ftk_"
MAX_PRESENTED_LENGTH = 256  # a longer Authorization value is never a token of ours
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# scope -> what it lets a token do; every scope is read-only
SCOPES = {
    "export:read": "pull evidence: /v1/export, /v1/package, /v1/head",
    "metrics:read": "read the API's /metrics",
}
_EXPIRY = re.compile(r"(\d{1,6})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}

metadata = MetaData()
api_tokens = Table(
    "flagtrail_api_tokens",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("scopes", Text, nullable=False),  # space-separated, as OAuth writes scopes
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("revoked_at_us", BigInteger, nullable=True),
    Column("last_used_at_us", BigInteger, nullable=True),
)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _moment(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def ensure_token_schema(engine: Engine) -> None:
    """Create the token table (idempotent, both databases)."""
    create_tables(engine, metadata, TOKENS_LOCK)


def parse_expiry(text_value: str) -> timedelta | None:
    """``90d``, ``12h``, ``30m``, or ``never``."""
    if text_value == "never":
        return None
    match = _EXPIRY.fullmatch(text_value)
    if match is None or int(match[1]) == 0:
        raise ConfigError(
            f"--expires {text_value!r}: use a duration like 90d, 12h or 30m, or never"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def check_name(name: str) -> str:
    if NAME.fullmatch(name) is None:
        raise ConfigError(
            f"token name {name[:80]!r} is not valid: 1 to 64 characters from a-z, 0-9, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


def check_scopes(scopes: list[str]) -> frozenset[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SCOPES)}"
        )
    return frozenset(scopes)


def _info(row: object) -> TokenInfo:
    m = row._mapping  # type: ignore[attr-defined]
    return TokenInfo(
        m["name"],
        frozenset(m["scopes"].split()),
        _moment(m["created_at_us"]),  # type: ignore[arg-type]
        _moment(m["expires_at_us"]),
        _moment(m["revoked_at_us"]),
        _moment(m["last_used_at_us"]),
    )


class TokenStore:
    """The token table of one outbox database."""

    def __init__(self, engine: Engine, create_schema: bool = True) -> None:
        self.engine = engine
        if create_schema:
            ensure_token_schema(engine)

    def create(
        self, name: str, scopes: list[str], expires_in: timedelta | None, now: datetime
    ) -> str:
        """A new token (returned once, never stored); ConfigError if the name is taken."""
        check_name(name)
        wanted = check_scopes(scopes)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = {
            "name": name,
            "token_sha256": token_hash(token),
            "scopes": " ".join(sorted(wanted)),
            "created_at_us": _us(now),
            "expires_at_us": _us(now + expires_in) if expires_in else None,
            "revoked_at_us": None,
            "last_used_at_us": None,
        }
        with self.engine.begin() as conn:
            taken = conn.execute(select(api_tokens.c.name).where(api_tokens.c.name == name))
            if taken.first() is not None:
                # a revoked name stays taken: the evidence_exported events name it
                raise ConfigError(f"a token named {name!r} exists already: choose another name")
            conn.execute(api_tokens.insert().values(row))
        return token

    def list(self) -> list[TokenInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.name)).fetchall()
        return [_info(r) for r in rows]

    def revoke(self, name: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                api_tokens.update()
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at_us.is_(None))
                .values(revoked_at_us=_us(now))
                .returning(api_tokens.c.name)
            ).first()
        if done is None:
            raise ConfigError(f"no active token named {name[:80]!r} (see `flagtrail token list`)")

    def lookup(self, presented: str) -> TokenInfo | None:
        """The token ``presented`` names, in any state; None for an unknown one."""
        if not presented.startswith(TOKEN_PREFIX) or len(presented) > MAX_PRESENTED_LENGTH:
            presented = ""  # still hashed and compared below: the same work either way
        digest = token_hash(presented)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_tokens).where(api_tokens.c.token_sha256 == digest)
            ).first()
        if row is None:
            hmac.compare_digest(digest, "0" * 64)
            return None
        if not presented or not hmac.compare_digest(row._mapping["token_sha256"], digest):
            return None
        return _info(row)

    def touch(self, name: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.name == name)
                .values(last_used_at_us=_us(now))
            )

    def state(self, name: str, now: datetime) -> str:
        """``active``, ``revoked``, ``expired`` or ``unknown`` (re-checked mid-stream)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).first()
        return "unknown" if row is None else _info(row).state(now)
