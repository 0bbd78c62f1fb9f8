"""The provider's signing keys: discovery, a cached JWKS, one rate-limited refetch.

The keys come from the ``jwks_uri`` the provider's discovery document names
(``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must equal the
configured one exactly). They are cached for ``jwks_max_age_seconds``; a token
naming a ``kid`` the cache lacks (the provider rotated its keys) refetches the
set at once, but at most once per ``jwks_refetch_seconds``, so a stream of
tokens with made-up kids cannot turn flagtrail into a load generator against
the provider. Only RSA (2048 bits or more) and P-256 EC signing keys are kept;
a set larger than ``jwks_max_keys`` or a response over MAX_RESPONSE_BYTES is
refused. A ``kid`` is only ever a dictionary key here, never part of a path or URL.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWKError

from producers.errors import BackendUnavailable, ConfigError
from producers.oidc.settings import OidcSettings, check_url
from producers.oidc.strictjson import StrictJSONError, strict_loads

MAX_RESPONSE_BYTES = 512 * 1024
FETCH_TIMEOUT_SECONDS = 5.0
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256: the one algorithm this key may verify
    key: Any  # a cryptography public key


def fetch_json(url: str, what: str) -> Any:
    """GET a JSON document (bounded size and time); an outage is BackendUnavailable."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"cannot fetch the identity provider's {what} {url}: {exc}"
        ) from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise BackendUnavailable(f"the identity provider's {what} {url} is larger than 512 KiB")
    try:
        return strict_loads(body)
    except StrictJSONError as exc:
        raise BackendUnavailable(
            f"the identity provider's {what} {url} is not JSON: {exc}"
        ) from None


def parse_jwks(document: Any, settings: OidcSettings) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS, by kid; keys of other kinds are skipped."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise BackendUnavailable("the identity provider's JWKS has no 'keys' list")
    if len(keys) > settings.jwks_max_keys:
        raise BackendUnavailable(
            f"the identity provider's JWKS holds {len(keys)} keys, more than jwks_max_keys "
            f"({settings.jwks_max_keys})"
        )
    usable: dict[str, SigningKey] = {}
    for jwk in keys:
        key = _signing_key(jwk, settings)
        if key is not None and key.kid not in usable:  # a duplicated kid: the first one counts
            usable[key.kid] = key
    return usable


def _signing_key(jwk: Any, settings: OidcSettings) -> SigningKey | None:
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC"):
        return None  # encryption keys, symmetric ("oct") keys: never for signatures
    if "d" in jwk or "p" in jwk:
        return None  # a private key published by mistake is not a key we rely on
    try:
        parsed = PyJWK(jwk)
    except (PyJWKError, ValueError, TypeError, KeyError):
        return None
    algorithm = parsed.algorithm_name
    if algorithm not in settings.algorithms:
        return None
    if jwk["kty"] == "RSA" and parsed.key.key_size < MIN_RSA_BITS:
        return None
    return SigningKey(jwk["kid"], algorithm, parsed.key)


class KeyCache:
    """The provider's keys by kid, cached; thread-safe (one control plane, many threads)."""

    def __init__(
        self,
        settings: OidcSettings,
        fetch: Callable[[str, str], Any] = fetch_json,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._fetch = fetch
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._failure: str | None = None  # why the last attempt failed
        self.fetches = 0  # JWKS downloads so far (tests and metrics read it)

    def key(self, kid: str) -> SigningKey | None:
        """The key named ``kid``, refetching once (rate-limited) when it is unknown.

        Attempts are rate-limited too, failed ones included: while the provider is
        down, a flood of tokens costs one fetch per interval, not one each."""
        now = self._monotonic()
        fetched_at, tried_at = self._fetched_at, self._tried_at
        recently_tried = (
            tried_at is not None and now - tried_at < self.settings.jwks_refetch_seconds
        )
        if fetched_at is not None and now - fetched_at < self.settings.jwks_max_age_seconds:
            found = self._keys.get(kid)
            if found is not None or recently_tried:
                return found  # an unknown kid moments after a fetch stays unknown
        elif recently_tried and self._failure is not None:
            raise BackendUnavailable(self._failure)
        with self._lock:
            if self._tried_at != tried_at:  # another thread tried meanwhile
                if self._failure is not None:
                    raise BackendUnavailable(self._failure)
                return self._keys.get(kid)
            self._refresh()
            return self._keys.get(kid)

    def warm(self) -> None:
        """Fetch discovery and keys now (a control plane's start, a benchmark)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self._tried_at = self._monotonic()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = self._discover()
            keys = parse_jwks(self._fetch(self._jwks_uri, "JWKS"), self.settings)
        except BackendUnavailable as exc:
            # the old keys expire on schedule: a key the provider withdrew while it
            # is unreachable must not stay trusted for the length of the outage
            self._failure = str(exc)
            raise
        self._keys, self._failure = keys, None
        self._fetched_at = self._monotonic()
        self.fetches += 1

    def _discover(self) -> str:
        document = self._fetch(self.settings.discovery_url, "discovery document")
        if not isinstance(document, dict):
            raise BackendUnavailable("the identity provider's discovery document is not an object")
        if document.get("issuer") != self.settings.issuer:
            # Discovery §4.3: the issuer must be exactly the one configured (a trailing
            # slash is another issuer), else tokens from a look-alike would pass
            raise ConfigError(
                f"the provider at {self.settings.discovery_url} names issuer "
                f"{document.get('issuer')!r}, not the configured {self.settings.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise BackendUnavailable("the identity provider's discovery document has no jwks_uri")
        check_url(jwks_uri, "the provider's jwks_uri")
        return jwks_uri
