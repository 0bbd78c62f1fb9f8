"""Write-time SOC2 policy: environment classes, who may change and approve, failing closed.

The policy is a TOML file (``FLAGTRAIL_POLICY``; the built-in ``DEFAULT_POLICY``
when unset). Environment names are normalised (NFKC, casefold, strip) before
they are matched, so ``Production``, `` PRODUCTION `` or a fullwidth "prod" (U+FF50...)
are the production class; an environment no class declares is refused (400)
unless the policy names a ``default_class``. Each rule returns a Violation naming
the control it enforces; the message starts with the control so the 403 a
control plane returns explains itself.
"""

from __future__ import annotations

import os
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, InvalidChange
from producers.events import FlagChange
from producers.identity import IdentityProvider, normalize_name
from producers.validation import Limits

DISTINCT_APPROVER_MESSAGE = "SOC2 CC8.1: production flag change requires a distinct approver"
ANY_ROLE = "*"

DEFAULT_POLICY = """\
# flagtrail write-time policy (FLAGTRAIL_POLICY). Environment names are matched
# after NFKC normalisation, casefolding and stripping; an environment no class
# declares is refused unless default_class names a class for it.

# roles that may run `flagtrail rotate` and `flagtrail gap document`
operator_roles = ["audit-admin"]
# default_class = "non-production"   # uncomment to accept undeclared environments

[classes.production]
environments = ["production", "prod", "prd", "production-eu", "production-us", "live"]
change_roles = ["release-manager"]     # roles that may change flags here
approve_roles = ["release-manager"]    # roles an approver must hold
requires_approval = true               # distinct approver and change_ref (CC8.1)

[classes.non-production]
environments = ["staging", "stage", "development", "dev", "test", "testing", "qa",
                "sandbox", "preview", "local"]
change_roles = ["*"]                   # any role the actor holds
approve_roles = []
requires_approval = false

[limits]
max_depth = 32                # nesting of before / after
max_state_bytes = 65536       # before / after, each, as canonical JSON
max_reason_bytes = 4096
max_identifier_chars = 256
# integers beyond ±(2^53-1) are always refused: not every reader keeps them exact
"""


@dataclass(frozen=True)
class Violation:
    rule: str
    control: str
    message: str


@dataclass(frozen=True)
class EnvironmentClass:
    name: str
    environments: frozenset[str]  # normalised names
    change_roles: frozenset[str] | None  # None: any role the actor holds
    approve_roles: frozenset[str]
    requires_approval: bool  # the production rules: distinct approver, change_ref, CC8.1


@dataclass(frozen=True)
class Policy:
    classes: dict[str, EnvironmentClass]
    operator_roles: frozenset[str]
    default_class: str | None = None
    limits: Limits = field(default_factory=Limits)
    source: str = "the built-in policy"
    # [privacy]: pseudonymisation and reason redaction (read by producers/privacy.py)
    privacy: dict[str, Any] = field(default_factory=dict)

    def class_of(self, environment: str) -> EnvironmentClass:
        """The environment's class; an undeclared environment is refused (400)."""
        name = normalize_name(environment)
        for env_class in self.classes.values():
            if name in env_class.environments:
                return env_class
        if self.default_class is not None:
            return self.classes[self.default_class]
        raise InvalidChange(
            f"environment {environment!r} is not declared in {self.source}: add it to a "
            "class, or name a default_class"
        )


_TOP_KEYS = {"operator_roles", "default_class", "classes", "limits", "privacy"}
_CLASS_KEYS = {"environments", "change_roles", "approve_roles", "requires_approval"}


