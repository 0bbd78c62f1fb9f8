"""The witness's durable memory: for each log origin, the last checkpoint it cosigned.

SQLite in WAL mode with synchronous=FULL, so a commit is on disk (fsync'd) before the
witness answers; each add-checkpoint reads and replaces its origin's row inside one
BEGIN IMMEDIATE transaction (compare-and-swap under SQLite's write lock), so two
requests can never both pass the check against the same old size and roll the
witness back (the race C2SP tlog-witness describes). Refused requests are kept too:
a log-signed checkpoint that does not extend what was cosigned is evidence of a
rewritten log.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from producers.errors import BackendUnavailable

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS witness_logs (
        origin TEXT PRIMARY KEY,
        tree_size INTEGER NOT NULL,
        root_hash BLOB NOT NULL,
        checkpoint BLOB NOT NULL,
        cosigned_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS witness_refusals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        origin TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        request BLOB NOT NULL)""",
)


@dataclass(frozen=True)
class Cosigned:
    size: int
    root_hash: bytes


class Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def latest(self, origin: str) -> Cosigned | None:
        row = self._conn.execute(
            "SELECT tree_size, root_hash FROM witness_logs WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else Cosigned(int(row[0]), bytes(row[1]))

    def replace(self, origin: str, size: int, root_hash: bytes, checkpoint: bytes) -> None:
        self._conn.execute(
            "INSERT INTO witness_logs (origin, tree_size, root_hash, checkpoint, cosigned_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
            "tree_size = excluded.tree_size, root_hash = excluded.root_hash, "
            "checkpoint = excluded.checkpoint, cosigned_at = excluded.cosigned_at",
            (origin, size, root_hash, checkpoint, int(time.time())),
        )


class WitnessState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one connection, one transaction at a time
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are the explicit BEGIN IMMEDIATE below
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailable(f"the witness state {path} cannot be opened: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One compare-and-swap: commits when the block ends, rolls back if it raises."""
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")  # also excludes another process on the same file
            try:
                yield Transaction(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def latest(self, origin: str) -> Cosigned | None:
        with self.transaction() as tx:
            return tx.latest(origin)

    def note_refusal(
        self, origin: str, status: int, reason: str, request: bytes, checkpoint_text: bytes
    ) -> None:
        """Keep the request, once per checkpoint and status: anyone can replay a public
        checkpoint with a garbage proof, and each copy would be another row of noise."""
        # the note text follows the request's first blank line and ends at the next
        marker = b"\n\n" + checkpoint_text + b"\n"
        with self.transaction() as tx:
            seen = tx._conn.execute(
                "SELECT 1 FROM witness_refusals WHERE origin = ? AND status = ? "
                "AND instr(request, ?) > 0 LIMIT 1",
                (origin, status, marker),
            ).fetchone()
            if seen is not None:
                return
            tx._conn.execute(
                "INSERT INTO witness_refusals (origin, received_at, status, reason, request) "
                "VALUES (?, ?, ?, ?, ?)",
                (origin, int(time.time()), status, reason, request),
            )

    def refusals(self, origin: str) -> list[tuple[int, str]]:
        with self.transaction() as tx:
            rows = tx._conn.execute(
                "SELECT status, reason FROM witness_refusals WHERE origin = ? ORDER BY id",
                (origin,),
            ).fetchall()
        return [(int(s), str(r)) for s, r in rows]

    def close(self) -> None:
        self._conn.close()
