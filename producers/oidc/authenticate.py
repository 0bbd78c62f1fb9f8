"""Who made and who approved a change, and how that was established.

One interface, IdentitySource, with two implementations; Outbox.record gets
its one from ``identity_source(policy.oidc, ...)``. With no ``[oidc]`` table in
the policy, identities are the names the control plane passes, checked against
the TOML directory (producers/identity.py): the embedded default. With one, the
actor's token and the approver's approval token are verified
(producers/oidc/tokens.py) and their subjects replace the typed
names, their groups (mapped by ``[oidc.group_roles]``) are the roles the policy
checks, and the approval must be bound to this change (approval.py). With
``require_tokens = false`` a missing token falls back to the directory for that
person (a migration aid); a token that is present is always verified.

Every record carries ``auth``: for actor and approver, ``method`` ("oidc" or
"directory"), ``issuer``, ``key_id`` (and for OIDC the ``algorithm``; for an
approval the token id ``jti``), so an auditor can tell a name checked against a
file from a name the provider signed for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from producers.errors import InvalidChange
from producers.events import FlagChange
from producers.identity import IdentityProvider, normalize_name
from producers.oidc.approval import binding_problem, has_approval_entry
from producers.oidc.settings import OidcSettings
from producers.oidc.tokens import TokenRefused, TokenVerifier, VerifiedToken
from producers.policy import EnvironmentClass, Violation
from producers.validation import Limits, check_identifier

TOKEN_CONTROL = "CC6.6"
DIRECTORY_AUTH: dict[str, Any] = {"method": "directory", "issuer": None, "key_id": None}


@dataclass(frozen=True)
class Authentication:
    change: FlagChange  # actor and approver are the established identities
    identities: IdentityProvider  # what the policy consults for roles
    auth: dict[str, Any]  # the record's "auth" field
    approval: VerifiedToken | None  # an approval token to spend with the change


class VerifiedIdentities:
    """An IdentityProvider over the subjects tokens proved, with their mapped roles;
    names no token proved go to ``fallback`` (the directory) when there is one."""

    def __init__(
        self, verified: dict[str, frozenset[str]], fallback: IdentityProvider | None
    ) -> None:
        self._roles = verified
        self._names = {normalize_name(s): s for s in verified}
        self._fallback = fallback

    def resolve(self, identity: str) -> str | None:
        if not isinstance(identity, str):
            return None
        found = self._names.get(normalize_name(identity))
        if found is None and self._fallback is not None:
            return self._fallback.resolve(identity)
        return found

    def roles_of(self, identity: str) -> frozenset[str]:
        found = self._names.get(normalize_name(identity))
        if found is not None:
            return self._roles[found]
        return self._fallback.roles_of(identity) if self._fallback is not None else frozenset()

    def is_known(self, identity: str) -> bool:
        return self.resolve(identity) is not None

    def holds_role(self, identity: str, role: str) -> bool:
        return normalize_name(role) in {normalize_name(r) for r in self.roles_of(identity)}

    def roles_allowed_in(self, environment: str) -> frozenset[str] | None:
        return self._fallback.roles_allowed_in(environment) if self._fallback else None


def _oidc_auth(token: VerifiedToken, approval: bool = False) -> dict[str, Any]:
    auth = {
        "method": "oidc",
        "issuer": token.issuer,
        "key_id": token.key_id,
        "algorithm": token.algorithm,
    }
    if approval:
        auth["token_id"] = token.token_id
    return auth


def _refused(rule: str, message: str) -> Violation:
    return Violation(rule, TOKEN_CONTROL, f"SOC2 {TOKEN_CONTROL}: {message}")


class IdentitySource(Protocol):
    """Establishes who made and who approved a change: the one interface behind which
    the directory and the OpenID Connect provider sit (Outbox.record calls it)."""

    def authenticate(
        self,
        change: FlagChange,
        env_class: EnvironmentClass,
        actor_token: str | None,
        approval_token: str | None,
    ) -> Authentication | Violation:
        """The change with established identities, or the Violation refusing it."""
        ...


class DirectorySource:
    """The embedded default: names as typed, checked against the TOML directory."""

    def __init__(self, directory: IdentityProvider) -> None:
        self.directory = directory

    def authenticate(
        self,
        change: FlagChange,
        env_class: EnvironmentClass,
        actor_token: str | None,
        approval_token: str | None,
    ) -> Authentication | Violation:
        if actor_token or approval_token:
            raise InvalidChange(
                "a token was given but the policy names no [oidc] provider to verify it"
            )
        approver_auth = DIRECTORY_AUTH if change.approver else None
        return Authentication(
            change, self.directory, {"actor": DIRECTORY_AUTH, "approver": approver_auth}, None
        )


def identity_source(
    settings: OidcSettings | None,
    directory: IdentityProvider,
    limits: Limits,
    verifier: TokenVerifier | None = None,
) -> IdentitySource:
    """The policy's identity source: its [oidc] provider when it names one."""
    if settings is None:
        return DirectorySource(directory)
    return OidcSource(settings, directory, limits, verifier)


