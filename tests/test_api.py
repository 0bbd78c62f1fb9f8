"""`flagtrail serve`: the read-only evidence API, against a real uvicorn server."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from producers.identity import SAMPLE_DIRECTORY
from producers.outbox import Outbox
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from tests.apiserver import Server, env_for, make_token, serve
from tests.conftest import SteppingClock, run_cli
from tests.test_evidence import build_chain

H1 = {"start": "2026-01-01", "end": "2026-06-30"}
SEED_CONTROLS = "CC6.1,CC6.6,CC8.1"


def chain_folder(base: Path, keys: Path, records: int = 60) -> Path:
    from datetime import UTC, datetime, timedelta

    from flagtrail.settings import make_engine

    base.mkdir(parents=True, exist_ok=True)
    (base / "identities.toml").write_text(SAMPLE_DIRECTORY)
    shutil.copy(keys / "audit-private.pem", base / "audit-private.pem")
    shutil.copy(keys / "audit-public.pem", base / "registered-public.pem")
    engine = make_engine(f"sqlite:///{base / 'outbox.db'}")
    clock = SteppingClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC), timedelta(hours=6))
    build_chain(engine, base, clock, records)
    engine.dispose()
    return base


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, rsa_keys: Path) -> Iterator[Server]:
    folder = chain_folder(tmp_path_factory.mktemp("api"), rsa_keys)
    with serve(folder) as server:
        yield server


@pytest.fixture(scope="module")
def token(api: Server) -> str:
    return make_token(api.folder, "ci-weekly", "export:read")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cli_export(folder: Path, start: str, end: str, out: str) -> bytes:
    result = run_cli(
        "export", "--start", start, "--end", end, "--out", out, cwd=folder, env=env_for(folder)
    )
    assert result.returncode == 0, result.stderr
    return (folder / out / f"flag-audit-soc2_{start}_{end}.jsonl").read_bytes()


def receipts(folder: Path) -> list[dict]:
    with sqlite3.connect(folder / "outbox.db") as db:
        rows = db.execute("SELECT payload FROM flagtrail_outbox ORDER BY id").fetchall()
    return [r for r in (json.loads(p) for (p,) in rows) if r["action"] == "evidence_exported"]


# -- the export, byte for byte -----------------------------------------------------------
@pytest.mark.parametrize(("start", "end"), [(H1["start"], H1["end"]), ("2026-01-03", "2026-01-05")])
def test_get_and_post_answer_exactly_the_bytes_flagtrail_export_writes(
    api: Server, token: str, start: str, end: str
) -> None:
    expected = cli_export(api.folder, start, end, f"cli-{start}")
    assert expected.count(b"\n") > 1
    got = httpx.get(
        f"{api.url}/v1/export",
        params={"start": start, "end": end, "controls": SEED_CONTROLS},
        headers=auth(token),
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-ndjson"
    assert got.content == expected
    posted = httpx.post(
        f"{api.url}/v1/export",
        data={"start": start, "end": end, "controls": SEED_CONTROLS},
        headers=auth(token),
    )
    assert posted.status_code == 200, posted.text
    assert posted.content == expected


def test_the_seeds_curl_command_gets_the_export(api: Server, token: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = tmp_path / f"flag-audit-soc2_{H1['start']}_{H1['end']}.jsonl"
    result = subprocess.run(
        [
            "curl", "-sf", f"{api.url}/v1/export",
            "-H", f"Authorization: Bearer {token}",
            "--data-urlencode", f"start={H1['start']}",
            "--data-urlencode", f"end={H1['end']}",
            "--data-urlencode", f"controls={SEED_CONTROLS}",
            "-o", str(out),
        ],
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == cli_export(api.folder, H1["start"], H1["end"], "cli-curl")
    seed = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "seed" / "verify_chain.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert seed.stdout.startswith("Chain intact: 60 records"), seed.stdout + seed.stderr


def test_an_empty_window_is_an_empty_200(api: Server, token: str) -> None:
    got = httpx.get(
        f"{api.url}/v1/export",
        params={"start": "2025-01-01", "end": "2025-01-31"},
        headers=auth(token),
    )
    assert got.status_code == 200
    assert got.content == b""


# -- tokens ---------------------------------------------------------------------------------
def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401


def test_missing_unknown_expired_and_revoked_tokens_get_401(api: Server, token: str) -> None:
    url = f"{api.url}/v1/export"
    assert_401(httpx.get(url, params=H1))
    assert_401(httpx.get(url, params=H1, headers={"Authorization": "Basic YTpi"}))
    assert_401(httpx.get(url, params=H1, headers=auth(token[:-2] + "xx")))
    assert_401(httpx.get(url, params=H1, headers=auth("ftk_" + "A" * 5000)))
    expired = make_token(api.folder, "short-lived", "export:read", expires="1m")
    with sqlite3.connect(api.folder / "outbox.db") as db:  # a minute later, without waiting
        db.execute(
            "UPDATE flagtrail_api_tokens SET expires_at_us = expires_at_us - 120000000 "
            "WHERE name = 'short-lived'"
        )
    assert_401(httpx.get(url, params=H1, headers=auth(expired)))
    revoked = make_token(api.folder, "leaked", "export:read")
    assert httpx.get(url, params=H1, headers=auth(revoked)).status_code == 200
    assert (
        run_cli("token", "revoke", "leaked", cwd=api.folder, env=env_for(api.folder)).returncode
        == 0
    )
    assert_401(httpx.get(url, params=H1, headers=auth(revoked)))


def test_a_token_of_another_scope_gets_403(api: Server) -> None:
    metrics_only = make_token(api.folder, "prometheus", "metrics:read")
    for path in ("/v1/export", "/v1/package", "/v1/head"):
        got = httpx.get(f"{api.url}{path}", params=H1, headers=auth(metrics_only))
        assert got.status_code == 403, (path, got.text)
        assert "export:read" in got.json()["detail"]
    assert httpx.get(f"{api.url}/metrics", headers=auth(metrics_only)).status_code == 200


def test_token_list_never_shows_a_secret_and_the_database_holds_only_hashes(api: Server) -> None:
    secret = make_token(api.folder, "listed", "export:read")
    listing = run_cli("token", "list", cwd=api.folder, env=env_for(api.folder))
    assert listing.returncode == 0
    assert "listed" in listing.stdout and "export:read" in listing.stdout
    assert secret not in listing.stdout and secret[4:12] not in listing.stdout
    raw = (api.folder / "outbox.db").read_bytes()
    assert secret.encode() not in raw


def test_token_cli_refuses_bad_input_with_one_sentence(api: Server) -> None:
    env = env_for(api.folder)
    for args in (
        ["create", "--name", "x", "--scope", "flags:write"],
        ["create", "--name", "../etc", "--scope", "export:read"],
        ["create", "--name", "y", "--scope", "export:read", "--expires", "soon"],
        ["create", "--name", "ci-weekly", "--scope", "export:read"],  # taken
        ["revoke", "nobody"],
    ):
        result = run_cli("token", *args, cwd=api.folder, env=env)
        assert result.returncode == 2, (args, result.stdout)
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_token_in_the_query_string_is_refused_and_never_logged(api: Server, token: str) -> None:
    got = httpx.get(
        f"{api.url}/v1/export", params={**H1, "access_token": token}, headers=auth(token)
    )
    assert got.status_code == 400
    assert "Authorization header" in got.json()["detail"]
    assert token not in api.log()
    assert token not in got.text


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ({"start": "2026-13-01", "end": "2026-06-30"}, "malformed-date"),
        ({"start": "20260101", "end": "2026-06-30"}, "malformed-date"),
        ({"start": "2026-01-01"}, "missing-parameter"),
        ({"start": "2026-06-30", "end": "2026-01-01"}, "start-after-end"),
        ({"start": "1926-01-01", "end": "2026-01-01"}, "window-too-long"),
        ({"start": "9999-12-31", "end": "9999-12-31"}, "malformed-date"),
        ({**H1, "controls": "CC9.9"}, "unknown-controls"),
        ({**H1, "controls": "../../etc/passwd"}, "unknown-controls"),
        ({**H1, "controls": ","}, "unknown-controls"),
        ({"start": "２０２６-01-01", "end": "2026-06-30"}, "malformed-date"),  # noqa: RUF001
        ({"start": "2026-01-0\u0661", "end": "2026-06-30"}, "malformed-date"),
        ({"start": "🚀" * 250, "end": "2026-06-30"}, "parameter-too-long"),
        ({**H1, "window": "all"}, "unknown-parameter"),
    ],
)
def test_bad_input_is_a_400_problem(api: Server, token: str, params: dict, kind: str) -> None:
    got = httpx.get(f"{api.url}/v1/export", params=params, headers=auth(token))
    assert got.status_code == 400, got.text
    assert got.headers["content-type"] == "application/problem+json"
    body = got.json()
    assert body["type"] == f"urn:flagtrail:problem:{kind}"
    assert body["status"] == 400 and body["title"] and body["detail"]
    assert "Traceback" not in api.log()


def test_invalid_utf8_and_encoded_surrogates_in_the_url_are_400(api: Server, token: str) -> None:
    for raw in ("%ED%B3%BF%ED%B3%BF", "%FF%FE", "2026-01-01%00"):
        got = httpx.get(f"{api.url}/v1/export?start={raw}&end=2026-06-30", headers=auth(token))
        assert got.status_code == 400, (raw, got.text)


def test_a_repeated_parameter_is_refused(api: Server, token: str) -> None:
    got = httpx.get(
        f"{api.url}/v1/export?start=2026-01-01&end=2026-06-30&start=2025-01-01",
        headers=auth(token),
    )
    assert got.status_code == 400
    assert got.json()["type"].endswith("repeated-parameter")


def test_post_refuses_other_bodies(api: Server, token: str) -> None:
    url = f"{api.url}/v1/export"
    as_json = httpx.post(url, json=H1, headers=auth(token))
    assert as_json.status_code == 415
    huge = httpx.post(url, data={**H1, "controls": "C" * 20000}, headers=auth(token))
    assert huge.status_code == 413
    not_utf8 = httpx.post(
        url,
        content=b"start=\xff\xfe&end=2026-06-30",
        headers={**auth(token), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert not_utf8.status_code == 400


def test_no_route_can_write_and_unknown_paths_are_problems(api: Server, token: str) -> None:
    for method, path in [
        ("PUT", "/v1/export"),
        ("DELETE", "/v1/export"),
        ("POST", "/v1/record"),
        ("POST", "/v1/head"),
        ("PATCH", "/v1/package"),
        ("GET", "/v1/../../etc/passwd"),
    ]:
        got = httpx.request(method, f"{api.url}{path}", headers=auth(token), data=H1)
        assert got.status_code in (404, 405), (method, path, got.status_code)
        assert got.headers["content-type"] == "application/problem+json"
    # a 405 names every method the path takes (/v1/export is a GET and a POST route)
    refused = httpx.put(f"{api.url}/v1/export", headers=auth(token))
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, POST"
    assert httpx.post(f"{api.url}/v1/head").headers["allow"] == "GET"


def test_head_requests_stream_nothing_and_chain_no_receipt(api: Server, token: str) -> None:
    before = len(receipts(api.folder))
    got = httpx.head(f"{api.url}/v1/export", params=H1, headers=auth(token))
    assert got.status_code in (200, 405)
    assert got.content == b""
    assert len(receipts(api.folder)) == before


# -- receipts ---------------------------------------------------------------------------------
def test_every_pull_is_chained_as_evidence_exported_and_verify_still_passes(
    tmp_path: Path, rsa_keys: Path
) -> None:
    folder = chain_folder(tmp_path / "chain", rsa_keys, records=20)
    secret = make_token(folder, "auditor-acme", "export:read")
    with serve(folder) as server:
        got = httpx.post(
            f"{server.url}/v1/export", data={**H1, "controls": SEED_CONTROLS}, headers=auth(secret)
        )
        assert got.status_code == 200
    [receipt] = receipts(folder)
    meta = receipt["meta"]
    assert receipt["actor"] == "api-token:auditor-acme"
    assert receipt["soc2_controls"] == ["CC7.2"]
    assert meta["window"] == {"start": H1["start"], "end": H1["end"]}
    assert meta["controls"] == ["CC6.1", "CC6.6", "CC8.1"]
    assert meta["record_count"] == got.content.count(b"\n")
    last = json.loads(got.content.splitlines()[-1])
    assert meta["head"] == {"sequence": last["sequence"], "hash": last["hash"]}
    assert meta["outcome"] == "complete"
    # the relay chains it; an export of today's window holds it and verifies
    engine_url = f"sqlite:///{folder / 'outbox.db'}"
    from flagtrail.settings import make_engine

    engine = make_engine(engine_url)
    Outbox(engine, str(folder / "identities.toml"))
    relay = Relay(
        open_outbox_source(engine, "flag-audit"), open_log(f"sqlite:///{folder / 'log.db'}")
    )
    relay.resume()
    assert relay.drain() == 1
    today = date.today().isoformat()
    env = env_for(folder)
    result = run_cli(
        "export", "--start", "2026-01-01", "--end", today, "--out", "all", cwd=folder, env=env
    )
    assert result.returncode == 0, result.stderr
    exported = folder / "all" / f"flag-audit-soc2_2026-01-01_{today}.jsonl"
    actions = [json.loads(line)["action"] for line in exported.read_text().splitlines()]
    assert actions[-1] == "evidence_exported"
    verify = run_cli(
        "verify", str(exported), "--pubkey", "registered-public.pem", cwd=folder, env=env
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    scan = run_cli("gap", "scan", "--start", "2026-01-01", "--end", today, cwd=folder, env=env)
    assert scan.returncode == 0, scan.stdout + scan.stderr


def test_a_caller_cannot_write_an_evidence_exported_event(tmp_path: Path) -> None:
    from producers.errors import InvalidChange
    from producers.events import event_record, utc_now
    from tests.conftest import make_outbox

    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    from flagtrail.settings import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'o.db'}")
    outbox = make_outbox(engine, tmp_path)
    forged = event_record(
        event_id="x1",
        chain_id="flag-audit",
        recorded_at=utc_now(),
        action="evidence_exported",
        controls=["CC7.2"],
        actor="api-token:someone",
        meta={"token": "someone"},
    )
    with pytest.raises(InvalidChange), engine.begin() as conn:
        outbox.record_meta(conn, forged)


# -- package and head -------------------------------------------------------------------------
def test_package_is_the_signed_package_and_verifies_with_the_registered_key(
    api: Server, token: str, tmp_path: Path
) -> None:
    got = httpx.get(f"{api.url}/v1/package", params=H1, headers=auth(token))
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/gzip"
    stem = f"flag-audit-soc2_{H1['start']}_{H1['end']}"
    assert f'filename="{stem}.tar.gz"' in got.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(got.content), mode="r:gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    assert {
        f"{stem}.jsonl",
        f"{stem}.jsonl.sig",
        f"{stem}.manifest.json",
        f"{stem}.manifest.json.sig",
        f"{stem}.summary.txt",
        "audit-public.pem",
    } <= names
    assert (tmp_path / f"{stem}.jsonl").read_bytes() == cli_export(
        api.folder, H1["start"], H1["end"], "cli-package"
    )
    verify = run_cli(
        "verify",
        str(tmp_path / f"{stem}.jsonl"),
        "--pubkey",
        str(api.folder / "registered-public.pem"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not list(Path(api.folder).glob("flagtrail-package-*"))


def test_head_is_the_logs_tail(api: Server, token: str) -> None:
    got = httpx.get(f"{api.url}/v1/head", headers=auth(token))
    assert got.status_code == 200
    with open_log(f"sqlite:///{api.folder / 'log.db'}", read_only=True) as log:
        tail = log.tail()
    assert tail is not None
    assert got.json() == {
        "chain_id": "flag-audit",
        "sequence": tail.sequence,
        "hash": tail.record_hash,
        "timestamp_utc": tail.timestamp_utc,
    }


def test_metrics_and_openapi(api: Server) -> None:
    prom = make_token(api.folder, "scraper", "metrics:read")
    text = httpx.get(f"{api.url}/metrics", headers=auth(prom)).text
    assert "flagtrail_api_requests_total" in text
    assert httpx.get(f"{api.url}/metrics").status_code == 401
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/export", "/v1/package", "/v1/head", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "application/x-www-form-urlencoded" in json.dumps(spec["paths"]["/v1/export"]["post"])
    # read-only by construction: nothing but GET, and the seed's form POST that reads too
    methods = {(path, m) for path, ops in spec["paths"].items() for m in ops}
    assert {m for _, m in methods} <= {"get", "post"}
    assert {path for path, m in methods if m == "post"} == {"/v1/export"}


# -- rate limit ---------------------------------------------------------------------------------
def test_a_token_over_its_rate_gets_429_with_retry_after(tmp_path: Path, rsa_keys: Path) -> None:
    folder = chain_folder(tmp_path / "rl", rsa_keys, records=3)
    busy, other = (
        make_token(folder, "busy", "export:read"),
        make_token(folder, "other", "export:read"),
    )
    with serve(folder, "--rate-limit", "3") as server:
        codes = [
            httpx.get(f"{server.url}/v1/head", headers=auth(busy)).status_code for _ in range(5)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        limited = httpx.get(f"{server.url}/v1/head", headers=auth(busy))
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["type"].endswith("rate-limited")
        assert httpx.get(f"{server.url}/v1/head", headers=auth(other)).status_code == 200
        # guessing tokens from one address is throttled too
        guesses = [
            httpx.get(f"{server.url}/v1/head", headers=auth(f"ftk_guess{n}")).status_code
            for n in range(5)
        ]
        assert guesses[:3] == [401, 401, 401] and guesses[3:] == [429, 429]


# -- TLS ----------------------------------------------------------------------------------------
def make_ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate for 127.0.0.1 signed by it."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("flagtrail test CA"))
        .issuer_name(name("flagtrail test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_https_with_a_ca_the_client_trusts(tmp_path: Path, rsa_keys: Path) -> None:
    folder = chain_folder(tmp_path / "tls", rsa_keys, records=5)
    ca, cert, key = make_ca_and_cert(tmp_path)
    secret = make_token(folder, "tls-client", "export:read")
    expected = cli_export(folder, H1["start"], H1["end"], "cli")
    import ssl

    trusting = ssl.create_default_context(cafile=str(ca))
    with serve(
        folder, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https", verify=trusting
    ) as server:
        got = httpx.post(f"{server.url}/v1/export", data=H1, headers=auth(secret), verify=trusting)
        assert got.status_code == 200 and got.content == expected
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"{server.url}/healthz")
        if shutil.which("curl"):
            result = subprocess.run(
                [
                    "curl",
                    "-sf",
                    f"{server.url}/v1/export",
                    "-H",
                    f"Authorization: Bearer {secret}",
                    "--data-urlencode",
                    f"start={H1['start']}",
                    "--data-urlencode",
                    f"end={H1['end']}",
                ],
                capture_output=True,
                env={"CURL_CA_BUNDLE": str(ca), "PATH": "/usr/bin:/bin"},
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == expected


def test_serve_refuses_a_bad_tls_pair_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    result = run_cli(
        "serve",
        "--port",
        "1",
        "--tls-cert",
        "cert.pem",
        "--tls-key",
        "cert.pem",
        cwd=tmp_path,
        env=env_for(tmp_path),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--tls-cert" in result.stderr
    result = run_cli("serve", "--tls-cert", "cert.pem", cwd=tmp_path, env=env_for(tmp_path))
    assert result.returncode == 2 and "go together" in result.stderr


# -- streams that must not look complete ---------------------------------------------------------
def test_a_log_altered_mid_window_ends_the_stream_unfinished(
    tmp_path: Path, rsa_keys: Path
) -> None:
    folder = chain_folder(tmp_path / "tampered", rsa_keys, records=40)
    secret = make_token(folder, "auditor", "export:read")
    with sqlite3.connect(folder / "log.db") as db:  # an operator edits a record (no trigger)
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        db.execute(
            # every record has an action (names are pseudonyms on a new chain)
            'UPDATE audit_log SET line = replace(line, \'"action":"\', \'"action":"x\') '
            "WHERE sequence = 30"
        )
    with serve(folder) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{server.url}/v1/export", params=H1, headers=auth(secret))
        if shutil.which("curl"):
            result = subprocess.run(
                [
                    "curl",
                    "-sf",
                    f"{server.url}/v1/export",
                    "-H",
                    f"Authorization: Bearer {secret}",
                    "--data-urlencode",
                    f"start={H1['start']}",
                    "--data-urlencode",
                    f"end={H1['end']}",
                    "-o",
                    str(tmp_path / "out.jsonl"),
                ],
                capture_output=True,
            )
            assert result.returncode != 0
        assert "Traceback" not in server.log()
    [receipt, *_] = receipts(folder)
    assert receipt["meta"]["outcome"] == "aborted"


def test_a_token_revoked_mid_stream_stops_the_stream(tmp_path: Path, rsa_keys: Path) -> None:
    from dataclasses import replace

    from flagtrail.api.config import ApiConfig
    from flagtrail.api.context import ApiContext
    from flagtrail.api.params import Window
    from flagtrail.api.routes.export import ExportPull
    from flagtrail.api.streaming import StreamAborted
    from flagtrail.settings import Settings

    folder = chain_folder(tmp_path / "revoked", rsa_keys, records=30)
    settings = Settings.resolve(
        f"sqlite:///{folder / 'outbox.db'}",
        f"sqlite:///{folder / 'log.db'}",
        identities=str(folder / "identities.toml"),
    )
    config = replace(ApiConfig(settings), chunk_bytes=1, token_recheck_s=0)
    ctx = ApiContext.build(config)
    make_token(folder, "leaky", "export:read")
    [info] = [t for t in ctx.tokens.list() if t.name == "leaky"]
    pull = ExportPull(ctx, info, Window(date(2026, 1, 1), date(2026, 6, 30), None))
    chunks = pull.chunks()
    assert next(chunks).startswith(b'{"prev_hash"')
    assert run_cli("token", "revoke", "leaky", cwd=folder, env=env_for(folder)).returncode == 0
    with pytest.raises(StreamAborted, match="revoked"):
        next(chunks)
    pull.end(complete=False, client_left=False)
    [receipt] = receipts(folder)
    assert receipt["meta"]["outcome"] == "aborted" and receipt["meta"]["record_count"] == 2


def test_concurrent_first_pulls_all_complete_with_their_receipts(
    tmp_path: Path, rsa_keys: Path
) -> None:
    """A fresh outbox database (only the token table): the first pulls arrive together."""
    from concurrent.futures import ThreadPoolExecutor

    folder = chain_folder(tmp_path / "first", rsa_keys, records=10)
    (folder / "outbox.db").unlink()
    for extra in ("outbox.db-wal", "outbox.db-shm"):
        (folder / extra).unlink(missing_ok=True)
    secret = make_token(folder, "many", "export:read")
    with serve(folder) as server:

        def pull(_: int) -> int:
            got = httpx.get(f"{server.url}/v1/export", params=H1, headers=auth(secret))
            return got.status_code if got.content.count(b"\n") == 10 else -1

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(pull, range(12)))
        assert codes == [200] * 12
        assert "receipt_failed" not in server.log()
    assert len(receipts(folder)) == 12
