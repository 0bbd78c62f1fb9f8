"""The embedded identity provider: a TOML directory of known identities and roles.

At scale the same interface is backed by an OIDC provider; the embedded default
reads ``FLAGTRAIL_IDENTITIES`` (default ``identities.toml``)::

    [identities."alice@example.com"]
    roles = ["engineer", "release-manager"]

    [environments.production]          # optional RBAC override
    roles = ["release-manager"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from producers.errors import ConfigError
from producers.events import PRODUCTION

DEFAULT_ENVIRONMENT_ROLES: dict[str, frozenset[str]] = {PRODUCTION: frozenset({"release-manager"})}

SAMPLE_DIRECTORY = """\
# flagtrail identity directory: who exists and which roles each holds.
[identities."alice@example.com"]
roles = ["engineer", "release-manager"]

[identities."bob@example.com"]
roles = ["release-manager"]

[identities."carol@example.com"]
roles = ["engineer"]

# Which roles may change flags in an environment (flag taxonomy RBAC policy).
# Environments not listed accept any role the actor holds.
[environments.production]
roles = ["release-manager"]
"""


class IdentityProvider(Protocol):
    def is_known(self, identity: str) -> bool: ...
    def holds_role(self, identity: str, role: str) -> bool: ...
    def roles_allowed_in(self, environment: str) -> frozenset[str] | None: ...


@dataclass(frozen=True)
class IdentityDirectory:
    identities: dict[str, frozenset[str]]
    environment_roles: dict[str, frozenset[str]]

    def is_known(self, identity: str) -> bool:
        return identity in self.identities

    def holds_role(self, identity: str, role: str) -> bool:
        return role in self.identities.get(identity, frozenset())

    def roles_allowed_in(self, environment: str) -> frozenset[str] | None:
        """None means: any role the actor holds."""
        return self.environment_roles.get(environment)


def _string_list(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: 'roles' must be a list of strings")
    return frozenset(value)


def parse_directory(text: str, source: str) -> IdentityDirectory:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"identity directory {source} is not valid TOML: {exc}") from exc
    raw_ids = data.get("identities")
    if not isinstance(raw_ids, dict) or not raw_ids:
        raise ConfigError(f'identity directory {source} has no [identities."name"] tables')
    identities = {
        name: _string_list(
            entry.get("roles", []) if isinstance(entry, dict) else None,
            f"{source} identity {name!r}",
        )
        for name, entry in raw_ids.items()
    }
    env_roles = dict(DEFAULT_ENVIRONMENT_ROLES)
    for env, entry in (data.get("environments") or {}).items():
        roles = entry.get("roles") if isinstance(entry, dict) else None
        env_roles[env] = _string_list(roles, f"{source} environment {env!r}")
    return IdentityDirectory(identities, env_roles)


class FileIdentityDirectory:
    """An IdentityProvider over a TOML file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._directory: IdentityDirectory | None = None

    def directory(self) -> IdentityDirectory:
        """The directory as the file says now (re-read when it changed)."""
        return self._current()

    def _current(self) -> IdentityDirectory:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"identity directory {self.path} not found: create it (see "
                "`flagtrail demo` for a sample) or point FLAGTRAIL_IDENTITIES at it"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._directory is None or stamp != self._stamp:
            try:
                text = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read identity directory {self.path}: {exc}") from exc
            self._directory = parse_directory(text, str(self.path))
            self._stamp = stamp
        return self._directory

    def is_known(self, identity: str) -> bool:
        return self._current().is_known(identity)

    def holds_role(self, identity: str, role: str) -> bool:
        return self._current().holds_role(identity, role)

    def roles_allowed_in(self, environment: str) -> frozenset[str] | None:
        return self._current().roles_allowed_in(environment)
