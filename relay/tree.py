"""The relay's Merkle tree over each chain and its signed checkpoints (writer side).

Leaf i of a chain's tree is the record with sequence i + 1, hashed as RFC 6962 does
its export line: the exact bytes of the line ``flagtrail export`` writes, without
the newline that ends it. Appending a record costs O(log n) hashing
(relay.proofs.merkle.CompactRange) and any proof is O(log n) node reads.

What is stored, like the tiles of Go's checksum database: every complete subtree of
STORED_LEVEL (8) or more levels, one row per 128 records on average. The lower
subtrees are recomputed when a proof needs them from the 256 records of their tile,
read from the log itself: storing them would double the relay's writes (two rows per
record), and the log already holds their leaves. A proof reads at most a few tiles.

Where it lives (``tree_url``): in an SQL database beside the log. For the SQLite
log that is the log file itself (tables merkle_nodes and merkle_checkpoints, which
refuse UPDATE and DELETE like the log). For the Kafka log it is a PostgreSQL
database, by default the outbox's (FLAGTRAIL_TREE_URL names another): a node is
read by (level, index) at random to prove, which a compacted topic cannot serve
without a full replay into memory, and the scale path already runs PostgreSQL.

The tree follows the log: after each append the relay adds the new records (their
subtrees and any due checkpoint in one transaction); at start it rebuilds the tile
in progress from the log, adds what the log has beyond it, and checks that the
tree still has the root of the latest signed checkpoint, so a log rewritten or cut
below a checkpoint stops the tree with an alarm instead of being hashed in.
Checkpoints (C2SP tlog-checkpoint, signed with the note key) are written every N
records or T seconds, and when idle: an idle checkpoint repeats the size with a
new time, a heartbeat proving that nothing was appended up to that time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError

from producers.errors import BackendUnavailable, ConfigError, EvidenceError
from producers.events import format_timestamp, utc_now
from producers.schema import TREE_LOCK
from relay.checkpoint_rows import append_only_triggers, key_columns, open_tables
from relay.logs.base import AuditLog, LogEntry
from relay.proofs.checkpoint import TIME_EXTENSION, Checkpoint, origin_for, parse_checkpoint
from relay.proofs.merkle import (
    CompactRange,
    consistency_proof,
    leaf_hash,
    node_hash,
    sha256,
    tree_hash,
)
from relay.proofs.note import (
    Signer,
    generate_signer_key,
    parse_signer_key,
    sign_note,
    split_note,
)
from relay.signing import write_key_pair

log = structlog.get_logger("flagtrail.tree")

STORED_LEVEL = 8  # subtrees of 256 leaves and up are stored; lower ones come from the log
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_SECONDS = 60.0

_metadata = MetaData()
nodes_table = Table(
    "merkle_nodes",
    _metadata,
    Column("chain_id", String(64), primary_key=True),
    Column("level", Integer, primary_key=True),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)
checkpoints_table = Table(
    "merkle_checkpoints",
    _metadata,
    *key_columns(),
    Column("note", Text, nullable=False),
)
_SQLITE_APPEND_ONLY = append_only_triggers(("merkle_nodes", "merkle_checkpoints"), "Merkle tree is")


def _without_fsync_per_commit(dbapi_conn: object, _record: object) -> None:
    """WAL commits without an fsync each (the WAL is synced at its checkpoints): every
    stored subtree can be hashed again from the log, and a checkpoint signed again,
    so a power cut that loses the last commits loses nothing; an fsync per relay batch
    would cost the relay several percent of its drain rate."""
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class TreeMismatch(EvidenceError):
    """The log no longer holds the records the stored tree was built from."""


def line_leaf(line: str) -> bytes:
    """A record's leaf hash: its export line's bytes, without the line end."""
    return leaf_hash(line.encode())


class TreeStore:
    """A chain's stored subtrees and checkpoints in an SQL database."""

    def __init__(self, engine: Engine, chain_id: str, *, read_only: bool = False) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.read_only = read_only
        if not read_only and engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _without_fsync_per_commit)
        self.exists = open_tables(
            engine,
            _metadata,
            read_only=read_only,
            what="Merkle tree store",
            lock_id=TREE_LOCK,
            triggers=_SQLITE_APPEND_ONLY,
        )

    def complete_size(self) -> int:
        """How many leaves the stored subtrees cover: whole tiles of 2**STORED_LEVEL."""
        if not self.exists:
            return 0
        query = select(func.max(nodes_table.c.idx)).where(
            and_(nodes_table.c.chain_id == self.chain_id, nodes_table.c.level == STORED_LEVEL)
        )
        with self.engine.connect() as conn:
            last = conn.execute(query).scalar()
        return 0 if last is None else (last + 1) << STORED_LEVEL

    def node(self, level: int, index: int) -> bytes:
        """A stored complete subtree's hash; KeyError if absent."""
        query = select(nodes_table.c.hash).where(
            and_(
                nodes_table.c.chain_id == self.chain_id,
                nodes_table.c.level == level,
                nodes_table.c.idx == index,
            )
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        if found is None:
            raise KeyError((level, index))
        return bytes(found)

    def commit(
        self, rows: Sequence[tuple[int, int, bytes]], checkpoint: tuple[int, str, bytes] | None
    ) -> None:
        """Store new subtrees and a checkpoint (size, signed_at, note) in one transaction."""
        if not rows and checkpoint is None:
            return
        try:
            with self.engine.begin() as conn:
                if rows:
                    conn.execute(
                        nodes_table.insert(),
                        [
                            {"chain_id": self.chain_id, "level": lv, "idx": ix, "hash": h}
                            for lv, ix, h in rows
                        ],
                    )
                if checkpoint is not None:
                    size, signed_at, note = checkpoint
                    conn.execute(
                        checkpoints_table.insert(),
                        {
                            "chain_id": self.chain_id,
                            "tree_size": size,
                            "signed_at": signed_at,
                            "note": note.decode(),
                        },
                    )
        except IntegrityError as exc:  # an old leader still finishing: read the tree again
            raise BackendUnavailable(
                f"another writer added to chain {self.chain_id}'s Merkle tree meanwhile"
            ) from exc

    def latest_checkpoint(self) -> bytes | None:
        """The newest signed checkpoint (largest tree, then latest time), as note bytes."""
        if not self.exists:
            return None
        query = (
            select(checkpoints_table.c.note)
            .where(checkpoints_table.c.chain_id == self.chain_id)
            .order_by(checkpoints_table.c.tree_size.desc(), checkpoints_table.c.signed_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            note = conn.execute(query).scalar()
        return None if note is None else note.encode()

    def close(self) -> None:
        self.engine.dispose()


def load_note_signer(path: Path) -> Signer:
    """The note key (``flagtrail keygen --type note``): one line PRIVATE+KEY+…."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"note key {path} does not exist: create one with `flagtrail keygen --type note`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read note key {path}: {exc}") from None
    return parse_signer_key(text)


@dataclass
class CheckpointPolicy:
    every_records: int = DEFAULT_CHECKPOINT_RECORDS
    every_seconds: float = DEFAULT_CHECKPOINT_SECONDS

    @classmethod
    def from_environment(cls) -> CheckpointPolicy:
        """FLAGTRAIL_CHECKPOINT_RECORDS and FLAGTRAIL_CHECKPOINT_SECONDS, else defaults."""
        records = os.environ.get("FLAGTRAIL_CHECKPOINT_RECORDS") or str(DEFAULT_CHECKPOINT_RECORDS)
        seconds = os.environ.get("FLAGTRAIL_CHECKPOINT_SECONDS") or str(DEFAULT_CHECKPOINT_SECONDS)
        try:
            policy = cls(int(records), float(seconds))
        except ValueError:
            policy = cls(0, 0)
        if policy.every_records < 1 or not policy.every_seconds > 0:
            raise ConfigError(
                "FLAGTRAIL_CHECKPOINT_RECORDS must be a whole number >= 1 and "
                f"FLAGTRAIL_CHECKPOINT_SECONDS a number > 0, not {records!r} and {seconds!r}"
            )
        return policy


def log_entries(audit_log: AuditLog, first: int, count: int) -> list[LogEntry]:
    """Up to ``count`` records from sequence ``first`` on, in order (fewer at the tail)."""
    start = audit_log.entry_at(first)
    if start is None:
        return []
    found: list[LogEntry] = []
    for entry in audit_log.read(start.timestamp_utc):
        if entry.sequence < first:
            continue
        if entry.sequence != first + len(found):
            raise TreeMismatch(f"the log has no record at sequence {first + len(found)}")
        found.append(entry)
        if len(found) == count:
            break
    return found


class TreeReader:
    """Every complete subtree of a chain's tree (relay.proofs.merkle.NodeReader): the
    stored ones from the store, the lower ones hashed from their tile's records."""

    def __init__(self, store: TreeStore, audit_log: AuditLog) -> None:
        self.store = store
        self.log = audit_log
        self._tiles: dict[int, list[bytes]] = {}

    def leaves(self, tile: int) -> list[bytes]:
        """The leaf hashes of a tile (2**STORED_LEVEL records; fewer at the log's tail)."""
        if tile not in self._tiles:
            if len(self._tiles) > 64:
                self._tiles.clear()
            width = 1 << STORED_LEVEL
            entries = log_entries(self.log, tile * width + 1, width)
            self._tiles[tile] = [line_leaf(e.line) for e in entries]
        return self._tiles[tile]

    def node(self, level: int, index: int) -> bytes:
        if level >= STORED_LEVEL:
            return self.store.node(level, index)
        first = index << level
        leaves = self.leaves(first >> STORED_LEVEL)
        offset = first & ((1 << STORED_LEVEL) - 1)
        layer = leaves[offset : offset + (1 << level)]
        if len(layer) != 1 << level:
            raise KeyError((level, index))
        while len(layer) > 1:
            layer = [node_hash(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
        return layer[0]


class TreeWriter:
    """Keeps a chain's tree level with its log and signs checkpoints (the relay's part)."""

    def __init__(
        self,
        store: TreeStore,
        signer: Signer | None,
        policy: CheckpointPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.signer = signer
        self.policy = policy or CheckpointPolicy()
        self.clock = clock
        self.origin = origin_for(signer.name, store.chain_id) if signer else None
        self.border = CompactRange()
        self.checkpointed_size = -1
        self.checkpointed_at = float("-inf")
        self.frozen: str | None = None  # why the tree no longer follows the log
        self.log: AuditLog | None = None  # the log it follows (set by catch_up)
        # called with each new signed checkpoint (the witnesses' hook)
        self.on_checkpoint: list[Callable[[bytes], None]] = []

    def catch_up(self, audit_log: AuditLog) -> int:
        """Load the stored tree, add what the log has beyond it (the tile in progress
        included), and check the result against the latest signed checkpoint.
        Returns how many records were hashed from the log."""
        self.frozen = None
        self.log = audit_log
        complete = self.store.complete_size()
        self.border = CompactRange.from_nodes(complete, self.store.node)
        added, batch = 0, []
        first = audit_log.entry_at(complete + 1) if complete < self._tail(audit_log) else None
        if first is not None:
            for entry in audit_log.read(first.timestamp_utc):
                if entry.sequence <= complete + added + len(batch):
                    continue
                batch.append(entry)
                if len(batch) >= 5000:
                    self._extend(batch, checkpoint=False)
                    added, batch = added + len(batch), []
            self._extend(batch, checkpoint=False)
            added += len(batch)
        self._check_signed(audit_log)
        return added

    @staticmethod
    def _tail(audit_log: AuditLog) -> int:
        tail = audit_log.tail()
        return tail.sequence if tail else 0

    def consistency_from(self, old_size: int) -> list[bytes]:
        """The proof that the current tree extends its first ``old_size`` leaves (what a
        witness asks for before it cosigns)."""
        if self.log is None:
            raise ConfigError("the tree has not read its log yet (catch_up)")
        return consistency_proof(TreeReader(self.store, self.log).node, old_size, self.border.size)

    def _check_signed(self, audit_log: AuditLog) -> None:
        """The latest signed checkpoint must still be a tree of the log's records."""
        note = self.store.latest_checkpoint()
        if note is None:
            return
        checkpoint = parse_checkpoint(split_note(note)[0])
        self.checkpointed_size = checkpoint.size
        problem = None
        if checkpoint.size > self.border.size:
            problem = (
                f"the log holds {self.border.size} records of chain {self.store.chain_id}, "
                f"fewer than the {checkpoint.size} its latest signed checkpoint holds: "
                "the log was cut"
            )
        else:
            try:
                root = tree_hash(TreeReader(self.store, audit_log).node, checkpoint.size)
            except KeyError:
                root = b""
            if root != checkpoint.root_hash:
                problem = (
                    f"the log's first {checkpoint.size} records of chain {self.store.chain_id} "
                    "are not those its latest signed checkpoint holds: the log was rewritten"
                )
        if problem:
            self.frozen = problem
            raise TreeMismatch(problem)

    def extend(self, entries: Sequence[LogEntry]) -> None:
        """Add records just appended to the log, in sequence order; sign if due."""
        self._extend(entries, checkpoint=True)

    def _extend(self, entries: Sequence[LogEntry], checkpoint: bool) -> None:
        if self.frozen:
            raise TreeMismatch(self.frozen)
        rows: list[tuple[int, int, bytes]] = []
        border = CompactRange(self.border.size, self.border.hashes)
        for entry in entries:
            if entry.sequence != border.size + 1:
                raise TreeMismatch(
                    f"record {entry.sequence} does not follow leaf {border.size} of chain "
                    f"{self.store.chain_id}'s Merkle tree"
                )
            rows.extend(border.append(sha256(b"\x00" + entry.line.encode()).digest(), STORED_LEVEL))
        signed = self._sign(border) if checkpoint and self._due(border.size, False) else None
        self.store.commit(rows, signed)
        self.border = border
        if signed is not None:
            self._signed(*signed)

    def _due(self, size: int, force: bool) -> bool:
        if self.signer is None or self.frozen:
            return False
        return (
            (force and size != self.checkpointed_size)
            or size - self.checkpointed_size >= self.policy.every_records
            or self.clock() - self.checkpointed_at >= self.policy.every_seconds
        )

    def maybe_checkpoint(self, force: bool = False) -> bytes | None:
        """Sign a checkpoint when N records or T seconds have passed since the last
        (an idle one is a heartbeat), or when ``force``d and the last does not cover
        the tree; returns the note if signed."""
        if not self._due(self.border.size, force):
            return None
        signed = self._sign(self.border)
        self.store.commit([], signed)
        self._signed(*signed)
        return signed[2]

    def _sign(self, border: CompactRange) -> tuple[int, str, bytes]:
        if self.signer is None or self.origin is None:
            raise ConfigError("no note key: checkpoints cannot be signed")
        signed_at = format_timestamp(utc_now())
        checkpoint = Checkpoint(
            self.origin, border.size, border.root(), (TIME_EXTENSION + signed_at,)
        )
        return border.size, signed_at, sign_note(checkpoint.text(), [self.signer])

    def _signed(self, size: int, signed_at: str, note: bytes) -> None:
        self.checkpointed_size, self.checkpointed_at = size, self.clock()
        log.info("tree.checkpoint", chain=self.store.chain_id, size=size, signed_at=signed_at)
        for listener in self.on_checkpoint:
            listener(note)


def rebuild_root(audit_log: AuditLog) -> tuple[int, bytes]:
    """The tree recomputed from the log alone: (size, root). A stored tree whose root
    at that size differs was built from other records."""
    border = CompactRange()
    for entry in audit_log.read():
        if entry.sequence != border.size + 1:
            raise TreeMismatch(f"the log skips from sequence {border.size} to {entry.sequence}")
        border.append(line_leaf(entry.line))
    return border.size, border.root()


def open_store(url: str, chain_id: str, *, read_only: bool = False) -> TreeStore:
    """The tree store at ``url`` (flagtrail.settings.tree_url); a reader changes nothing."""
    from flagtrail.settings import make_engine

    return TreeStore(make_engine(url, read_only=read_only), chain_id, read_only=read_only)


def open_writer(url: str, chain_id: str, note_key: Path, key_named: bool) -> TreeWriter:
    """The relay's tree writer. Without a note key (the default path absent) it keeps
    the tree but signs no checkpoint, and says so; a named key that is missing is a
    ConfigError."""
    signer = None
    if key_named or note_key.exists():
        signer = load_note_signer(note_key)
    else:
        log.warning(
            "tree.no_note_key",
            chain=chain_id,
            path=str(note_key),
            detail="no checkpoints are signed: create a key with `flagtrail keygen --type "
            "note` and point FLAGTRAIL_NOTE_KEY_PATH at it",
        )
    return TreeWriter(open_store(url, chain_id), signer, CheckpointPolicy.from_environment())


NOTE_PRIVATE_KEY_FILE = "note-private.key"
NOTE_PUBLIC_KEY_FILE = "note-public.vkey"


def generate_note_key(out_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write note-private.key (mode 0600) and note-public.vkey, in Go's note key text."""
    skey, vkey = generate_signer_key(name)
    return write_key_pair(
        out_dir / NOTE_PRIVATE_KEY_FILE,
        (skey + "\n").encode(),
        out_dir / NOTE_PUBLIC_KEY_FILE,
        (vkey + "\n").encode(),
        overwrite,
        "note key",
    )


def check_against_log(audit_log: AuditLog, store: TreeStore) -> str:
    """Rebuild the tree from the log and compare it with the stored subtrees and the
    latest checkpoint; a sentence saying what matched, or TreeMismatch."""
    size, root = rebuild_root(audit_log)
    reader = TreeReader(store, audit_log)
    complete = store.complete_size()
    if complete > size:
        raise TreeMismatch(f"the log holds {size} records, the stored tree {complete}")
    try:
        stored_root = tree_hash(reader.node, size)
    except KeyError:
        stored_root = b""
    if stored_root != root:
        raise TreeMismatch(
            f"the stored tree's root differs from the root of the log's {size} records: "
            "the log or the tree was rewritten"
        )
    note = store.latest_checkpoint()
    if note is None:
        return f"the stored tree matches the log's {size} records; no checkpoint yet"
    checkpoint = parse_checkpoint(split_note(note)[0])
    if checkpoint.size > size or checkpoint.root_hash != tree_hash(reader.node, checkpoint.size):
        raise TreeMismatch(
            f"the latest checkpoint (size {checkpoint.size}) does not match the log's tree"
        )
    return (
        f"the stored tree matches the log's {size} records, and so does the latest "
        f"checkpoint (size {checkpoint.size})"
    )
