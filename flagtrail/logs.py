"""structlog set-up: JSON lines by default, readable key=value on a terminal.

Secrets are redacted by value, wherever they appear in a line: the password of any
URL (``postgresql+psycopg://user:***@host/db``), ``password=`` style parameters,
and the exact passwords of the configured outbox and log URLs, in every string of
every event (nested values and exception text included), in library log records
(stdlib ``logging``) and in the CLI's own error sentences.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

MASK = "***"
_SECRET_WORDS = ("token", "password", "passwd", "secret", "private_key")
# scheme://user:PASSWORD@host — the user part stops at the first ':' so a port
# (host:5432/db) is never mistaken for a password: it has no '@' after it.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s'\"]*:)[^\s@'\"]+@")
# password=... in query strings and libpq/librdkafka key=value strings
_PARAM_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|sasl\.password|secret|token)\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)",
    re.IGNORECASE,
)
# settings whose values are URLs that may carry a password
_URL_SETTINGS = ("FLAGTRAIL_OUTBOX_URL", "FLAGTRAIL_LOG_URL", "FLAGTRAIL_TEST_POSTGRES_URL")
_SECRET_SETTINGS = ("PGPASSWORD", "FLAGTRAIL_KAFKA_SASL_PASSWORD")
_MIN_KNOWN_SECRET = 4  # shorter values would mask ordinary words; URL patterns still apply

_NOISY_LIBRARIES = ("kafka",)

_known_secrets: set[str] = set()


def url_passwords(url: str) -> set[str]:
    """The password of a URL, raw and percent-decoded (drivers log the decoded one)."""
    found: set[str] = set()
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found |= {password, unquote(password)}
    for match in _PARAM_PASSWORD.finditer(url):
        found.add(unquote(match.group("value").strip("'\"")))
    return found


def remember_secrets(values: Iterable[str | None] = (), urls: Iterable[str | None] = ()) -> None:
    """Redact these exact values (and the passwords of these URLs) from now on."""
    for url in urls:
        if url:
            _known_secrets.update(url_passwords(url))
    _known_secrets.update(v for v in values if v)


def _settings_secrets() -> None:
    remember_secrets(
        values=(os.environ.get(name) for name in _SECRET_SETTINGS),
        urls=(os.environ.get(name) for name in _URL_SETTINGS),
    )


def redact_text(text: str) -> str:
    """``text`` with every password we can recognise or know of replaced by ***."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _PARAM_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if len(secret) >= _MIN_KNOWN_SECRET and secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """Redact every string inside ``value``; other objects are rendered as text first."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 32:  # a cycle or absurd nesting: give up on structure, keep it safe
        return redact_text(repr(value))
    if isinstance(value, dict):
        return {redact_value(k, depth + 1): redact_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    return redact_text(str(value))  # exceptions, URLs, paths, datetimes...


def redact_secrets(_: object, __: str, event: dict) -> dict:
    """structlog processor: never let a token, key or password reach the log."""
    for key in list(event):
        if any(word in str(key).lower() for word in _SECRET_WORDS):
            event[key] = "[redacted]"
        else:
            event[key] = redact_value(event[key])
    return event


def redact_rendered(_: object, __: str, line: Any) -> Any:
    """Last processor, after the renderer: a final pass over the line as written."""
    return redact_text(line) if isinstance(line, str) else line


class RedactingFilter(logging.Filter):
    """stdlib logging filter (libraries: SQLAlchemy, kafka-python): redact each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and record.exc_info[1] is not None:
            # plain Formatters print a cached exc_text as it is; structlog's formatter
            # renders exc_info again and redacts it in its own chain
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _library_logging(level: int, shared: list, renderer: Any) -> None:
    """Send library records through the same redaction and renderer, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
                redact_rendered,
            ],
        )
    )
    handler._flagtrail = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_flagtrail", False):
            root.removeHandler(old)
        elif not any(isinstance(f, RedactingFilter) for f in old.filters):
            old.addFilter(RedactingFilter())
    root.addHandler(handler)
    # libraries are chatty at info: their warnings, unless debugging
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING))
    # kafka-python logs every reconnect attempt; the relay reports an outage itself,
    # once per backoff, as `relay.waiting` with the cause
    for noisy in _NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL
        )


def configure(fmt: str = "auto", level: str = "info", urls: Iterable[str | None] = ()) -> None:
    """Set up logging; ``urls`` are URLs given on the command line (their passwords
    are redacted by value like those of the configured settings)."""
    _settings_secrets()
    remember_secrets(urls=urls)
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = (
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,  # exception text is redacted too
            redact_secrets,
            renderer,
            redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _library_logging(numeric, shared, renderer)
