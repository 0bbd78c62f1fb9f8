"""Errors a flag control plane sees from the producer library."""

from __future__ import annotations


class FlagtrailError(Exception):
    """Base class: every flagtrail error carries a message meant for a person."""


class ConfigError(FlagtrailError):
    """A setting, file or key is missing or unreadable; the message says how to fix it."""


class InvalidChange(FlagtrailError, ValueError):
    """The change is malformed (HTTP 400): nothing was recorded."""

    status = 400


class PolicyError(FlagtrailError):
    """The change is blocked by a SOC2 write-time control (HTTP 403).

    By the time this is raised, a durable ``rejected`` event for the attempt has
    been written (or, on SQLite while the caller's transaction holds the write
    lock, is written the moment that transaction ends).
    """

    status = 403

    def __init__(self, message: str, rule: str, control: str) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.control = control
