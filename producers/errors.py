"""The one error tree: every error a user can cause is a FlagtrailError subclass.

Each class carries the exit code the ``flagtrail`` command returns for it and
whether a daemon should retry (an outage) or stop (a configuration error).
Driver errors (SQLAlchemy, sqlite3, Kafka) are translated into these at each
backend's edge, so callers never need to know which driver is underneath.

Exit codes (documented in the README):
    0  success
    1  evidence failed verification (tampered, truncated, bad or missing signature)
    2  usage or configuration error, unreadable input
    3  blocked by a SOC2 write-time control (policy)
    4  signed by a key that is not trusted (compare with the registered key)
    5  a backend (outbox database, log) is unavailable; retrying may help
    6  conflict: the change was already recorded (duplicate event_id)
    7  access denied: the evidence API refused the token (missing, unknown, expired,
       revoked, or without the scope)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_ERROR = 2
EXIT_BLOCKED = 3
EXIT_UNTRUSTED_KEY = 4
EXIT_UNAVAILABLE = 5
EXIT_CONFLICT = 6
EXIT_DENIED = 7


class FlagtrailError(Exception):
    """Base class: every flagtrail error carries one sentence meant for a person."""

    exit_code: int = EXIT_ERROR
    retriable: bool = False


class ConfigError(FlagtrailError):
    """A setting, file or key is missing or unreadable; the message says how to fix it."""


class InvalidChange(FlagtrailError, ValueError):
    """The change is malformed (HTTP 400): nothing was recorded."""

    status = 400


class DuplicateEvent(InvalidChange):
    """An event with this event_id is already in the outbox (HTTP 409)."""

    status = 409
    exit_code = EXIT_CONFLICT


class PolicyError(FlagtrailError):
    """The change is blocked by a SOC2 write-time control (HTTP 403).

    By the time this is raised, a durable ``rejected`` event for the attempt has
    been written: committed on its own connection, or, on SQLite while the
    caller's transaction holds the write lock, fsync'd to the rejection journal
    beside the database (producers/journal.py), which is folded into the outbox
    when that transaction ends or, after a crash, by the relay's next read.
    """

    status = 403
    exit_code = EXIT_BLOCKED

    def __init__(self, message: str, rule: str, control: str) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.control = control


class EvidenceError(FlagtrailError):
    """Evidence fails a check: a chain, a manifest or a signature does not hold."""

    exit_code = EXIT_TAMPERED


class UntrustedKey(EvidenceError):
    """Evidence is signed, but not by a key the verifier was told to trust."""

    exit_code = EXIT_UNTRUSTED_KEY


class BackendUnavailable(FlagtrailError):
    """The outbox database or the log cannot be reached now (an outage): retry later."""

    exit_code = EXIT_UNAVAILABLE
    retriable = True


class AccessDenied(FlagtrailError):
    """The evidence API refused the token (HTTP 401 or 403): retrying will not help,
    a valid token with the right scope will."""

    exit_code = EXIT_DENIED
