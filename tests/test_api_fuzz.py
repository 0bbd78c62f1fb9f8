"""The evidence API fuzzed against its own OpenAPI document (schemathesis), bounded:
no 5xx, no traceback, errors as problem documents."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error

from tests.apiserver import make_token, serve
from tests.test_api import chain_folder

BUDGET_S = 50  # the whole run stays under a minute
EXAMPLES = 40  # per operation and generation mode


def test_the_api_survives_fuzzing_against_its_own_openapi(tmp_path: Path, rsa_keys: Path) -> None:
    folder = chain_folder(tmp_path / "fuzz", rsa_keys, records=30)
    secret = make_token(folder, "fuzzer", "export:read", "metrics:read")
    headers = {"Authorization": f"Bearer {secret}"}
    with serve(folder, "--rate-limit", "1000000") as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/export", "/v1/package", "/v1/head"}
        deadline = time.monotonic() + BUDGET_S
        calls = 0
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,  # the gate replays the same exploration
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: schemathesis.Case) -> None:
                    nonlocal calls
                    if time.monotonic() > deadline:
                        return
                    calls += 1
                    response = case.call_and_validate(
                        base_url=server.url,
                        headers=headers,
                        checks=[not_a_server_error, content_type_conformance],
                        timeout=30,
                    )
                    assert "Traceback" not in response.text
                    if response.status_code >= 400:
                        kind = response.headers.get("content-type", [""])
                        assert "application/problem+json" in str(kind), response.text[:200]

                try:
                    call()
                except Unsatisfiable:  # no parameter to break (/healthz) has no negative case
                    assert mode is GenerationMode.NEGATIVE, operation.label
        assert calls > 100, f"only {calls} calls within the budget"
        log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "api.internal_error" not in log


@pytest.mark.parametrize("path", ["/v1/export", "/v1/package", "/v1/head", "/metrics"])
def test_every_guarded_route_refuses_a_caller_without_a_token(
    tmp_path: Path, rsa_keys: Path, path: str
) -> None:
    import httpx

    folder = chain_folder(tmp_path / "guard", rsa_keys, records=2)
    with serve(folder) as server:
        spec = httpx.get(f"{server.url}/openapi.json").json()
        assert path in spec["paths"]
        for method in spec["paths"][path]:
            got = httpx.request(method.upper(), f"{server.url}{path}")
            assert got.status_code == 401, (method, path, got.status_code)
