"""The command's last line of defence: driver errors that still reach ``main()``.

Backends translate their driver errors at their own edge; whatever slips through
(SQLAlchemy, sqlite3, psycopg, Kafka, the operating system) becomes one
``FlagtrailError`` here: ``BackendUnavailable`` (exit 5) when retrying may help (a
refused connection, a locked database, a broker down), else ``ConfigError``
(exit 2). Driver modules are looked up in ``sys.modules`` rather than imported,
so `flagtrail verify` does not pay for SQLAlchemy or Kafka clients it never used.
"""

from __future__ import annotations

import errno
import sys

from producers.errors import BackendUnavailable, ConfigError, FlagtrailError

# words in a driver's message that mean "an outage, try again" rather than "fix it"
_OUTAGE_WORDS = (
    "connection refused",
    "could not connect",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "database is locked",
    "database table is locked",
    "no route to host",
    "temporarily unavailable",
    "too many connections",
    "all brokers down",
    "broker transport failure",
    "no brokers available",
)
# PostgreSQL SQLSTATE classes/codes that are outages: connection exceptions (08),
# operator intervention (57P01-03), too many connections, serialization and deadlock
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")
_OUTAGE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}


def first_line(text: str) -> str:
    """One sentence: drivers append hints and background links on later lines."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _module_error(module: str, name: str) -> type | tuple[()]:
    loaded = sys.modules.get(module)
    return getattr(loaded, name, ()) if loaded else ()


def _is_outage(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if sqlstate and str(sqlstate).startswith(_OUTAGE_SQLSTATES):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in _OUTAGE_ERRNOS:
        return True
    retriable = getattr(exc, "retriable", None)
    if retriable is True:  # kafka-python errors carry it as a class attribute
        return True
    if exc.args and callable(getattr(exc.args[0], "retriable", None)):  # confluent_kafka
        try:
            if exc.args[0].retriable():
                return True
        except Exception:
            pass
    message = str(exc).lower()
    return any(word in message for word in _OUTAGE_WORDS)


def _describe(exc: BaseException) -> tuple[str, BaseException]:
    """What failed, in words, and the driver's own error underneath any wrapper."""
    sqlalchemy_error = _module_error("sqlalchemy.exc", "SQLAlchemyError")
    if sqlalchemy_error and isinstance(exc, sqlalchemy_error):
        inner = getattr(exc, "orig", None) or exc
        return "the outbox database", inner
    for module, name in (("sqlite3", "Error"), ("psycopg", "Error")):
        error = _module_error(module, name)
        if error and isinstance(exc, error):
            return "the database", exc
    for module, name in (
        ("kafka.errors", "KafkaError"),
        ("confluent_kafka", "KafkaException"),
        ("relay.logs.base", "LogUnavailable"),
    ):
        error = _module_error(module, name)
        if error and isinstance(exc, error):
            return "the log", exc
    return "", exc


def translate(exc: BaseException) -> FlagtrailError | None:
    """A FlagtrailError for a driver or OS error, or None for a genuine bug."""
    if isinstance(exc, FlagtrailError):
        return exc
    what, inner = _describe(exc)
    if what:
        detail = first_line(str(inner)) or type(inner).__name__
        if _is_outage(exc) or _is_outage(inner):
            return BackendUnavailable(f"{what} is unavailable: {detail} (retrying may help)")
        return ConfigError(f"cannot use {what}: {detail}")
    if isinstance(exc, OSError):
        reason = exc.strerror or first_line(str(exc)) or type(exc).__name__
        error = BackendUnavailable if _is_outage(exc) else ConfigError
        return error(f"cannot use {exc.filename}: {reason}" if exc.filename else reason)
    return None
