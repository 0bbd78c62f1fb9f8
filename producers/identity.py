"""The embedded identity provider: a TOML directory of known identities and roles.

At scale the same interface is backed by an OIDC provider; the embedded default
reads ``FLAGTRAIL_IDENTITIES`` (default ``identities.toml``)::

    [identities."alice@example.com"]
    roles = ["engineer", "release-manager"]
    aliases = ["Alice@Example.com", "alice"]   # other spellings of the same person

    [environments.production]          # optional: narrows the policy's change roles
    roles = ["release-manager"]

Names and aliases are matched after NFKC normalisation, casefolding and
stripping, and every alias resolves to its one identity, so "alice" approving
"ALICE@example.com" is one person approving themself.
"""

from __future__ import annotations

import os
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from producers.errors import ConfigError


def normalize_name(text: str) -> str:
    """NFKC, casefold, strip: one spelling for names people and tools type differently."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold()).strip()


SAMPLE_DIRECTORY = """\
# flagtrail identity directory: who exists and which roles each holds.
[identities."alice@example.com"]
roles = ["engineer", "release-manager"]

[identities."bob@example.com"]
roles = ["release-manager", "audit-admin"]
aliases = ["bob"]

[identities."carol@example.com"]
roles = ["engineer"]

# Which environments exist, who may change and approve there, and the operator
# role are in the policy file (FLAGTRAIL_POLICY; built-in default when unset).
"""


class IdentityProvider(Protocol):
    def resolve(self, identity: str) -> str | None: ...
    def roles_of(self, identity: str) -> frozenset[str]: ...
    def is_known(self, identity: str) -> bool: ...
    def holds_role(self, identity: str, role: str) -> bool: ...
    def roles_allowed_in(self, environment: str) -> frozenset[str] | None: ...


@dataclass(frozen=True)
class IdentityDirectory:
    identities: dict[str, frozenset[str]]  # canonical name -> roles
    environment_roles: dict[str, frozenset[str]]  # normalised environment -> roles
    names: dict[str, str] = field(default_factory=dict)  # normalised name or alias -> canonical

    def __post_init__(self) -> None:
        if not self.names:
            self.names.update({normalize_name(n): n for n in self.identities})

    def resolve(self, identity: str) -> str | None:
        """The canonical identity a name or alias stands for, or None when unknown."""
        if not isinstance(identity, str):
            return None
        return self.names.get(normalize_name(identity))

    def roles_of(self, identity: str) -> frozenset[str]:
        canonical = self.resolve(identity)
        return self.identities[canonical] if canonical else frozenset()

    def is_known(self, identity: str) -> bool:
        return self.resolve(identity) is not None

    def holds_role(self, identity: str, role: str) -> bool:
        wanted = normalize_name(role)
        return any(normalize_name(r) == wanted for r in self.roles_of(identity))

    def roles_allowed_in(self, environment: str) -> frozenset[str] | None:
        """The directory's own narrowing of change roles; None: the policy decides."""
        return self.environment_roles.get(normalize_name(environment))


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
    identities: dict[str, frozenset[str]] = {}
    names: dict[str, str] = {}
    for name, entry in raw_ids.items():
        where = f"{source} identity {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with 'roles'")
        identities[name] = _string_list(entry.get("roles", []), where)
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ConfigError(f"{where}: 'aliases' must be a list of strings")
        for spelling in [name, *aliases]:
            key = normalize_name(spelling)
            if not key:
                raise ConfigError(f"{where}: an empty name or alias")
            if names.setdefault(key, name) != name:  # one spelling, two people: refuse
                raise ConfigError(f"{source}: {spelling!r} names both {names[key]!r} and {name!r}")
    env_roles: dict[str, frozenset[str]] = {}
    for env, entry in (data.get("environments") or {}).items():
        roles = entry.get("roles") if isinstance(entry, dict) else None
        env_roles[normalize_name(env)] = _string_list(roles, f"{source} environment {env!r}")
    return IdentityDirectory(identities, env_roles, names)


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

    def resolve(self, identity: str) -> str | None:
        return self._current().resolve(identity)

    def roles_of(self, identity: str) -> frozenset[str]:
        return self._current().roles_of(identity)

    def is_known(self, identity: str) -> bool:
        return self._current().is_known(identity)

    def holds_role(self, identity: str, role: str) -> bool:
        return self._current().holds_role(identity, role)

    def roles_allowed_in(self, environment: str) -> frozenset[str] | None:
        return self._current().roles_allowed_in(environment)
