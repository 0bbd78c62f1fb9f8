"""Command groups that live in modules of their own.

Each module here has ``register(sub)``, which adds its sub-commands to the
``flagtrail`` parser (``sub`` is argparse's sub-parser action) and points each at
a ``func(args) -> int``. A command parses, calls the library, renders; the
error tree in producers/errors.py turns every user-caused failure into one
sentence and an exit code (flagtrail/cli.py). Add a module to MODULES to add
its commands; keep heavy imports inside the command functions. Argument types and
shared options (counts, ports, backends, trusted keys) come from flagtrail/options.py.
"""

from __future__ import annotations

import argparse
import importlib

MODULES: tuple[str, ...] = (
    "changes",
    "report",
    "identity",
    "retention",
    "checkpoint",
    "witness",
    "approval",
    "serve",
    "token",
    "pull",
    "sources",
)


def register_all(sub: argparse._SubParsersAction) -> None:
    for name in MODULES:
        importlib.import_module(f"flagtrail.commands.{name}").register(sub)
