"""Strict JSON for token parts and provider documents: no duplicate member names.

RFC 7519 §4 lets a parser either refuse duplicate claim names or take the last;
two parsers taking different ones is how a token says one thing to one reader
and another to the next. Refusing is the only answer both sides agree on.
NaN and Infinity are refused too (they are not JSON).
"""

from __future__ import annotations

import json
from typing import Any

from relay.canonical import refuse_constant


class StrictJSONError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise StrictJSONError(f"member {name!r} appears twice")
        result[name] = value
    return result


def strict_loads(data: bytes | str) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=refuse_constant)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StrictJSONError(str(exc)) from None
