"""The witnesses' cosignatures, kept beside the checkpoints they cosign.

Table ``checkpoint_cosignatures`` in the Merkle tree's database (relay.tree), keyed
like ``merkle_checkpoints`` (chain, tree size, signing time) plus the witness; on
SQLite it refuses UPDATE and DELETE as the tree's tables do. An export's checkpoint
is the relay's signed note with these lines appended (a note may carry any number of
signatures), so `flagtrail verify --witness-key` and any C2SP client read them.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, Text, select
from sqlalchemy.exc import IntegrityError

from producers.schema import COSIGNATURES_LOCK
from relay.checkpoint_rows import (
    append_only_triggers,
    key_columns,
    note_key,
    open_tables,
)
from relay.tree import TreeStore, checkpoints_table

_metadata = MetaData()
cosignatures_table = Table(
    "checkpoint_cosignatures",
    _metadata,
    *key_columns(),
    Column("witness", String(255), primary_key=True),
    Column("line", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
)
_SQLITE_APPEND_ONLY = append_only_triggers(("checkpoint_cosignatures",), "cosignatures are")


class CosignatureStore:
    def __init__(self, engine: Engine, chain_id: str, *, read_only: bool = False) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.exists = open_tables(
            engine,
            _metadata,
            read_only=read_only,
            what="cosignature store",
            lock_id=COSIGNATURES_LOCK,
            triggers=_SQLITE_APPEND_ONLY,
        )

    def add(self, note: bytes, witness: str, line: str) -> None:
        size, signed_at = note_key(note)
        row = {
            "chain_id": self.chain_id,
            "tree_size": size,
            "signed_at": signed_at,
            "witness": witness,
            "line": line,
            "received_at": int(time.time()),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(cosignatures_table.insert(), row)
        except IntegrityError:
            pass  # this witness's cosignature of this checkpoint is already kept

    def lines(self, note: bytes) -> list[str]:
        if not self.exists:
            return []
        size, signed_at = note_key(note)
        c = cosignatures_table.c
        query = (
            select(c.line)
            .where(c.chain_id == self.chain_id, c.tree_size == size, c.signed_at == signed_at)
            .order_by(c.witness)
        )
        with self.engine.connect() as conn:
            return [str(line) for line in conn.execute(query).scalars()]

    def attach(self, note: bytes) -> bytes:
        """The note with every kept cosignature line appended (none twice)."""
        present = set(note.decode().split("\n"))
        extra = [line for line in self.lines(note) if line.rstrip("\n") not in present]
        return note + "".join(extra).encode()


class CosignedTreeStore:
    """A read-only view of a TreeStore whose latest checkpoint carries its witnesses'
    cosignatures: what an export puts in its package."""

    def __init__(self, store: TreeStore) -> None:
        self._store = store
        self._cosignatures = CosignatureStore(store.engine, store.chain_id, read_only=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def latest_checkpoint(self) -> bytes | None:
        """The latest checkpoint with its cosignatures; when it has none yet (a heartbeat
        signed a moment ago), the latest cosigned one of the same tree, which proves
        the same records."""
        note = self._store.latest_checkpoint()
        if note is None:
            return None
        attached = self._cosignatures.attach(note)
        if attached != note or not self._cosignatures.exists:
            return attached
        size, _ = note_key(note)
        c, w = checkpoints_table.c, cosignatures_table.c
        query = (
            select(c.note)
            .join(
                cosignatures_table,
                (w.chain_id == c.chain_id)
                & (w.tree_size == c.tree_size)
                & (w.signed_at == c.signed_at),
            )
            .where(c.chain_id == self._store.chain_id, c.tree_size == size)
            .order_by(c.signed_at.desc())
            .limit(1)
        )
        with self._store.engine.connect() as conn:
            cosigned = conn.execute(query).scalar()
        return attached if cosigned is None else self._cosignatures.attach(cosigned.encode())
