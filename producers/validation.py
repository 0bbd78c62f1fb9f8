"""Write-time validation: refuse (400) whatever cannot be chained safely.

A value that reaches the outbox is hashed, relayed, exported and re-read by
every verifier; one that some reader cannot decode, or decodes differently,
would block or falsify the evidence for good (a poison pill). So the producer
refuses, in bounded time and with one sentence, anything that is not plain,
exactly representable JSON within the configured limits.

Integers: the canonical encoder (``json``) writes Python ints exactly, but not
every reader reads them back exactly: JavaScript and jq read JSON numbers as
IEEE doubles, and orjson (used for speed on the relay's and readers' paths)
turns integers beyond 64 bits into floats. A value beyond ±(2**53 - 1) could
then be hashed as one number and chained or shown as another, so it is refused;
a control plane that needs such numbers sends them as strings. No integer is
ever converted to a float here.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from producers.errors import InvalidChange

SAFE_INTEGER = 2**53 - 1
# categories refused in identifiers: controls, format chars (bidi overrides,
# zero-width), surrogates, line and paragraph separators
_BAD_IDENTIFIER_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_TEXT_CONTROLS_ALLOWED = frozenset("\t\n\r")


@dataclass(frozen=True)
class Limits:
    """Configurable bounds (the policy file's ``[limits]`` table)."""

    max_depth: int = 32
    max_state_bytes: int = 64 * 1024  # before / after, each, as canonical JSON
    max_reason_bytes: int = 4 * 1024  # UTF-8
    max_identifier_chars: int = 256

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_state_bytes", "max_reason_bytes", "max_identifier_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1")


DEFAULT_LIMITS = Limits()


def _utf8(value: str) -> bytes | None:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def check_identifier(
    name: str, value: object, limits: Limits = DEFAULT_LIMITS, *, required: bool = False
) -> None:
    """A name the chain and its readers key on: a short string of printable characters."""
    if not isinstance(value, str):
        raise InvalidChange(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > limits.max_identifier_chars:  # before any scan: bounded time
        raise InvalidChange(
            f"{name} is longer than {limits.max_identifier_chars} characters ({len(value)})"
        )
    if required and not value.strip():
        raise InvalidChange(f"{name} is required and must be a non-empty string")
    if value.isascii() and value.isprintable():  # the common case, at C speed
        return
    if _utf8(value) is None:
        raise InvalidChange(f"{name} is not valid Unicode (it holds a lone surrogate)")
    for char in value:
        if unicodedata.category(char) in _BAD_IDENTIFIER_CATEGORIES:
            raise InvalidChange(
                f"{name} contains the control or invisible character U+{ord(char):04X}"
            )


def check_text(name: str, value: object, max_bytes: int) -> None:
    """Free text (a reason): valid Unicode, bounded, no terminal control sequences."""
    if not isinstance(value, str):
        raise InvalidChange(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > max_bytes:  # every character is at least one byte: cheap early refusal
        raise InvalidChange(f"{name} is longer than {max_bytes} bytes")
    if value.isascii() and value.isprintable():
        return
    encoded = _utf8(value)
    if encoded is None:
        raise InvalidChange(f"{name} is not valid Unicode (it holds a lone surrogate)")
    if len(encoded) > max_bytes:
        raise InvalidChange(f"{name} is longer than {max_bytes} bytes ({len(encoded)} as UTF-8)")
    for char in value:
        if unicodedata.category(char) == "Cc" and char not in _TEXT_CONTROLS_ALLOWED:
            raise InvalidChange(f"{name} contains the control character U+{ord(char):04X}")


def _path_text(path: tuple | None) -> str:
    parts: list[str] = []
    while path is not None:
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return "".join(reversed(parts))


def check_json_value(name: str, value: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """Plain JSON data within the limits, checked without recursion in bounded time.

    The walk keeps a lower bound of the canonical encoding's size and stops as
    soon as it passes the limit, so a huge, deeply shared or cyclic value costs
    at most about ``max_state_bytes`` steps; only a value that passed is encoded.
    """
    budget = limits.max_state_bytes
    size = 0
    # (value, depth, path); path is a linked (parent, step) pair built only for messages
    stack: list[tuple[Any, int, tuple | None]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        if item is None or item is True or item is False:
            size += 4
        elif isinstance(item, str):
            size += len(item) + 2
            if size > budget:
                break
            if not item.isascii() and _utf8(item) is None:
                where = name + _path_text(path)
                raise InvalidChange(f"{where} is not valid Unicode (it holds a lone surrogate)")
        elif isinstance(item, int):
            if not -SAFE_INTEGER <= item <= SAFE_INTEGER:
                where = name + _path_text(path)
                raise InvalidChange(
                    f"{where} is an integer outside ±(2^53-1), which many verifiers "
                    "cannot read exactly; send it as a string"
                )
            size += 1
        elif isinstance(item, float):
            if not math.isfinite(item):
                where = name + _path_text(path)
                raise InvalidChange(f"{where} is {item!r}, which JSON cannot carry")
            size += 3
        elif isinstance(item, dict | list):
            if depth >= limits.max_depth:
                raise InvalidChange(f"{name} is nested deeper than {limits.max_depth} levels")
            size += 1 + max(1, len(item))  # brackets and commas
            if size > budget:
                break
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        where = name + _path_text(path)
                        raise InvalidChange(
                            f"{where} has a key that is not a string ({type(key).__name__} "
                            f"{key!r:.40})"
                        )
                    size += 1  # the colon; the key itself is counted as a string
                    stack.append((child, depth + 1, (path, key)))
                    stack.append((key, depth + 1, (path, key)))
            else:
                stack.extend((child, depth + 1, (path, i)) for i, child in enumerate(item))
        else:
            where = name + _path_text(path)
            raise InvalidChange(
                f"{where} is a {type(item).__name__}, which is not JSON data (use objects, "
                "lists, strings, numbers, booleans or null)"
            )
        if size > budget:
            break
    if size <= budget:
        from producers.events import canonical_json

        size = len(canonical_json(value))
    if size > budget:
        raise InvalidChange(f"{name} is larger than {budget} bytes as canonical JSON")
