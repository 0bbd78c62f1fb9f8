"""Verify one JWT from the OpenID Connect provider; any doubt refuses it.

Order of checks (each failure is a TokenRefused naming what failed):
  1. shape: at most MAX_TOKEN_BYTES, three base64url parts, a strict JSON header
     (no duplicate members) whose ``typ`` is an accepted token type (``at+jwt``,
     RFC 9068, unless the policy widens it), whose ``alg`` is one the policy allows (RS256/ES256
     only: ``none`` and HS* are refused before any key is looked at, which also
     closes "the RSA public key used as an HMAC secret") and whose ``kid`` is a
     short string;
  2. key: the provider's key with that kid (producers/oidc/jwks.py), which must be
     of the header's algorithm (an EC key never verifies an RS256 token);
  3. signature, by PyJWT's JWS verifier with exactly that one algorithm;
  4. claims, parsed strictly (a duplicated claim refuses the token): ``iss``
     exactly the configured issuer (a trailing slash is another issuer), ``aud``
     the configured audience or a list holding it, ``exp`` required, ``exp``,
     ``nbf`` and ``iat`` numbers checked against the clock with the leeway (and
     ``exp`` at most MAX_LIFETIME_SECONDS ahead), the
     subject claim a non-empty string, the groups claim a list of strings (a lone
     string is refused, not guessed at).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import InvalidTokenError

from producers.oidc.jwks import KeyCache
from producers.oidc.settings import OidcSettings
from producers.oidc.strictjson import StrictJSONError, strict_loads

MAX_TOKEN_BYTES = 16 * 1024
MAX_KID_CHARS = 256
MAX_SUBJECT_CHARS = 256
MAX_LIFETIME_SECONDS = 366 * 86400  # an expiry further ahead is not a session, it is a key


class TokenRefused(Exception):
    """The token proves nothing; ``reason`` is one short phrase for the 403 message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    groups: tuple[str, ...]
    issuer: str
    key_id: str
    algorithm: str
    claims: dict[str, Any]

    @property
    def token_id(self) -> str | None:
        jti = self.claims.get("jti")
        return jti if isinstance(jti, str) else None


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("it is not a JWT (bad base64url)") from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenVerifier:
    def __init__(
        self,
        settings: OidcSettings,
        keys: KeyCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys or KeyCache(settings)
        self.clock = clock
        self._jws = jwt.PyJWS()

    def verify(self, token: object) -> VerifiedToken:
        if not isinstance(token, str) or not token:
            raise TokenRefused("it is empty")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused(f"it is longer than {MAX_TOKEN_BYTES} bytes")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise TokenRefused("it is not a signed JWT (three non-empty parts)")
        header = self._header(parts[0])
        algorithm = header["alg"]
        kid = header["kid"]
        key = self.keys.key(kid)
        if key is None:
            raise TokenRefused(f"its key id {kid!r} is not among the provider's keys")
        if key.algorithm != algorithm:
            raise TokenRefused(f"key {kid!r} is a {key.algorithm} key, the token says {algorithm}")
        try:
            # PyJWT verifies the signature over the exact bytes, with this one algorithm
            payload = self._jws.decode_complete(token, key.key, algorithms=[algorithm])["payload"]
        except InvalidTokenError:
            raise TokenRefused("its signature does not verify") from None
        try:
            claims = strict_loads(payload)
        except StrictJSONError as exc:
            raise TokenRefused(f"its claims are not strict JSON ({exc})") from None
        if not isinstance(claims, dict):
            raise TokenRefused("its claims are not a JSON object")
        self._check_claims(claims)
        return VerifiedToken(
            subject=claims[self.settings.subject_claim],
            groups=self._groups(claims),
            issuer=claims["iss"],
            key_id=kid,
            algorithm=algorithm,
            claims=claims,
        )

    def _header(self, part: str) -> dict[str, Any]:
        try:
            header = strict_loads(_b64decode(part))
        except StrictJSONError as exc:
            raise TokenRefused(f"its header is not strict JSON ({exc})") from None
        if not isinstance(header, dict):
            raise TokenRefused("its header is not a JSON object")
        algorithm = header.get("alg")
        media_type = header.get("typ")
        if not isinstance(media_type, str) or (
            media_type.lower().removeprefix("application/") not in self.settings.token_types
        ):
            # RFC 9068 §4: an access token says so; an ID token (or any other JWT
            # the provider signs) with our audience is not an access token
            raise TokenRefused(
                f"its type (typ) {media_type!r} is not {' or '.join(self.settings.token_types)}"
            )
        if algorithm not in self.settings.algorithms:
            raise TokenRefused(
                f"its algorithm {algorithm!r} is not accepted "
                f"(only {', '.join(self.settings.algorithms)})"
            )
        if "crit" in header or "b64" in header:
            # RFC 7515 §4.1.11 extensions we do not understand; RFC 7797's unencoded
            # payload would make the signed bytes differ from the claims read
            raise TokenRefused("its header has critical extensions")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
            raise TokenRefused("its header has no usable key id (kid)")
        return header

    def _check_claims(self, claims: dict[str, Any]) -> None:
        settings = self.settings
        if claims.get("iss") != settings.issuer:
            raise TokenRefused(f"its issuer {claims.get('iss')!r} is not {settings.issuer!r}")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.audience not in audiences:
            raise TokenRefused(f"its audience {audience!r} does not include {settings.audience!r}")
        now = self.clock()
        leeway = settings.leeway_seconds
        expires = claims.get("exp")
        if not _number(expires):
            raise TokenRefused("it has no numeric expiry (exp)")
        if now > expires + leeway:
            raise TokenRefused("it has expired")
        if expires > now + MAX_LIFETIME_SECONDS:
            raise TokenRefused("its expiry is more than a year ahead")
        for name, what in (("nbf", "not valid yet (nbf)"), ("iat", "issued in the future (iat)")):
            moment = claims.get(name)
            if moment is None:
                continue
            if not _number(moment):
                raise TokenRefused(f"its {name} is not a number")
            if moment > now + leeway:
                raise TokenRefused(f"it is {what}")
        subject = claims.get(settings.subject_claim)
        if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_CHARS:
            raise TokenRefused(f"its subject claim {settings.subject_claim!r} is not a usable name")

    def _groups(self, claims: dict[str, Any]) -> tuple[str, ...]:
        name = self.settings.groups_claim
        groups = claims.get(name, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            # a lone string could be one group or a space-separated list: refuse, don't guess
            raise TokenRefused(f"its {name!r} claim is not a list of group names")
        return tuple(groups)
