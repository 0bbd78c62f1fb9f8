"""Fetch a signed evidence package from a `flagtrail serve` API, trusting nothing it says.

The download goes to ``<archive>.partial`` and is checked byte for byte against the
length the server announced; the server's refusals (RFC 9457 problem bodies) become
one sentence and an exit code from producers/errors.py. Redirects are never followed
(a redirect could move the bearer token to another host or to plain http).
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from producers.errors import AccessDenied, BackendUnavailable, ConfigError, FlagtrailError

PACKAGE_PATH = "/v1/package"
# what the seed's script is given (AUDIT_API_URL ends in /v1/export): the API is above it
_ENDPOINTS = ("/v1/export", "/v1/package")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]|[\u202a-\u202e\u2066-\u2069]")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Download:
    path: Path
    size: int


def api_base(url: str) -> str:
    """The API's base URL from --api/AUDIT_API_URL; plain http only to this machine."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (reading it checks it: a port past 65535 raises)
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range
        raise ConfigError(f"--api: {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"--api: {url!r} is not an https:// URL of the evidence API")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ConfigError(
            f"--api: {url!r} is plain http; the token and the evidence would cross the network "
            "unencrypted: use https://"
        )
    path = parts.path.rstrip("/")
    for endpoint in _ENDPOINTS:
        path = path.removesuffix(endpoint)
    return f"{parts.scheme}://{parts.netloc}{path}"


def ssl_context(cacert: str | None) -> ssl.SSLContext:
    """The system's trust store, or the bundle named by --cacert, CURL_CA_BUNDLE or
    SSL_CERT_FILE (the variables the seed's curl and OpenSSL honour)."""
    bundle = cacert or os.environ.get("CURL_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    try:
        return ssl.create_default_context(cafile=bundle) if bundle else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the CA bundle {bundle}: {exc}") from None


def printable(text: str, limit: int = 300) -> str:
    """Server-supplied text made safe to print: no control or bidi characters, bounded."""
    return _UNPRINTABLE.sub("?", " ".join(text.split()))[:limit]


def _problem(body: bytes) -> str:
    """The sentence an RFC 9457 problem body (or a plain body) carries, made printable."""
    try:
        problem: Any = json.loads(body[:65536])
    except ValueError:
        return printable(body[:300].decode("utf-8", "replace"))
    if not isinstance(problem, dict):
        return ""
    parts = [problem.get("title"), problem.get("detail")]
    return printable(": ".join(str(p) for p in parts if isinstance(p, str) and p))


def refusal(status: int, body: bytes, headers: Any, url: str) -> FlagtrailError:
    """The error for a response that is not the package."""
    said = _problem(body)
    said = f" ({said})" if said else ""
    if status in (401, 403):
        what = "has no valid token" if status == 401 else "gave a token without the scope"
        return AccessDenied(
            f"the evidence API at {url} answered {status}: the request {what}{said}; "
            "create one with `flagtrail token create --scope export:read` and pass it in "
            "AUDIT_TOKEN"
        )
    if status == 429:
        wait = printable(str(headers.get("retry-after", "")), 20)
        after = f" after {wait} s" if wait else " later"
        return BackendUnavailable(
            f"the evidence API at {url} answered 429 (too many requests){said}; try again{after}"
        )
    if 300 <= status < 400:
        where = printable(str(headers.get("location", "")), 200)
        return ConfigError(
            f"the evidence API at {url} answered a redirect ({status}) to {where!r}; pull "
            "never follows one (it would carry the token): pass the final https URL with --api"
        )
    if status >= 500:
        return BackendUnavailable(f"the evidence API at {url} failed ({status}){said}; retry")
    return ConfigError(f"the evidence API at {url} refused the request ({status}){said}")


def fetch_package(
    api: str,
    token: str,
    start: date,
    end: date,
    partial: Path,
    *,
    cacert: str | None = None,
    max_bytes: int,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Download:
    """Stream ``/v1/package`` for the window into ``partial``; raise unless every byte came."""
    import httpx

    url = api_base(api) + PACKAGE_PATH
    if not (timeout > 0 and math.isfinite(timeout)):  # a socket refuses NaN and negatives
        raise ConfigError(f"--timeout {timeout}: give a number of seconds above 0")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/gzip"}
    params = {"start": start.isoformat(), "end": end.isoformat()}
    try:
        with (
            httpx.Client(
                verify=ssl_context(cacert),
                timeout=timeout,
                follow_redirects=False,
                trust_env=False,  # no .netrc credentials, no proxy we were not told of
            ) as client,
            client.stream("GET", url, params=params, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise refusal(response.status_code, response.read(), response.headers, url)
            return _save(response, partial, max_bytes, progress, url)
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
            raise ConfigError(
                f"the evidence API at {url} presented a certificate that is not trusted "
                f"({printable(str(exc), 160)}); pass its CA with --cacert or CURL_CA_BUNDLE"
            ) from None
        raise BackendUnavailable(
            f"cannot reach the evidence API at {url}: {printable(str(exc), 160)}"
        ) from None
    except httpx.TimeoutException:
        raise BackendUnavailable(
            f"the evidence API at {url} did not answer within {timeout:g} s"
        ) from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise BackendUnavailable(
            f"the download from {url} was cut short ({printable(str(exc), 160)}); "
            f"the incomplete file is {partial}; run the pull again"
        ) from None
    except httpx.HTTPError as exc:
        raise BackendUnavailable(
            f"the evidence API at {url} failed: {printable(str(exc), 160)}"
        ) from None


def _save(
    response: Any,
    partial: Path,
    max_bytes: int,
    progress: Callable[[int, int | None], None] | None,
    url: str,
) -> Download:
    announced = response.headers.get("content-length")
    total = int(announced) if announced and announced.isdigit() else None
    if total is not None and total > max_bytes:
        raise ConfigError(
            f"the package from {url} is {total:,} bytes, more than --max-bytes {max_bytes:,}"
        )
    partial.parent.mkdir(parents=True, exist_ok=True)
    # a new file, never through a link someone planted under the .partial name
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    size = 0
    with os.fdopen(fd, "wb") as out:
        for chunk in response.iter_raw(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise ConfigError(
                    f"the package from {url} grew past --max-bytes {max_bytes:,}; stopped "
                    f"(the incomplete file is {partial})"
                )
            out.write(chunk)
            if progress is not None:
                progress(size, total)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and size != total:
        raise BackendUnavailable(
            f"the download from {url} ended after {size:,} of {total:,} bytes; the incomplete "
            f"file is {partial}; run the pull again"
        )
    return Download(partial, size)