class OidcSource:
    """Identities the provider's tokens prove (with the directory as a fallback for a
    missing token only when ``require_tokens = false``)."""

    def __init__(
        self,
        settings: OidcSettings,
        directory: IdentityProvider,
        limits: Limits,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.limits = limits
        self.verifier = verifier or TokenVerifier(settings)

    def authenticate(
        self,
        change: FlagChange,
        env_class: EnvironmentClass,
        actor_token: str | None,
        approval_token: str | None,
    ) -> Authentication | Violation:
        settings = self.settings
        needs_approval = env_class.requires_approval or bool(change.approver)
        if settings.require_tokens:
            if not actor_token:
                return _refused(
                    "oidc-token-missing",
                    f"the policy requires an actor token from {settings.issuer}",
                )
            if needs_approval and not approval_token:
                return _refused(
                    "oidc-token-missing",
                    f"the policy requires an approval token from {settings.issuer}",
                )
        verified: dict[str, frozenset[str]] = {}
        auth: dict[str, Any] = {"actor": DIRECTORY_AUTH, "approver": None}
        actor, approver = change.actor, change.approver
        if actor_token:
            token = self._verify("actor", actor_token)
            if isinstance(token, Violation):
                return token
            if has_approval_entry(token.claims, settings.approval_claim):
                # the actor is handed the approver's token to submit: it must not
                # let them act as the approver
                return _refused("oidc-actor-token", "actor token refused: it is an approval token")
            if actor.strip() and normalize_name(actor) != normalize_name(token.subject):
                return _refused(
                    "oidc-subject-mismatch",
                    f"actor {actor!r} is not the actor token's subject {token.subject!r}",
                )
            actor = token.subject
            verified[actor] = settings.roles_for(list(token.groups))
            auth["actor"] = _oidc_auth(token)
        approval: VerifiedToken | None = None
        if approval_token:
            token = self._verify("approval", approval_token)
            if isinstance(token, Violation):
                return token
            if approver and normalize_name(approver) != normalize_name(token.subject):
                return _refused(
                    "oidc-subject-mismatch",
                    f"approver {approver!r} is not the approval token's subject {token.subject!r}",
                )
            problem = binding_problem(token.claims, settings.approval_claim, change)
            if problem:
                return _refused("oidc-approval-binding", f"approval token refused: {problem}")
            approver = token.subject
            # one person may hold both tokens: the distinct-approver rule then refuses
            verified.setdefault(approver, settings.roles_for(list(token.groups)))
            auth["approver"] = _oidc_auth(token, approval=True)
            approval = token
        elif approver:
            auth["approver"] = DIRECTORY_AUTH
        fallback = None if settings.require_tokens else self.directory
        return Authentication(
            dataclasses.replace(change, actor=actor, approver=approver),
            VerifiedIdentities(verified, fallback),
            auth,
            approval,
        )

    def _verify(self, which: str, token: str) -> VerifiedToken | Violation:
        try:
            verified = self.verifier.verify(token)
            # a signed subject is still text flagtrail chains: the same bounds as any name
            check_identifier(which, verified.subject, self.limits)
        except TokenRefused as exc:
            return _refused(f"oidc-{which}-token", f"{which} token refused: {exc.reason}")
        except InvalidChange as exc:
            return _refused(f"oidc-{which}-token", f"{which} token refused: {exc}")
        return verified
