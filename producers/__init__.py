"""The producer library a flag control plane calls inside its own write transaction.

Names load lazily (PEP 562): tools that only need the error types or the event
model, such as ``flagtrail verify``, do not pay for importing SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ConfigError": "producers.errors",
    "FlagtrailError": "producers.errors",
    "InvalidChange": "producers.errors",
    "PolicyError": "producers.errors",
    "FlagChange": "producers.events",
    "FileIdentityDirectory": "producers.identity",
    "IdentityDirectory": "producers.identity",
    "DEFAULT_CHAIN": "producers.outbox",
    "Outbox": "producers.outbox",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'producers' has no attribute {name!r}")
