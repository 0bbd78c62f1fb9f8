"""The policy's ``[oidc]`` table: which OpenID Connect provider proves identities.

    [oidc]
    issuer = "https://login.example.com"    # exactly as the provider's discovery names it
    audience = "flagtrail"                  # the tokens' aud must include it
    subject_claim = "sub"                   # the claim stored as the identity
    groups_claim = "groups"                 # a JSON list of group names
    approval_claim = "authorization_details"  # RFC 9396 list; see producers/oidc/approval.py
    leeway_seconds = 30                     # clock skew allowed on exp / nbf / iat
    require_tokens = true                   # false: a change without tokens falls back
                                            # to the identity directory (migration)
    algorithms = ["RS256", "ES256"]         # a subset of these two, nothing else
    token_types = ["at+jwt"]                # header typ accepted (RFC 9068); add "jwt"
                                            # for a provider that marks access tokens so
    jwks_max_age_seconds = 600              # keys are re-read after this long
    jwks_refetch_seconds = 30               # an unknown kid refetches at most this often
    jwks_max_keys = 50                      # a larger key set is refused

    [oidc.group_roles]                      # provider group -> flagtrail roles
    "flag-release-managers" = ["release-manager"]

Only ``issuer``, ``audience`` and ``group_roles`` are required; any unknown key is
an error, as everywhere in the policy, so a typo never weakens it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from producers.errors import ConfigError
from producers.identity import normalize_name

SUPPORTED_ALGORITHMS = ("RS256", "ES256")  # asymmetric only: no none, no HS* (alg confusion)
LOOPBACK_HOSTS = frozenset({"localhost"})


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    group_roles: dict[str, frozenset[str]]  # group as the provider spells it -> normalised roles
    subject_claim: str = "sub"
    groups_claim: str = "groups"
    approval_claim: str = "authorization_details"
    leeway_seconds: int = 30
    require_tokens: bool = True
    algorithms: tuple[str, ...] = SUPPORTED_ALGORITHMS
    token_types: tuple[str, ...] = ("at+jwt",)  # lowercased, without "application/"
    jwks_max_age_seconds: int = 600
    jwks_refetch_seconds: int = 30
    jwks_max_keys: int = 50

    @property
    def discovery_url(self) -> str:
        # OpenID Connect Discovery 1.0 §4: the issuer without a trailing "/", then the path
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def roles_for(self, groups: list[str]) -> frozenset[str]:
        roles: set[str] = set()
        for group in groups:
            roles |= self.group_roles.get(group, frozenset())
        return frozenset(roles)


def check_url(url: str, what: str) -> None:
    """https, or plain http only to a loopback address (a test provider on this host)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it checks it: a port past 65535 raises)
    except ValueError as exc:  # "Invalid IPv6 URL": the provider's document is not ours
        raise ConfigError(f"{what} {url[:120]!r} is not a URL ({exc})") from None
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return
    raise ConfigError(f"{what} {url!r} must be an https URL (plain http only on loopback)")


def _loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_KEYS = {
    "issuer",
    "audience",
    "group_roles",
    "subject_claim",
    "groups_claim",
    "approval_claim",
    "leeway_seconds",
    "require_tokens",
    "algorithms",
    "token_types",
    "jwks_max_age_seconds",
    "jwks_refetch_seconds",
    "jwks_max_keys",
}
_LIMITS = {  # name -> (smallest, largest)
    "leeway_seconds": (0, 300),
    "jwks_max_age_seconds": (1, 86400),
    "jwks_refetch_seconds": (0, 3600),
    "jwks_max_keys": (1, 1000),
}


def parse_oidc(data: Any, source: str) -> OidcSettings:
    """OidcSettings from the policy's ``[oidc]`` table; any doubt is a ConfigError."""
    where = f"policy {source} [oidc]"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    extra = sorted(set(data) - _KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(extra)}")
    texts: dict[str, str] = {}
    for name in ("issuer", "audience", "subject_claim", "groups_claim", "approval_claim"):
        value = data.get(name, OidcSettings.__dataclass_fields__[name].default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {name} must be a non-empty string")
        texts[name] = value
    check_url(texts["issuer"], f"{where}: issuer")
    numbers: dict[str, int] = {}
    for name, (low, high) in _LIMITS.items():
        value = data.get(name, OidcSettings.__dataclass_fields__[name].default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{where}: {name} must be a whole number from {low} to {high}")
        numbers[name] = value
    require = data.get("require_tokens", True)
    if not isinstance(require, bool):
        raise ConfigError(f"{where}: require_tokens must be true or false")
    algorithms = data.get("algorithms", list(SUPPORTED_ALGORITHMS))
    if (
        not isinstance(algorithms, list)
        or not algorithms
        or any(a not in SUPPORTED_ALGORITHMS for a in algorithms)
    ):
        raise ConfigError(
            f"{where}: algorithms must list some of {', '.join(SUPPORTED_ALGORITHMS)} "
            "(symmetric and 'none' signatures are never accepted)"
        )
    types = data.get("token_types", ["at+jwt"])
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise ConfigError(f'{where}: token_types must list header typ values, e.g. ["at+jwt"]')
    raw_roles = data.get("group_roles")
    if not isinstance(raw_roles, dict) or not raw_roles:
        raise ConfigError(
            f'{where}: [oidc.group_roles] must map groups to roles: "group" = ["role"]'
        )
    group_roles: dict[str, frozenset[str]] = {}
    for group, roles in raw_roles.items():
        if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
            raise ConfigError(f"{where}: group_roles {group!r} must be a list of role names")
        group_roles[group] = frozenset(normalize_name(r) for r in roles)
    return OidcSettings(
        issuer=texts["issuer"],
        audience=texts["audience"],
        group_roles=group_roles,
        subject_claim=texts["subject_claim"],
        groups_claim=texts["groups_claim"],
        approval_claim=texts["approval_claim"],
        require_tokens=require,
        algorithms=tuple(dict.fromkeys(algorithms)),
        token_types=tuple(t.lower().removeprefix("application/") for t in types),
        **numbers,
    )
