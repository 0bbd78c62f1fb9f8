"""The identity vault: pseudonym -> identity, in the outbox database, crypto-shreddable.

Each subject (one pseudonym) has its own random AES-256-GCM key. The identity is
encrypted under that key, and the key is stored wrapped (AES-GCM) under the
vault master key, a file kept outside the database (``FLAGTRAIL_VAULT_KEY_PATH``,
default ``vault.key``). Both encryptions bind the pseudonym as associated data,
so an operator with database access who swaps rows (or only the wrapped keys)
between two pseudonyms gets a decryption failure, never the wrong name.

Erasing a subject deletes its wrapped key and its ciphertext (crypto-shredding):
nothing that remains, in the database or a copy of it made afterwards, can give
the name back. The chain never held the name, so every export stays valid.

Also here: which chains store pseudonyms (``flagtrail_privacy_chains``) and which
key files the database has seen (``flagtrail_privacy_keys``), so a lost or
swapped key file is an error rather than a silent new set of pseudonyms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    LargeBinary,
    MetaData,
    String,
    Table,
    select,
    update,
)

from producers.errors import ConfigError, EvidenceError
from producers.pseudonyms import SecretKey
from producers.schema import VAULT_LOCK, create_tables

metadata = MetaData()

vault = Table(
    "flagtrail_identity_vault",
    metadata,
    Column("pseudonym", String(67), primary_key=True),
    # nonce (12 bytes) + AES-GCM(master key, subject key, aad); NULL once erased
    Column("wrapped_key", LargeBinary, nullable=True),
    # nonce (12 bytes) + AES-GCM(subject key, identity, aad); NULL once erased
    Column("ciphertext", LargeBinary, nullable=True),
    Column("master_key_id", String(64), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    # last day a record named this subject: vault retention counts from here
    Column("last_seen_us", BigInteger, nullable=False),
    Column("erased_at_us", BigInteger, nullable=True),
    Column("erased_event_id", String(64), nullable=True),
)

privacy_chains = Table(
    "flagtrail_privacy_chains",
    metadata,
    Column("chain_id", String(200), primary_key=True),
    Column("mode", String(16), nullable=False),  # "pseudonymous" or "plain"
    Column("decided_at_us", BigInteger, nullable=False),
    Column("why", String(200), nullable=False),
)

privacy_keys = Table(
    "flagtrail_privacy_keys",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key_id", String(64), nullable=False),
    Column("first_used_at_us", BigInteger, nullable=False),
)

_WRAP_AAD = b"flagtrail vault subject key v1|"
_DATA_AAD = b"flagtrail vault identity v1|"
_NONCE = 12


def ensure_vault_schema(engine: Engine) -> None:
    create_tables(engine, metadata, VAULT_LOCK)


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def day_of(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).date().isoformat()


def _upsert(conn: Connection, table: Table, row: dict[str, Any], update_cols: dict[str, Any]):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table).values(row)
    key = [c.name for c in table.primary_key.columns]
    if update_cols:
        return conn.execute(statement.on_conflict_do_update(index_elements=key, set_=update_cols))
    return conn.execute(statement.on_conflict_do_nothing(index_elements=key))


# -- key files the database has seen ------------------------------------------------------
def check_key(conn: Connection, key: SecretKey) -> None:
    """The first key of each kind is recorded; any other key file is refused."""
    _upsert(
        conn,
        privacy_keys,
        {"kind": key.kind, "key_id": key.key_id, "first_used_at_us": now_us()},
        {},
    )
    known = conn.execute(
        select(privacy_keys.c.key_id).where(privacy_keys.c.kind == key.kind)
    ).scalar_one()
    if known != key.key_id:
        raise ConfigError(
            f"{key.kind} key {key.path} is not the key this database was used with "
            f"({known}); restore the right key file"
        )


def known_key_id(conn: Connection, kind: str) -> str | None:
    return conn.execute(
        select(privacy_keys.c.key_id).where(privacy_keys.c.kind == kind)
    ).scalar_one_or_none()


# -- which chains are pseudonymous --------------------------------------------------------
def chain_mode(conn: Connection, chain_id: str) -> str | None:
    return conn.execute(
        select(privacy_chains.c.mode).where(privacy_chains.c.chain_id == chain_id)
    ).scalar_one_or_none()


def record_chain_mode(conn: Connection, chain_id: str, mode: str, why: str) -> str:
    """Record ``mode`` unless a mode is recorded; returns the recorded one."""
    _upsert(
        conn,
        privacy_chains,
        {"chain_id": chain_id, "mode": mode, "decided_at_us": now_us(), "why": why},
        {},
    )
    return chain_mode(conn, chain_id) or mode


def switch_chain_mode(conn: Connection, chain_id: str, mode: str, why: str) -> None:
    _upsert(
        conn,
        privacy_chains,
        {"chain_id": chain_id, "mode": mode, "decided_at_us": now_us(), "why": why},
        {"mode": mode, "decided_at_us": now_us(), "why": why},
    )


# -- subjects ------------------------------------------------------------------------------
def _aad(prefix: bytes, pseudonym: str) -> bytes:
    return prefix + pseudonym.encode()


def seal_subject(master: SecretKey, pseudonym: str, identity: str, at_us: int) -> dict[str, Any]:
    """A new vault row: a fresh subject key, wrapped; the identity, encrypted."""
    subject_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
    wrapped = AESGCM(master.material).encrypt(wrap_nonce, subject_key, _aad(_WRAP_AAD, pseudonym))
    sealed = AESGCM(subject_key).encrypt(
        data_nonce, identity.encode("utf-8"), _aad(_DATA_AAD, pseudonym)
    )
    return {
        "pseudonym": pseudonym,
        "wrapped_key": wrap_nonce + wrapped,
        "ciphertext": data_nonce + sealed,
        "master_key_id": master.key_id,
        "created_at_us": at_us,
        "last_seen_us": at_us,
    }


def store_subject(conn: Connection, master: SecretKey, pseudonym: str, identity: str) -> None:
    """Add the subject unless present (an erased subject stays erased); mark it seen."""
    at = now_us()
    _upsert(conn, vault, seal_subject(master, pseudonym, identity, at), {"last_seen_us": at})


@dataclass(frozen=True)
class Resolution:
    pseudonym: str
    identity: str | None = None
    erased_at: str | None = None  # RFC 3339 date of the erasure
    unknown: bool = False
    # the identity_erased (or retention_applied) event that chained the erasure; None
    # on a row marked erased behind flagtrail's back, which erasure never leaves
    erased_event_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.unknown:
            return {"status": "unknown"}
        if self.erased_at is not None:
            return {
                "status": "erased",
                "erased_at": self.erased_at,
                "event_id": self.erased_event_id,
            }
        return {"status": "resolved", "identity": self.identity}


def open_row(master: SecretKey, row: Any) -> str:
    """The identity in a vault row; EvidenceError when the row was tampered with."""
    pseudonym = row.pseudonym
    try:
        wrapped, sealed = bytes(row.wrapped_key), bytes(row.ciphertext)
        subject_key = AESGCM(master.material).decrypt(
            wrapped[:_NONCE], wrapped[_NONCE:], _aad(_WRAP_AAD, pseudonym)
        )
        plain = AESGCM(subject_key).decrypt(
            sealed[:_NONCE], sealed[_NONCE:], _aad(_DATA_AAD, pseudonym)
        )
        return plain.decode("utf-8")
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise EvidenceError(
            f"vault entry of {pseudonym} does not decrypt: it was altered or moved from "
            "another pseudonym (or the vault key is not the one it was sealed with)"
        ) from None


def lookup(
    conn: Connection, master: SecretKey | None, pseudonyms: list[str]
) -> dict[str, Resolution]:
    found: dict[str, Resolution] = {p: Resolution(p, unknown=True) for p in pseudonyms}
    for start in range(0, len(pseudonyms), 500):
        chunk = pseudonyms[start : start + 500]
        for row in conn.execute(select(vault).where(vault.c.pseudonym.in_(chunk))):
            if row.erased_at_us is not None:
                found[row.pseudonym] = Resolution(
                    row.pseudonym,
                    erased_at=day_of(row.erased_at_us),
                    erased_event_id=row.erased_event_id,
                )
            else:
                if master is None:
                    raise ConfigError("the vault key is needed to resolve pseudonyms")
                found[row.pseudonym] = Resolution(row.pseudonym, identity=open_row(master, row))
    return found


def shred(conn: Connection, pseudonym: str, event_id: str, at_us: int) -> bool:
    """Destroy the subject's key and ciphertext; False when there was nothing to erase."""
    done = conn.execute(
        update(vault)
        .where(vault.c.pseudonym == pseudonym, vault.c.erased_at_us.is_(None))
        .values(wrapped_key=None, ciphertext=None, erased_at_us=at_us, erased_event_id=event_id)
    )
    return done.rowcount == 1


def stale_subjects(conn: Connection, before_us: int) -> list[str]:
    rows = conn.execute(
        select(vault.c.pseudonym)
        .where(vault.c.erased_at_us.is_(None), vault.c.last_seen_us < before_us)
        .order_by(vault.c.pseudonym)
    )
    return [r.pseudonym for r in rows]
