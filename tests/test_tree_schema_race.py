"""Two relays starting at once on a fresh SQLite log (HA) both create the proof tables:
neither may fail with "table already exists" (CI caught a standby dying of it)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flagtrail.settings import make_engine
from relay.checkpoint_stamps import CheckpointStamps
from relay.tree import TreeStore
from relay.witness.cosignatures import CosignatureStore

STORES: list[Any] = [TreeStore, CosignatureStore, CheckpointStamps]


@pytest.mark.parametrize("store", STORES, ids=lambda s: s.__name__)
def test_concurrent_first_starts_all_open_the_store(store: Any, tmp_path: Path) -> None:
    for attempt in range(5):  # a race: several fresh files, several starters each
        url = f"sqlite:///{tmp_path / f'log-{attempt}.db'}"
        engines = [make_engine(url) for _ in range(6)]
        start = threading.Barrier(len(engines))
        errors: list[BaseException] = []

        def open_store(
            engine: Any, start: threading.Barrier = start, errors: list = errors
        ) -> None:
            start.wait()
            try:
                store(engine, "flag-audit")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for engine in engines:
            engine.dispose()
        assert not errors, errors[0]
