"""RFC 3161 timestamps on checkpoints, when configured (FLAGTRAIL_TSA_CHECKPOINTS=1 with
FLAGTRAIL_TSA_URL): a TSA vouches for when each checkpoint existed, so a heartbeat's
"nothing appended until T" rests on a clock the relay's operator does not hold.

The relay asks on a thread of its own (relay.latest: the newest checkpoint only, so a
slow TSA skips some rather than slowing the relay) and keeps the token, over the
SHA-256 of the checkpoint's note text, in ``checkpoint_timestamps`` beside the tree.
An export copies the token of its checkpoint into the signed manifest
(``checkpoint_timestamp``); verify checks it like the manifest's own token."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Column, Engine, LargeBinary, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError

from producers.errors import BackendUnavailable, ConfigError, EvidenceError
from producers.schema import STAMPS_LOCK
from relay.checkpoint_rows import key_columns, note_key, open_tables
from relay.latest import LatestWorker
from relay.proofs.checkpoint import parse_checkpoint, signed_time
from relay.proofs.note import split_note
from relay.timestamp import (
    TSA_URL_ENV,
    TimestampError,
    check_token,
    new_nonce,
    postdated,
    request_token,
)

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from relay.tree import TreeStore

log = structlog.get_logger("flagtrail.relay")
CHECKPOINTS_ENV = "FLAGTRAIL_TSA_CHECKPOINTS"

_metadata = MetaData()
stamps_table = Table(
    "checkpoint_timestamps",
    _metadata,
    *key_columns(),
    Column("nonce", String(32), nullable=False),
    Column("token", LargeBinary, nullable=False),
)


class CheckpointStamps:
    def __init__(self, engine: Engine, chain_id: str, *, read_only: bool = False) -> None:
        self.engine, self.chain_id = engine, chain_id
        self.exists = open_tables(
            engine,
            _metadata,
            read_only=read_only,
            what="checkpoint timestamps",
            lock_id=STAMPS_LOCK,
        )

    def add(self, note: bytes, nonce: int, token: bytes) -> None:
        size, signed_at = note_key(note)
        row = {
            "chain_id": self.chain_id,
            "tree_size": size,
            "signed_at": signed_at,
            "nonce": str(nonce),
            "token": token,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(stamps_table.insert(), row)
        except IntegrityError:
            pass  # already stamped

    def find(self, note: bytes) -> dict[str, Any] | None:
        """The manifest's ``checkpoint_timestamp`` for this checkpoint, if it was stamped."""
        if not self.exists:
            return None
        size, signed_at = note_key(note)
        c = stamps_table.c
        query = select(c.nonce, c.token).where(
            c.chain_id == self.chain_id, c.tree_size == size, c.signed_at == signed_at
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {"nonce": row[0], "token": base64.b64encode(bytes(row[1])).decode()}


class CheckpointStamper:
    """The relay's listener: each new checkpoint is stamped in the background."""

    def __init__(self, url: str, stamps: CheckpointStamps) -> None:
        self.url, self.stamps = url, stamps
        self._worker: LatestWorker[bytes] = LatestWorker(self.stamp, "checkpoint-stamper")

    def submit(self, note: bytes) -> None:
        self._worker.submit(note)

    def stamp(self, note: bytes) -> bool:
        size, _ = note_key(note)
        text = split_note(note)[0]
        nonce = new_nonce()
        try:
            token = request_token(self.url, hashlib.sha256(text).digest(), nonce)
        except (BackendUnavailable, TimestampError) as exc:
            log.warning("checkpoint.timestamp_failed", size=size, tsa=self.url, error=str(exc))
            return False
        self.stamps.add(note, nonce, token)
        return True

    def flush(self, timeout: float = 20.0) -> bool:
        return self._worker.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)


def stamper_for(store: TreeStore | None) -> CheckpointStamper | None:
    """FLAGTRAIL_TSA_CHECKPOINTS=1 (with FLAGTRAIL_TSA_URL): the relay's stamper."""
    if os.environ.get(CHECKPOINTS_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return None
    url = os.environ.get(TSA_URL_ENV)
    if not url:
        raise ConfigError(f"{CHECKPOINTS_ENV} is set, but no TSA is: set {TSA_URL_ENV}")
    if store is None:
        raise ConfigError(f"{CHECKPOINTS_ENV} is set, but the relay keeps no Merkle tree")
    return CheckpointStamper(url, CheckpointStamps(store.engine, store.chain_id))


def check_checkpoint_stamp(
    manifest: dict[str, Any], trusted: list[Certificate] | tuple[Certificate, ...]
) -> tuple[str | None, str | None]:
    """(what to report or None when the package has none, the failure if any)."""
    stamp = manifest.get("checkpoint_timestamp")
    if stamp is None:
        return None, None
    entry = manifest.get("merkle")
    if (
        not isinstance(stamp, dict)
        or not isinstance(entry, dict)
        or not isinstance(entry.get("checkpoint"), str)
        or not str(stamp.get("nonce", "")).isdigit()
    ):
        return "INVALID", "the manifest's checkpoint_timestamp is malformed"
    try:
        token = base64.b64decode(str(stamp.get("token")), validate=True)
        text = split_note(entry["checkpoint"].encode())[0]
        facts = check_token(token, hashlib.sha256(text).digest(), int(stamp["nonce"]), trusted)
    except (EvidenceError, ValueError) as exc:
        return "INVALID", f"the checkpoint's timestamp: {exc}"
    when = facts.gen_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    claimed = signed_time(parse_checkpoint(text))
    if claimed is not None and postdated(claimed, facts.gen_time):
        # the relay signs, then asks the TSA: a signed time past genTime never happened
        return "INVALID", (
            f"the checkpoint says it was signed at {claimed}, later than {when}, when the "
            "TSA saw it: its time (and a heartbeat resting on it) is a lie"
        )
    if facts.trusted_by is None:
        return f"the checkpoint existed at {when} per {facts.tsa} (TSA NOT checked)", None
    return f"the checkpoint existed at {when} per {facts.tsa} (trusted)", None
