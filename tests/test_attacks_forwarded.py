"""Attacks on `serve --forwarded-allow-ips`: what the operator names must be what uvicorn
trusts, no more and no less."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from uvicorn.middleware.proxy_headers import _TrustedHosts

from flagtrail.commands.serve import _trusted_proxies
from producers.errors import ConfigError
from tests.apiserver import Server, serve
from tests.test_api import chain_folder


@pytest.mark.parametrize(
    ("given", "proxy", "client"),
    [
        ("10.1.2.3/8", "10.200.0.1", "11.0.0.1"),  # host bits set: the operator's network
        (" 10.0.0.1 , 192.168.0.0/16 ", "192.168.4.4", "192.169.0.1"),
        ("2001:db8::1/32", "2001:db8:ffff::9", "2001:db9::1"),
        ("::0001", "::1", "::2"),
    ],
)
def test_the_proxies_named_are_the_proxies_trusted(given: str, proxy: str, client: str) -> None:
    trusted = _TrustedHosts(_trusted_proxies(given) or "")
    assert proxy in trusted, f"{given!r} does not trust {proxy}"
    assert client not in trusted


@pytest.mark.parametrize("given", ["localhost", "[::1]", "10.0.0.0/33", "*,10.0.0.1", "10.0.0.1 *"])
def test_what_uvicorn_would_read_otherwise_is_one_sentence(given: str) -> None:
    with pytest.raises(ConfigError, match="--forwarded-allow-ips"):
        _trusted_proxies(given)


def test_nothing_named_trusts_no_one() -> None:
    assert _trusted_proxies(None) is None and _trusted_proxies(" , ") is None


def test_star_alone_trusts_every_proxy() -> None:
    assert "203.0.113.9" in _TrustedHosts(_trusted_proxies(" * ") or "")


def test_the_access_log_names_the_client_whose_limit_counts(tmp_path: Path, rsa_keys: Path) -> None:
    """Who asked: the peer itself, unless the operator named it as a proxy (then the
    address it forwards). A forged X-Forwarded-For must not be what the log says."""
    folder = chain_folder(tmp_path, rsa_keys)
    forged = {"Authorization": "Bearer ftk_guess", "X-Forwarded-For": "203.0.113.7"}

    def logged_clients(server: Server) -> list[str]:
        httpx.get(f"{server.url}/v1/head", headers=forged)
        time.sleep(0.3)
        lines = [line for line in server.log().splitlines() if "/v1/head" in line]
        return [m for line in lines for m in re.findall(r"client\W+([0-9a-f.:]+)", line)]

    with serve(folder) as server:
        assert logged_clients(server) == ["127.0.0.1"]
    with serve(folder, "--forwarded-allow-ips", "127.0.0.1") as server:
        assert logged_clients(server) == ["203.0.113.7"]
