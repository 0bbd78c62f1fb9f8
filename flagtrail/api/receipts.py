"""Every pull leaves an ``evidence_exported`` event in the chain it pulled from.

Receipts go through the outbox like any event (the relay chains them). Concurrent
pulls share one transaction (group commit): one fsync for all of them instead of
one each, so twenty clients do not queue behind each other's disk flushes. A pull
waits for its own receipt to commit before its stream completes.

A round is committed by a pull whose receipt is waiting and that finds no round
running (the leader), in its own thread; pulls arriving meanwhile queue theirs for the
next round, which one of them leads. No writer thread: a hand-off between threads is
what a small pull costs most in CPython, and no pull commits more than one round of
others' receipts while its own is in.

The workers of one server (`serve --workers N`) also take turns through a file lock
around their commits. Without it two workers' receipts met on SQLite's write lock,
whose busy wait sleeps in growing steps (1, 2, 5, 10 … 100 ms): a commit's p99 went
from 11 to 35 ms, its worst case to 107 ms. A file lock wakes the next worker as soon
as the commit is done, and its next round carries everything queued meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producers.errors import DuplicateEvent, InvalidChange
from producers.meta import record_export_receipt

if TYPE_CHECKING:
    from flagtrail.api.context import ApiContext
    from producers.outbox import Outbox

MAX_GROUP = 256
WAIT_S = 120
# how long a round waits for a lock another session holds on the outbox: SQLite's busy
# timeout (flagtrail.settings.make_engine); PostgreSQL would wait for as long as it is held
LOCK_WAIT_S = 60
_Item = tuple[str, str, dict[str, Any], "Future[str]"]


class ReceiptWriter:
    def __init__(self, outbox: Outbox, turns: Path | None = None) -> None:
        """``turns``: a lock file the writers of every worker share (None: one process)."""
        self.outbox = outbox
        self._turns_path = turns
        self._turns = None if turns is None else os.open(turns, os.O_RDWR | os.O_CREAT, 0o600)
        self._changed = threading.Condition()  # guards the two below; notified per round
        self._pending: list[_Item] = []
        self._leading = False  # a round is being committed

    def write(self, token: str, route: str, details: dict[str, Any]) -> str:
        """Chain a receipt; returns its event id once committed (raises if it could not be)."""
        done: Future[str] = Future()
        with self._changed:
            self._pending.append((token, route, details, done))
        while not done.done():
            with self._changed:
                while self._leading and not done.done():
                    if not self._changed.wait(WAIT_S) and self._withdraw(done):
                        # withdrawn: no later round may chain a receipt its pull was
                        # told had failed (the pull then chains itself as unfinished)
                        raise TimeoutError("the outbox did not commit the receipt in time")
                    # not withdrawn: it is in the round being committed, whose
                    # outcome is the truth; the outbox's own timeouts bound that round
                if done.done():
                    break
                self._leading = True
            self._round()
        return done.result()

    def _withdraw(self, done: Future[str]) -> bool:
        """Take a receipt out of the queue (the caller holds the lock); False if a round
        has already taken it."""
        for index, item in enumerate(self._pending):
            if item[3] is done:
                del self._pending[index]
                return True
        return False

    def _round(self) -> None:
        """Commit up to MAX_GROUP pending receipts, then wake every waiting pull."""
        with self._changed:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
        failure: BaseException = RuntimeError("the receipt's commit was interrupted")
        try:
            self._commit(group)
        except Exception as exc:
            # the outbox failed the whole round (locked, gone): retrying the receipts one
            # by one would wait out the same lock once per receipt
            failure = exc
        finally:
            for item in group:  # no pull may wait for a round that is over
                if not item[3].done():
                    item[3].set_exception(failure)
            with self._changed:
                self._leading = False
                self._changed.notify_all()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        if self._turns is None:
            yield
            return
        turns = self._current_turns()
        fcntl.flock(turns, fcntl.LOCK_EX)  # waits without holding the GIL
        try:
            yield
        finally:
            fcntl.flock(turns, fcntl.LOCK_UN)

    def _current_turns(self) -> int:
        """The turns file at its path, reopened if it was deleted or replaced there (a
        cleaner of temporary files; a worker restarted since then creates a new one):
        locking the old one, this worker would no longer take turns with that one. Only
        the leader of a round calls this. Turns are for speed (the outbox's own lock
        keeps commits apart): a file that cannot be reopened keeps the old one."""
        assert self._turns is not None and self._turns_path is not None
        try:
            held, there = os.fstat(self._turns), os.stat(self._turns_path)
            if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                return self._turns
        except OSError:
            pass
        try:
            fresh = os.open(self._turns_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return self._turns
        os.close(self._turns)
        self._turns = fresh
        return fresh

    def _commit(self, group: list[_Item]) -> None:
        written: list[tuple[str, Future[str]]] = []
        with self._turn(), self.outbox.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
            for token, route, details, done in group:
                try:
                    written.append(
                        (record_export_receipt(self.outbox, conn, token, route, details), done)
                    )
                except (InvalidChange, DuplicateEvent, TypeError, ValueError) as exc:
                    # this receipt's own fault, refused before its insert or by an
                    # insert that did nothing (ON CONFLICT): the transaction stays
                    # usable and the others commit. An error of the outbox fails them all.
                    done.set_exception(exc)
        for event_id, done in written:
            done.set_result(event_id)


def chain_receipt(ctx: ApiContext, token: str, route: str, details: dict[str, Any]) -> str:
    event_id = ctx.receipts.write(token, route, details)
    ctx.metrics.pulls.labels(route, details.get("outcome", "complete")).inc()
    return event_id
