"""Chains stay apart, readers never write, databases are private, driver errors are
translated at each backend's edge (issue 7, sections 8, 12, 13 and 14)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from flagtrail import settings
from producers import Outbox
from producers.errors import BackendUnavailable, ConfigError
from relay.canonical import GENESIS, seal
from relay.lease import lease_for
from relay.logs import open_log
from relay.logs.base import LogEntry, LogUnavailable
from relay.logs.sqlite import SQLiteAuditLog
from relay.outbox import open_outbox_source
from relay.outbox.base import OutboxPosition
from tests.conftest import run_cli
from tests.contracts import chain_of, good_change

BAD_CHAIN_IDS = ["../x", "A", "a" * 65, "a\0b", "chaîne", "-a", "a/b", ".x", "a b"]


def chain_entries(chain_id: str, count: int, day: int = 1) -> list[LogEntry]:
    """Entries whose records name their chain, as the relay writes them."""
    entries, prev = [], GENESIS
    for i in range(1, count + 1):
        ts = f"2026-01-{day:02d}T10:00:{i:02d}.000000Z"
        record = {"chain_id": chain_id, "sequence": i, "timestamp_utc": ts, "action": "update"}
        digest, line = seal(record, prev)
        entries.append(LogEntry(i, ts, digest, line, OutboxPosition(0, i)))
        prev = digest
    return entries


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 8. chain ids are validated before they reach a path, a topic or a lock ---------------
@pytest.mark.parametrize("chain_id", BAD_CHAIN_IDS)
def test_bad_chain_ids_are_refused_everywhere(workdir: Path, chain_id: str) -> None:
    with pytest.raises(ConfigError, match="chain id"):
        settings.chain_id(chain_id)
    with pytest.raises(ConfigError, match="chain id"):
        open_log(f"sqlite:///{workdir / 'log.db'}", chain_id)
    with pytest.raises(ConfigError, match="chain id"):
        open_log("kafka://127.0.0.1:1/t", chain_id)
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    with pytest.raises(ConfigError, match="chain id"):
        open_outbox_source(engine, chain_id)
    with pytest.raises(ConfigError, match="chain id"):
        lease_for(engine, chain_id)
    assert not (workdir.parent / "x").exists()
    assert sorted(p.name for p in workdir.iterdir()) == ["identities.toml", "outbox.db"]


def test_chain_id_setting_comes_from_the_environment_and_is_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings.chain_id() == "flag-audit"
    monkeypatch.setenv("FLAGTRAIL_CHAIN", "payments.eu-1")
    assert settings.chain_id() == "payments.eu-1"
    assert settings.chain_id("a" * 64) == "a" * 64
    monkeypatch.setenv("FLAGTRAIL_CHAIN", "../../etc/passwd")
    with pytest.raises(ConfigError):
        settings.chain_id()


def test_bad_chain_id_on_the_command_line_is_one_sentence(workdir: Path) -> None:
    result = run_cli("relay", "--once", "--chain", "../evil", cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "chain id '../evil' is not valid" in result.stderr
    assert "Traceback" not in result.stderr


# -- 8. several chains in one SQLite log file -------------------------------------------
def test_several_chains_share_one_sqlite_log(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'log.db'}"
    a, b = open_log(url, "chain-a"), open_log(url, "chain-b")
    a_entries, b_entries = chain_entries("chain-a", 5), chain_entries("chain-b", 3, day=2)
    a.append(a_entries[:2], after_sequence=0)
    b.append(b_entries, after_sequence=0)  # its own sequence 1, in the same file
    a.append(a_entries[2:], after_sequence=2)
    assert list(a.read()) == a_entries and list(b.read()) == b_entries
    assert a.tail() == a_entries[-1] and b.tail() == b_entries[-1]
    assert a.entry_at(4) == a_entries[3] and b.entry_at(4) is None
    assert list(b.read("2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z")) == []
    c = open_log(url, "chain-c")
    assert c.tail() is None and list(c.read()) == []
    reader = open_log(url, "chain-b", read_only=True)
    assert list(reader.read()) == b_entries


def test_a_record_of_another_chain_is_refused(workdir: Path) -> None:
    audit_log = open_log(f"sqlite:///{workdir / 'log.db'}", "chain-a")
    with pytest.raises(ConfigError, match="another chain"):
        audit_log.append(chain_entries("chain-b", 1), after_sequence=0)
    assert audit_log.tail() is None


def _legacy_log(path: Path, entries: list[LogEntry]) -> None:
    """A log file as written before chain ids were stored."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE audit_log (sequence INTEGER PRIMARY KEY, timestamp_utc TEXT NOT NULL,
            hash TEXT NOT NULL, outbox_tx INTEGER, outbox_id INTEGER, line TEXT NOT NULL);
        CREATE INDEX ix_audit_log_time ON audit_log (timestamp_utc);
        CREATE TRIGGER audit_log_refuses_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: UPDATE refused'); END;
        CREATE TRIGGER audit_log_refuses_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'flagtrail audit log is append-only: DELETE refused'); END;
        """
    )
    db.executemany(
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
        [(e.sequence, e.timestamp_utc, e.record_hash, 0, e.position.id, e.line) for e in entries],
    )
    db.commit()
    db.close()


def test_a_single_chain_file_is_read_as_is_and_migrated_by_a_writer(workdir: Path) -> None:
    path = workdir / "log.db"
    entries = chain_entries("legacy", 4)
    _legacy_log(path, entries)
    before = digest(path)
    reader = open_log(f"sqlite:///{path}", "legacy", read_only=True)
    assert list(reader.read()) == entries and reader.entry_at(2) == entries[1]
    assert open_log(f"sqlite:///{path}", "other", read_only=True).tail() is None
    reader.close()
    assert digest(path) == before  # the reader changed nothing
    writer = open_log(f"sqlite:///{path}", "legacy")
    assert writer.tail() == entries[-1]
    writer.append(chain_of(5)[4:], after_sequence=4)  # records without chain_id: this chain
    assert [e.sequence for e in writer.read()] == [1, 2, 3, 4, 5]
    db = sqlite3.connect(path)
    assert db.execute("SELECT DISTINCT chain_id FROM audit_log").fetchall() == [("legacy",)]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_log")


# -- 12. readers never write ------------------------------------------------------------
def test_a_missing_log_is_a_clear_error_and_never_created(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"log sqlite:///lgo\.db does not exist"):
        open_log("sqlite:///lgo.db", read_only=True)
    assert not (workdir / "lgo.db").exists()


def test_a_read_only_log_refuses_appends_and_keeps_the_file(workdir: Path) -> None:
    path = workdir / "log.db"
    writer = open_log(f"sqlite:///{path}")
    writer.append(chain_of(3), after_sequence=0)
    writer.close()
    before = digest(path)
    reader = open_log(f"sqlite:///{path}", read_only=True)
    with pytest.raises(ConfigError, match="read-only"):
        reader.append(chain_of(4)[3:], after_sequence=3)
    assert len(list(reader.read())) == 3
    reader.close()
    assert digest(path) == before


def test_a_file_that_is_not_a_log_is_refused_by_a_reader(workdir: Path) -> None:
    sqlite3.connect(workdir / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ConfigError, match="holds no flagtrail audit log"):
        open_log(f"sqlite:///{workdir / 'other.db'}", read_only=True)
    (workdir / "text.db").write_text("not a database at all, but long enough" * 50)
    with pytest.raises(ConfigError, match="cannot be used"):
        open_log(f"sqlite:///{workdir / 'text.db'}", read_only=True).tail()


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--start", "2026-01-01", "--end", "2026-01-31"],
        ["gap", "scan", "--start", "2026-01-01", "--end", "2026-01-31"],
        ["drift"],
    ],
)
def test_readers_on_a_mistyped_log_fail_and_create_nothing(
    workdir: Path, rsa_keys: Path, command: list[str]
) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    env = {"AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem")}
    result = run_cli(*command, "--log-url", "sqlite:///lgo.db", cwd=workdir, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "log sqlite:///lgo.db does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_outbox_readers_never_create_a_database(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        settings.make_engine("sqlite:///outbx.db", read_only=True)
    assert not (workdir / "outbx.db").exists()
    sqlite3.connect(workdir / "empty.db").close()
    engine = settings.make_engine(f"sqlite:///{workdir / 'empty.db'}", read_only=True)
    with pytest.raises(ConfigError, match="holds no flagtrail outbox"):
        open_outbox_source(engine, "flag-audit", read_only=True)
    assert sqlite3.connect(workdir / "empty.db").execute(
        "SELECT count(*) FROM sqlite_master"
    ).fetchone() == (0,)


def test_a_read_only_outbox_reads_and_changes_nothing(workdir: Path) -> None:
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    with engine.begin() as conn:
        outbox.record(conn, good_change())
    engine.dispose()
    before = digest(workdir / "outbox.db")
    reader = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}", read_only=True)
    source = open_outbox_source(reader, "flag-audit", read_only=True)
    (row,) = source.fetch_pending(None, 10)
    assert source.backlog().pending == 1
    with pytest.raises(ConfigError, match="readonly"):
        source.mark_through(row.position, 1)
    source.close()
    assert digest(workdir / "outbox.db") == before


# -- 8. a row is marked relayed only in its own chain -------------------------------------
def test_marking_never_touches_another_chains_rows(workdir: Path) -> None:
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    mine = Outbox(engine, str(workdir / "identities.toml"), chain_id="mine")
    theirs = Outbox(engine, str(workdir / "identities.toml"), chain_id="theirs")
    for n in range(3):
        with engine.begin() as conn:
            theirs.record(conn, good_change(n))
            mine.record(conn, good_change(n))
    source = open_outbox_source(engine, "mine")
    rows = source.fetch_pending(None, 10)
    assert source.mark_through(OutboxPosition(0, 10**9), 1) == 3  # far past every row
    assert rows and source.backlog().pending == 0
    assert open_outbox_source(engine, "theirs").backlog().pending == 3


# -- 14. databases are created without world access ------------------------------------
def test_new_log_outbox_and_lease_files_are_private(workdir: Path) -> None:
    old = os.umask(0o022)
    try:
        audit_log = open_log(f"sqlite:///{workdir / 'log.db'}")
        audit_log.append(chain_of(2), after_sequence=0)
        engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
        outbox = Outbox(engine, str(workdir / "identities.toml"))
        with engine.begin() as conn:
            outbox.record(conn, good_change())
        lease = lease_for(engine, "flag-audit")
        assert lease.try_acquire()
        names = ["log.db", "log.db-wal", "log.db-shm", "outbox.db", "outbox.db-wal"]
        names += ["outbox.db-shm", "outbox.db.flag-audit.relay.lock"]
        for name in names:
            mode = stat.S_IMODE((workdir / name).stat().st_mode)
            assert mode == 0o600, f"{name} is {oct(mode)}"
        lease.release()
    finally:
        os.umask(old)


# -- 13. driver errors become one sentence, retriable or not, at the edge ----------------
def test_a_locked_log_is_retriable_and_a_corrupt_one_is_not(workdir: Path) -> None:
    path = workdir / "log.db"
    open_log(f"sqlite:///{path}").close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    audit_log = SQLiteAuditLog(str(path), "flag-audit", busy_timeout_s=0.1)
    with pytest.raises(LogUnavailable) as raised:
        audit_log.append(chain_of(1), after_sequence=0)
    assert raised.value.retriable and isinstance(raised.value, BackendUnavailable)
    assert "locked" in str(raised.value)
    holder.execute("ROLLBACK")
    audit_log.append(chain_of(1), after_sequence=0)  # the outage passed
    (workdir / "bad.db").write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError) as bad:
        open_log(f"sqlite:///{workdir / 'bad.db'}")
    assert not bad.value.retriable


def test_a_locked_outbox_is_retriable(workdir: Path) -> None:
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    outbox = Outbox(engine, str(workdir / "identities.toml"))
    with engine.begin() as conn:
        outbox.record(conn, good_change())
    impatient = create_engine(f"sqlite:///{workdir / 'outbox.db'}", connect_args={"timeout": 0.1})
    source = open_outbox_source(impatient, "flag-audit")
    (row,) = source.fetch_pending(None, 10)
    holder = sqlite3.connect(workdir / "outbox.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(BackendUnavailable, match="locked") as raised:
        source.mark_through(row.position, 1)
    assert raised.value.retriable
    holder.execute("ROLLBACK")
    assert source.mark_through(row.position, 1) == 1


def test_a_missing_outbox_table_is_a_configuration_error(workdir: Path) -> None:
    engine = settings.make_engine(f"sqlite:///{workdir / 'outbox.db'}")
    source = open_outbox_source(engine, "flag-audit")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE flagtrail_outbox")
    with pytest.raises(ConfigError, match="no such table") as raised:
        source.fetch_pending(None, 10)
    assert not raised.value.retriable
    assert json.dumps(str(raised.value))  # one printable sentence


def test_a_folder_or_an_unreadable_file_is_not_an_outage(workdir: Path) -> None:
    (workdir / "dir.db").mkdir()
    for read_only in (False, True):
        with pytest.raises(ConfigError) as raised:
            open_log(f"sqlite:///{workdir / 'dir.db'}", read_only=read_only)
        assert not raised.value.retriable
    engine = settings.make_engine(f"sqlite:///{workdir / 'dir.db'}")
    with pytest.raises(ConfigError, match="unable to open"):
        open_outbox_source(engine, "flag-audit")
