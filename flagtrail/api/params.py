"""Request parameters, read strictly: one value per name, known names only, bounded."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from urllib.parse import parse_qsl

from flagtrail.api.problems import Problem, bad_request
from producers.controls import parse_controls

DATE = re.compile(r"\d{4}-\d\d-\d\d")  # fromisoformat alone also takes 20260101, 2026-W01-1
MAX_BODY_BYTES = 8 * 1024
MAX_VALUE_CHARS = 200
LAST_DAY = date(9999, 12, 30)  # the window's end is exclusive: end + 1 day must exist


@dataclass(frozen=True)
class Window:
    start: date
    end: date
    controls: list[str] | None

    def as_meta(self) -> dict[str, object]:
        return {
            "window": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "controls": self.controls,
        }


def _shown(value: str) -> str:
    return repr(value[:40] + ("…" if len(value) > 40 else ""))


def single_values(pairs: Iterable[tuple[str, str]], allowed: set[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            hint = (
                ": send tokens in the Authorization header, never in a URL or body"
                if "token" in name.lower()
                else f"; known: {', '.join(sorted(allowed))}"
            )
            raise bad_request("unknown-parameter", f"unknown parameter {_shown(name)}{hint}")
        if name in values:
            raise bad_request("repeated-parameter", f"parameter {name!r} is given more than once")
        if len(value) > MAX_VALUE_CHARS:
            raise bad_request("parameter-too-long", f"parameter {name!r} is too long")
        values[name] = value
    return values


def form_pairs(body: bytes) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body (what curl --data-urlencode sends)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("malformed-body", "the form body is not UTF-8") from None
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=20)
    except ValueError as exc:
        raise bad_request("malformed-body", f"the form body cannot be read: {exc}") from None


def _day(values: dict[str, str], name: str) -> date:
    text = values.get(name)
    if text is None or text == "":
        raise bad_request("missing-parameter", f"{name} is required (YYYY-MM-DD)")
    if DATE.fullmatch(text) is None:
        raise bad_request("malformed-date", f"{name} {_shown(text)} is not a date like 2026-01-31")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise bad_request("malformed-date", f"{name} {text!r} is not a calendar date") from None
    if day > LAST_DAY:
        raise bad_request("malformed-date", f"{name} {text} is past the last day supported")
    return day


def window(values: dict[str, str], max_days: int, with_controls: bool = True) -> Window:
    start, end = _day(values, "start"), _day(values, "end")
    if start > end:
        raise bad_request("start-after-end", f"start {start} is after end {end}")
    days = (end - start).days + 1
    if days > max_days:
        raise bad_request(
            "window-too-long",
            f"the window is {days} days; this server allows at most {max_days}",
        )
    controls = None
    text = values.get("controls") if with_controls else None
    if text:
        try:
            controls = parse_controls(text)
        except ValueError as exc:
            raise bad_request("unknown-controls", f"controls: {exc}"[:300]) from None
    return Window(start, end, controls)


async def read_form(request: object) -> list[tuple[str, str]]:
    """The body of a POST, bounded; refused unless it is a form."""
    from starlette.requests import Request

    assert isinstance(request, Request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Problem(
            415,
            "unsupported-media-type",
            "send the form as application/x-www-form-urlencoded (curl --data-urlencode)",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, "body-too-large", f"the form is over {MAX_BODY_BYTES} bytes")
    return form_pairs(bytes(body))
