"""The producer library a flag control plane calls inside its own write transaction."""

from producers.errors import ConfigError, FlagtrailError, InvalidChange, PolicyError
from producers.events import FlagChange
from producers.identity import FileIdentityDirectory, IdentityDirectory
from producers.outbox import DEFAULT_CHAIN, Outbox

__all__ = [
    "DEFAULT_CHAIN",
    "ConfigError",
    "FileIdentityDirectory",
    "FlagChange",
    "FlagtrailError",
    "IdentityDirectory",
    "InvalidChange",
    "Outbox",
    "PolicyError",
]
