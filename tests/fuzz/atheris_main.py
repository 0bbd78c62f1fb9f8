"""One coverage-guided atheris (libFuzzer) process for one target.

    python -m tests.fuzz.atheris_main TARGET PACKAGE_DIR TRUSTED_KEY [libFuzzer flags] CORPUS...

Started by tests/fuzz/run.py, which reads libFuzzer's final statistics.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import atheris

# Instrument flagtrail's own modules (coverage feedback); the CLI imports most of
# these lazily, so import them here, inside the block.
with atheris.instrument_imports(include=["relay", "producers", "flagtrail"]):
    for module in (
        "flagtrail.cli",
        "producers.controls",
        "producers.events",
        "relay.canonical",
        "relay.export",
        "relay.signing",
        "relay.summary",
        "relay.verify",
    ):
        importlib.import_module(module)

from tests.fuzz import targets
from tests.fuzz.mutators import custom_mutator


def main() -> None:
    name, package, trusted_key = sys.argv[1:4]
    target = {**targets.TARGETS, **targets.SELF_TEST}[name]
    targets.use_package(Path(package), Path(trusted_key))

    # atheris.Mutate is bound to libFuzzer only once Fuzz() starts: look it up per call
    mutator = custom_mutator(name, lambda data, size: atheris.Mutate(data, size))
    atheris.Setup([sys.argv[0], *sys.argv[4:]], target, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