def _names(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return frozenset(normalize_name(v) for v in value)


def _unknown(keys: object, allowed: set[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)  # type: ignore[arg-type]
    if extra:  # a typo must not silently weaken the policy
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(extra)}")


def parse_policy(text: str, source: str) -> Policy:
    """A Policy from TOML text; any doubt is a ConfigError (fail closed)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy {source} is not valid TOML: {exc}") from exc
    _unknown(data, _TOP_KEYS, f"policy {source}")
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, dict) or not raw_classes:
        raise ConfigError(f'policy {source} declares no [classes."name"] tables')
    classes: dict[str, EnvironmentClass] = {}
    owner: dict[str, str] = {}
    for name, entry in raw_classes.items():
        where = f"policy {source} class {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        _unknown(entry, _CLASS_KEYS, where)
        environments = _names(entry.get("environments"), f"{where} environments")
        if "change_roles" not in entry:
            raise ConfigError(f'{where} must list change_roles (use ["*"] for any held role)')
        change_roles = _names(entry["change_roles"], f"{where} change_roles")
        approve_roles = _names(entry.get("approve_roles", []), f"{where} approve_roles")
        requires_approval = entry.get("requires_approval", True)  # fail closed
        if not isinstance(requires_approval, bool):
            raise ConfigError(f"{where} requires_approval must be true or false")
        if requires_approval and (not approve_roles or ANY_ROLE in approve_roles):
            raise ConfigError(f"{where} requires approval but names no approve_roles")
        for env in environments:
            if env in owner:
                raise ConfigError(
                    f"policy {source}: environment {env!r} is in both {owner[env]!r} and {name!r}"
                )
            owner[env] = name
        classes[name] = EnvironmentClass(
            name,
            environments,
            None if ANY_ROLE in change_roles else change_roles,
            approve_roles,
            requires_approval,
        )
    default_class = data.get("default_class")
    if default_class is not None and default_class not in classes:
        raise ConfigError(f"policy {source}: default_class {default_class!r} is not a class")
    operator_roles = _names(data.get("operator_roles", ["audit-admin"]), "operator_roles")
    limits_data = data.get("limits", {})
    if not isinstance(limits_data, dict):
        raise ConfigError(f"policy {source}: [limits] must be a table")
    try:
        limits = Limits(**limits_data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"policy {source} [limits]: {exc}") from None
    privacy = data.get("privacy", {})
    if not isinstance(privacy, dict):
        raise ConfigError(f"policy {source}: [privacy] must be a table")
    return Policy(classes, operator_roles, default_class, limits, f"policy {source}", privacy)


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """The policy at ``path``, else at ``FLAGTRAIL_POLICY``, else the built-in default."""
    location = path or os.environ.get("FLAGTRAIL_POLICY")
    if not location:
        return parse_policy(DEFAULT_POLICY, "(built-in)")
    try:
        text = Path(location).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"policy {location} not found: point FLAGTRAIL_POLICY at a policy file "
            "(see deploy/examples/policy.toml) or unset it for the built-in default"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy {location}: {exc}") from exc
    return parse_policy(text, str(location))


_DEFAULT: Policy | None = None


def default_policy() -> Policy:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = parse_policy(DEFAULT_POLICY, "(built-in)")
    return _DEFAULT


def _missing_fields(change: FlagChange, env_class: EnvironmentClass) -> list[str]:
    required = ["actor", "role", "reason"]
    if env_class.requires_approval:
        required.append("change_ref")
    return [name for name in required if not getattr(change, name).strip()]


def _same_person(identities: IdentityProvider, first: str, second: str) -> bool:
    """Aliases and spellings of one identity are one person (before any other check)."""
    one = identities.resolve(first) or normalize_name(first)
    two = identities.resolve(second) or normalize_name(second)
    return one == two


def evaluate(
    change: FlagChange, identities: IdentityProvider, policy: Policy | None = None
) -> Violation | None:
    """The first rule the change breaks, or None when it may be written.

    Raises InvalidChange for an environment the policy does not declare.
    """
    policy = policy or default_policy()
    env_class = policy.class_of(change.environment)
    missing = _missing_fields(change, env_class)
    if missing:
        control = "CC6.1" if {"actor", "role"} & set(missing) else "CC8.1"
        return Violation(
            "required-fields",
            control,
            f"SOC2 {control}: flag change is missing required field(s): {', '.join(missing)}",
        )
    if env_class.requires_approval and (
        not change.approver or _same_person(identities, change.actor, change.approver)
    ):
        return Violation("distinct-approver", "CC8.1", DISTINCT_APPROVER_MESSAGE)
    if not identities.is_known(change.actor):
        return Violation(
            "unknown-actor",
            "CC6.1",
            f"SOC2 CC6.1: actor {change.actor!r} is not a known identity",
        )
    role = normalize_name(change.role)
    if not identities.holds_role(change.actor, change.role):
        return Violation(
            "role-not-held",
            "CC6.1",
            f"SOC2 CC6.1: actor {change.actor!r} does not hold role {change.role!r}",
        )
    allowed = env_class.change_roles
    narrowed = identities.roles_allowed_in(change.environment)  # the directory's own RBAC
    if (allowed is not None and role not in allowed) or (
        narrowed is not None and role not in {normalize_name(r) for r in narrowed}
    ):
        shown = sorted((allowed or frozenset()) | (narrowed or frozenset()))
        return Violation(
            "role-not-allowed",
            "CC6.1",
            f"SOC2 CC6.1: role {change.role!r} may not change flags in "
            f"{_printable(change.environment)} (allowed: {', '.join(shown)})",
        )
    if change.approver and not identities.is_known(change.approver):
        return Violation(
            "unverified-approver",
            "CC8.1",
            f"SOC2 CC8.1: approver {change.approver!r} is not a verified identity",
        )
    if change.approver and env_class.approve_roles:
        held = {normalize_name(r) for r in identities.roles_of(change.approver)}
        if not held & env_class.approve_roles:
            return Violation(
                "approver-role-not-held",
                "CC8.1",
                f"SOC2 CC8.1: approver {change.approver!r} holds no approving role for "
                f"{env_class.name} (approving roles: "
                f"{', '.join(sorted(env_class.approve_roles))})",
            )
    return None


def _printable(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c)[0] != "C").strip() or repr(text)
