"""The webhook receivers fuzzed with bodies that carry a valid signature, over HTTP.

The schemathesis run (tests/test_api_fuzz.py) cannot reach past a webhook's signature
check: every body it makes is refused 401 before it is parsed. Here a platform's real
delivery is mutated (a value anywhere replaced by odd JSON: lone surrogates, huge
numbers, NaN, deep nesting, or removed) and signed with the webhook's secret, so the
parsing and mapping behind the signature are what is fuzzed. Bounded and derandomized:
the gate replays the same exploration. No 5xx, no traceback, errors as problem documents.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.sources.webhooks import sign
from tests.apiserver import Server, serve
from tests.conftest import run_cli
from tests.test_sources import FS_AUDIT, LD_ENTRY, SECRET

PLATFORMS = {
    "launchdarkly": ("X-LD-Signature", LD_ENTRY),
    "flagsmith": ("X-Flagsmith-Signature", {"data": FS_AUDIT, "event_type": "AUDIT_LOG_CREATED"}),
}
BUDGET_S = 40
EXAMPLES = 300  # per platform

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\u202e", "\x00", "e\u0301", "\ufeff", "../" * 20]),
    st.just("\uff21\uff24\uff2d\uff29\uff2e"),  # ADMIN in full width
)
odd_numbers = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -0.0, 2**64, -(2**63) - 1, 10**40]),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.one_of(odd_numbers, odd_text, st.none(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document a value sits at (the root excluded)."""
    found = []
    items = (
        value.items() if isinstance(value, dict) else enumerate(value)
        if isinstance(value, list) else ()
    )  # fmt: skip
    for key, inner in items:
        found.append((*prefix, key))
        found += paths(inner, (*prefix, key))
    return found


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> bytes:
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        places = paths(doc)
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = doc
        for key in place[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.integers(0, 3)) == 0:
            del parent[place[-1]]
        else:
            parent[place[-1]] = draw(json_values)
    return json.dumps(doc, sort_keys=True).encode()  # NaN and Infinity stay as JSON says


def post(server: Server, platform: str, body: bytes) -> httpx.Response:
    header, _ = PLATFORMS[platform]
    return httpx.post(
        f"{server.url}/v1/sources/{platform}",
        content=body,
        headers={header: sign(SECRET, body), "Content-Type": "application/json"},
        timeout=30,
    )


def assert_answered_well(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text


def test_signed_webhook_bodies_never_break_the_receiver(workdir: Path, rsa_keys: Path) -> None:
    shutil.copy(rsa_keys / "audit-private.pem", workdir / "audit-private.pem")
    assert run_cli("relay", "--once", cwd=workdir).returncode == 0  # serve needs a log
    secrets = {f"FLAGTRAIL_{p.upper()}_WEBHOOK_SECRET": SECRET for p in PLATFORMS}
    with serve(workdir, **secrets) as server:
        # hand-picked first: nesting past Python's recursion limit, odd top-level values
        for platform in PLATFORMS:
            for body in (
                b"[" * 200_000 + b"]" * 200_000,
                b'{"kind":' * 50_000 + b"1" + b"}" * 50_000,
                b"null", b"[]", b"1e999999", b'"\\ud800"', b"", b"\xff\xfe{}",
            ):  # fmt: skip
                assert_answered_well(post(server, platform, body))
        deadline = time.monotonic() + BUDGET_S
        calls = 0

        def fuzz(platform: str, document: dict[str, Any]) -> None:
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(body=mutated(document))
            def deliver(body: bytes) -> None:
                nonlocal calls
                if time.monotonic() > deadline:
                    return
                calls += 1
                assert_answered_well(post(server, platform, body))

            deliver()

        for platform, (_, document) in PLATFORMS.items():
            fuzz(platform, document)
        assert calls > 100, f"only {calls} deliveries within the budget"
        log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "api.internal_error" not in log
