"""A small real evidence package, made the way the test fixtures make one.

The fuzz targets mutate it (seed corpus) and check verify against it (a genuine
export beside a fuzzed manifest). It is rebuilt with the current code on every
run, so the seeds always match today's export and manifest format.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flagtrail import settings
from producers.identity import SAMPLE_DIRECTORY
from relay.signing import generate_keypair
from tests.conftest import SteppingClock
from tests.test_evidence import build_chain, export

RECORDS = 6


def make_package(folder: Path, records: int = RECORDS) -> Path:
    """Build a chain of ``records`` changes and export it; returns the folder holding
    the package (``*.jsonl``, ``.sig``, ``.manifest.json``, ``audit-public.pem``)."""
    if folder.exists():
        shutil.rmtree(folder)
    work = folder / "work"
    work.mkdir(parents=True)
    (work / "identities.toml").write_text(SAMPLE_DIRECTORY)
    keys = folder / "keys"
    generate_keypair(keys, "ec")  # P-256: fast to check many times a second
    clock = SteppingClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC), timedelta(minutes=7))
    cwd = Path.cwd()
    # the developer's settings (say a Kafka log from deploy/local/up) must not leak in
    saved = {k: os.environ.pop(k) for k in list(os.environ) if _setting(k)}
    os.chdir(work)  # the relay and the identity directory look in the current folder
    try:
        engine = settings.make_engine(f"sqlite:///{work / 'outbox.db'}")
        build_chain(engine, work, clock, records)
        engine.dispose()
        paths = export(work, keys)
    finally:
        os.chdir(cwd)
        os.environ.update(saved)
    package = folder / "package"
    shutil.copytree(paths.jsonl.parent, package)
    shutil.copy(keys / "audit-public.pem", folder / "trusted-public.pem")
    return package


def _setting(name: str) -> bool:
    return name == "AUDIT_SIGNING_KEY_PATH" or (
        name.startswith("FLAGTRAIL_") and not name.startswith(("FLAGTRAIL_TEST_", "FLAGTRAIL_FUZZ"))
    )
