"""A real OpenID Connect provider (npm oidc-provider) on loopback: deploy/local/oidc.

Each provider runs from a state folder of its own (keys, port, pid), so a test
can start a second one: the same keys under another issuer, other keys, or one
whose keys it rotates. Tokens are fetched from the provider's token endpoint
exactly as a control plane or an approval UI would.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from producers.events import FlagChange
from producers.oidc.approval import APPROVAL_TYPE, change_digest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "oidc"

GROUP_ROLES = """\
[oidc.group_roles]
"flag-release-managers" = ["release-manager"]
"engineering" = ["engineer"]
"""


@dataclass
class Provider:
    issuer: str
    state: Path

    def _run(self, command: str, keys_from: Path | None = None) -> str:
        env = {**os.environ, "FLAGTRAIL_OIDC_STATE": str(self.state)}
        if keys_from is not None:
            env["FLAGTRAIL_OIDC_KEYS"] = str(keys_from)
        done = subprocess.run(
            ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"deploy/local/oidc {command} failed:\n{done.stderr}"
        return done.stdout

    @classmethod
    def start(cls, state: Path, keys_from: Path | None = None) -> Provider:
        provider = cls("", state)
        out = provider._run("start", keys_from)
        provider.issuer = out.strip().rsplit("=", 1)[1]
        return provider

    def rotate(self) -> None:
        self._run("rotate")

    def retire(self) -> None:
        self._run("retire")

    def stop(self) -> None:
        self._run("stop")

    @property
    def keys_file(self) -> Path:
        return self.state / "keys.json"

    def token(
        self,
        person: str,
        resource: str = "urn:flagtrail:rs256",
        approves: FlagChange | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> str:
        """An access token for ``person`` (client_credentials), optionally an approval."""
        form = {
            "grant_type": "client_credentials",
            "client_id": person,
            "client_secret": f"secret-of-{person}",
            "resource": resource,
        }
        if approves is not None:
            details = [
                {
                    "type": APPROVAL_TYPE,
                    "flag_key": approves.flag_key,
                    "environment": approves.environment,
                    "change_digest": change_digest(approves),
                }
            ]
        if details is not None:
            form["authorization_details"] = json.dumps(details)
        request = urllib.request.Request(
            f"{self.issuer}/token", data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["access_token"]

    def policy(self, **settings: object) -> str:
        """A policy file's text: the built-in classes plus this provider in [oidc]."""
        from producers.policy import DEFAULT_POLICY

        lines = [f'issuer = "{self.issuer}"', 'audience = "flagtrail"']
        lines += [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
        return DEFAULT_POLICY + "\n[oidc]\n" + "\n".join(lines) + "\n\n" + GROUP_ROLES


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    provider = Provider.start(tmp_path_factory.mktemp("oidc-main"))
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def twin_provider(
    oidc_provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provider]:
    """Another issuer signing with the very same keys (a wrong-issuer token verifies)."""
    provider = Provider.start(tmp_path_factory.mktemp("oidc-twin"), oidc_provider.keys_file)
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def stranger_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """Another provider with keys of its own."""
    provider = Provider.start(tmp_path_factory.mktemp("oidc-stranger"))
    yield provider
    provider.stop()


@pytest.fixture
def rotating_provider(tmp_path: Path) -> Iterator[Provider]:
    provider = Provider.start(tmp_path / "oidc-rotating")
    yield provider
    provider.stop()
