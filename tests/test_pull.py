"""`flagtrail pull` when the evidence API lies: every lie a server (or whoever stands in
for it) could tell, and what pull must do about it. The package served is a real export
of a real chain (record, relay --once, export); the server is hostile on purpose."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.hostile_server import cut_short, hostile_server, send
from tests.test_cli import RECORD
from tests.tls import TestCA, make_ca

TODAY = datetime.now(UTC).date()
# the window ends tomorrow: records made after midnight (a run that crosses it) stay in
START, END = (TODAY - timedelta(days=7)).isoformat(), (TODAY + timedelta(days=1)).isoformat()
STEM = f"flag-audit-soc2_{START}_{END}"
TOKEN = "ft_test_token_not_a_secret"


@dataclass(frozen=True)
class Chain:
    root: Path
    keys: Path  # the registered key pair
    package: dict[str, bytes]  # the real export's files, by name
    other_package: dict[str, bytes]  # the same window signed by a key nobody registered


def _export(root: Path, keys: Path, out: str) -> dict[str, bytes]:
    exported = run_cli(
        "export",
        "--start",
        START,
        "--end",
        END,
        "--out",
        out,
        "--signing-key",
        str(keys / "audit-private.pem"),
        cwd=root,
    )
    assert exported.returncode == 0, exported.stderr
    return {p.name: p.read_bytes() for p in sorted((root / out).iterdir())}


def in_folder(root: Path) -> dict[str, str]:
    """The chain's privacy keys stay in its own folder, whichever test runs a command
    there (the autouse fixture points them at each test's folder)."""
    return {
        f"FLAGTRAIL_{k.upper()}_KEY_PATH": str(root / f"{k}.key") for k in ("pseudonym", "vault")
    }


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    from producers.identity import SAMPLE_DIRECTORY

    root = tmp_path_factory.mktemp("chain")
    (root / "identities.toml").write_text(SAMPLE_DIRECTORY)
    for folder in ("keys", "other-keys"):
        assert run_cli("keygen", "--out", folder, cwd=root, env=in_folder(root)).returncode == 0
    assert (
        run_cli(*RECORD, "--approver", "bob@example.com", cwd=root, env=in_folder(root)).returncode
        == 0
    )
    assert (
        run_cli(
            *RECORD, "--approver", "alice@example.com", cwd=root, env=in_folder(root)
        ).returncode
        == 3
    )
    relayed = run_cli("relay", "--once", cwd=root, env=in_folder(root))
    assert relayed.returncode == 0 and "relayed 2 events" in relayed.stdout
    return Chain(
        root,
        root / "keys",
        _export(root, root / "keys", "export"),
        _export(root, root / "other-keys", "other-export"),
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def archive(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    """A tar.gz of ``files`` (flat, as /v1/package serves them) plus any crafted members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buffer.getvalue()


def pull(
    url: str, out: Path, chain: Chain, *args: str, ca: TestCA | None = None, **env: str
) -> tuple[int, str, str]:
    environment = {"AUDIT_TOKEN": TOKEN, **env}
    if ca is not None:
        environment["CURL_CA_BUNDLE"] = str(ca.ca_cert)
    result = run_cli(
        "pull",
        "--api",
        url,
        "--start",
        START,
        "--end",
        END,
        "--out",
        str(out),
        "--pubkey",
        str(chain.keys / "audit-public.pem"),
        *args,
        env=environment,
    )
    return result.returncode, result.stdout, result.stderr


def one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_good_package_lands_whole_and_verified(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, out, err = pull(server.url, tmp_path / "ev", chain, ca=ca)
    assert code == 0, out + err
    assert "Chain intact: 2 records" in out
    assert "Signature: valid, signed by a trusted key" in out
    ev = tmp_path / "ev"
    assert {p.name for p in ev.iterdir()} == {*chain.package, f"{STEM}.tar.gz"}
    for name, data in chain.package.items():
        assert (ev / name).read_bytes() == data
    path, headers = server.requests[0]
    assert path == f"/v1/package?start={START}&end={END}"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert err == ""  # not a terminal: no progress bar in CI logs


def test_the_seed_url_is_accepted_as_the_api(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    """AUDIT_API_URL as the seed's script takes it (…/v1/export) works for pull too."""
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, out, err = pull(f"{server.url}/v1/export", tmp_path, chain, ca=ca)
    assert code == 0, out + err
    assert server.requests[0][0].startswith("/v1/package?")


def test_a_package_signed_by_another_key_is_not_trusted(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    with hostile_server(ca, send(200, archive(chain.other_package))) as server:
        code, out, _ = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 4, out
    assert "Signature: signed by an untrusted key" in out
    assert_set_aside(tmp_path, out)


def assert_set_aside(out_dir: Path, stdout: str) -> None:
    """A package that failed is moved away from the evidence's names, kept whole."""
    assert not (out_dir / f"{STEM}.jsonl").exists() and not (out_dir / f"{STEM}.tar.gz").exists()
    (aside,) = out_dir.glob(f"{STEM}.rejected-*")
    assert f"Set aside     : {aside} (NOT evidence)" in stdout
    assert {f"{STEM}.jsonl", f"{STEM}.tar.gz", f"{STEM}.manifest.json"} <= {
        p.name for p in aside.iterdir()
    }


def test_a_tampered_package_fails(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    files = dict(chain.package)
    jsonl = files[f"{STEM}.jsonl"]
    files[f"{STEM}.jsonl"] = jsonl.replace(b'"action":"', b'"action":"x', 1)
    assert files[f"{STEM}.jsonl"] != jsonl
    with hostile_server(ca, send(200, archive(files))) as server:
        code, out, _ = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 1, out
    assert "FAIL" in out
    assert_set_aside(tmp_path, out)


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member(f"../{STEM}.summary.txt"),
        _member(f"/tmp/{STEM}.summary.txt"),
        _member(f"sub/../../{STEM}.summary.txt"),
        _member("evil.sh"),
        _member(f"{STEM}.link.jsonl", tarfile.SYMTYPE, link="/etc/passwd"),
        _member(f"{STEM}.link.jsonl", tarfile.LNKTYPE, link=f"{STEM}.jsonl"),
        _member(f"{STEM}.link.jsonl", tarfile.FIFOTYPE),
        _member("flag-audit-soc2_2020-01-01_2020-01-02.jsonl"),  # another window
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "unknown", "symlink", "hardlink", "fifo", "window"],
)
def test_archive_members_outside_the_package_are_refused(
    chain: Chain, ca: TestCA, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    out = tmp_path / "deep" / "ev"
    with hostile_server(ca, send(200, archive(chain.package, [member]))) as server:
        code, _, err = pull(server.url, out, chain, ca=ca)
    assert code == 1, err
    assert "package archive" in one_sentence(err)
    # nothing was written anywhere but the kept download
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f"deep/ev/{STEM}.tar.gz.partial"}


def test_a_symlink_planted_in_the_out_folder_is_not_followed(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    """A file the package brings never writes through a link someone left in the folder."""
    out = tmp_path / "ev"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / f"{STEM}.summary.txt").symlink_to(victim)
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, _, err = pull(server.url, out, chain, ca=ca)
    assert code == 2 and "already exists" in one_sentence(err)
    assert victim.read_text() == "keep me"
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, _, err = pull(server.url, out, chain, "--force", ca=ca)
    assert code == 0, err
    assert victim.read_text() == "keep me"  # the link was replaced, not written through
    assert not (out / f"{STEM}.summary.txt").is_symlink()


def test_a_huge_archive_is_refused_by_its_announced_length(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    body = archive(chain.package)
    with hostile_server(ca, send(200, body)) as server:
        code, _, err = pull(server.url, tmp_path, chain, "--max-bytes", "1000", ca=ca)
    assert code == 2 and "--max-bytes" in one_sentence(err)


def test_a_gzip_bomb_stops_at_the_unpacked_budget(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    """50 MB of zeros packs to ~50 kB: the download is small, the unpacking is refused."""
    files = dict(chain.package)
    files[f"{STEM}.summary.txt"] = bytes(50 << 20)
    body = archive(files)
    assert len(body) < 1 << 20
    with hostile_server(ca, send(200, body)) as server:
        code, _, err = pull(server.url, tmp_path, chain, "--max-bytes", str(2 << 20), ca=ca)
    assert code == 1 and "more than" in one_sentence(err)
    assert not (tmp_path / f"{STEM}.summary.txt").exists()


def test_a_redirect_to_plain_http_is_not_followed(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    with hostile_server(None, send(200, archive(chain.package))) as plain:
        answer = send(302, b"", {"Location": f"{plain.url}/v1/package"})
        with hostile_server(ca, answer) as server:
            code, _, err = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 2 and "redirect" in one_sentence(err)
    assert plain.requests == []  # the token never went to the plain-http server


def test_plain_http_to_another_host_is_refused_before_any_request(
    chain: Chain, tmp_path: Path
) -> None:
    code, _, err = pull("http://audit-api.example", tmp_path, chain)
    assert code == 2 and "https" in one_sentence(err)


def test_a_download_cut_short_leaves_only_the_partial(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    body = archive(chain.package)
    with hostile_server(ca, cut_short(body, len(body) // 2)) as server:
        code, _, err = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 5, err
    assert "run the pull again" in one_sentence(err)
    assert [p.name for p in tmp_path.iterdir()] == [f"{STEM}.tar.gz.partial"]
    # the next pull, complete, replaces the partial file
    with hostile_server(ca, send(200, body)) as server:
        code, out, err = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 0, out + err
    assert not (tmp_path / f"{STEM}.tar.gz.partial").exists()


def test_a_truncated_archive_without_a_length_is_caught_unpacking(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    """No Content-Length and a closed connection look complete to HTTP: gzip knows better."""
    body = archive(chain.package)
    half = body[: len(body) // 2]
    answer = send(200, half, {"Connection": "close", "Content-Length": str(len(half))})
    with hostile_server(ca, answer) as server:
        code, _, err = pull(server.url, tmp_path, chain, ca=ca)
    assert code == 1 and "damaged or truncated" in one_sentence(err)
    assert [p.name for p in tmp_path.iterdir()] == [f"{STEM}.tar.gz.partial"]


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (401, 7, "has no valid token"),
        (403, 7, "without the scope"),
        (429, 5, "try again after 30 s"),
        (400, 2, "refused the request (400)"),
        (503, 5, "failed (503)"),
    ],
)
def test_refusals_are_one_sentence_and_a_distinct_exit_code(
    chain: Chain, ca: TestCA, tmp_path: Path, status: int, code: int, words: str
) -> None:
    problem = (
        b'{"type":"about:blank","title":"Refused","status":%d,"detail":"because \\u001b[31mred"}'
        % status
    )
    headers = {"Content-Type": "application/problem+json", "Retry-After": "30"}
    with hostile_server(ca, send(status, problem, headers)) as server:
        got, _, err = pull(server.url, tmp_path, chain, ca=ca)
    assert got == code, err
    sentence = one_sentence(err)
    assert words in sentence and "Refused: because" in sentence
    assert "\x1b" not in err  # the server cannot write escape sequences to our terminal
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_retriable(chain: Chain, tmp_path: Path) -> None:
    from tests.conftest import free_port

    code, _, err = pull(f"https://127.0.0.1:{free_port()}", tmp_path, chain)
    assert code == 5 and "cannot reach" in one_sentence(err)


def test_a_certificate_from_an_unknown_ca_is_refused(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, _, err = pull(server.url, tmp_path, chain)  # no CURL_CA_BUNDLE
    assert code == 2 and "not trusted" in one_sentence(err)
    assert server.requests == []


def test_a_complete_package_is_not_overwritten_without_force(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        assert pull(server.url, tmp_path, chain, ca=ca)[0] == 0
        code, _, err = pull(server.url, tmp_path, chain, ca=ca)
        assert code == 2 and "--force" in one_sentence(err)
        assert len(server.requests) == 1  # refused before asking the server
        assert pull(server.url, tmp_path, chain, "--force", ca=ca)[0] == 0


def test_no_registered_key_no_pull(chain: Chain, tmp_path: Path) -> None:
    result = run_cli(
        "pull", "--api", "https://127.0.0.1:9", "--start", START, "--end", END,
        env={"AUDIT_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 2 and "registered key" in one_sentence(result.stderr)


def test_the_package_own_key_is_not_a_registered_key(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    """Pointing --pubkey at the key file a package ships (a careless CI job trusting the
    audit-public.pem an earlier pull left) proves nothing: the next package replaces it."""
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        assert pull(server.url, tmp_path, chain, ca=ca)[0] == 0
    shipped = tmp_path / "audit-public.pem"
    with hostile_server(ca, send(200, archive(chain.other_package))) as server:
        result = run_cli(
            "pull", "--api", server.url, "--start", START, "--end", END, "--out", str(tmp_path),
            "--pubkey", str(shipped), "--force",
            env={"AUDIT_TOKEN": TOKEN, "CURL_CA_BUNDLE": str(ca.ca_cert)},
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    sentence = one_sentence(result.stderr)
    assert "shipped inside the package" in sentence and "set aside in" in sentence
    assert not (tmp_path / f"{STEM}.jsonl").exists()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_shows_bytes_and_records_on_a_terminal(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    import subprocess

    from tests.conftest import FLAGTRAIL

    leader, follower = os.openpty()
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        process = subprocess.run(
            [*FLAGTRAIL, "pull", "--api", server.url, "--start", START, "--end", END,
             "--out", str(tmp_path), "--pubkey", str(chain.keys / "audit-public.pem")],
            env={**os.environ, "AUDIT_TOKEN": TOKEN, "CURL_CA_BUNDLE": str(ca.ca_cert)},
            stderr=follower, stdout=subprocess.PIPE, timeout=120,
        )  # fmt: skip
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.returncode == 0
    assert b"bytes" in shown and b"pulled" in shown and b"2 records" in shown


def _second_chain(chain: Chain, tmp_path: Path, same_log: bool) -> dict[str, bytes]:
    """A later package of the same window: the same chain grown by one change, or a
    rewritten chain (a fresh log with the same changes, signed by the same key)."""
    root = chain.root if same_log else tmp_path / "rewritten"
    if not same_log:
        shutil.copytree(
            chain.root, root, ignore=shutil.ignore_patterns("*.db*", "*export*", "later-*")
        )
        assert (
            run_cli(
                *RECORD, "--approver", "bob@example.com", cwd=root, env=in_folder(root)
            ).returncode
            == 0
        )
    assert (
        run_cli(*RECORD, "--approver", "bob@example.com", cwd=root, env=in_folder(root)).returncode
        == 0
    )
    assert run_cli("relay", "--once", cwd=root, env=in_folder(root)).returncode == 0
    out = f"later-{tmp_path.name}"
    return _export(root, chain.keys, out)


def test_previous_continuity_is_checked_from_the_chain(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        assert pull(server.url, first, chain, ca=ca)[0] == 0
    later = _second_chain(chain, tmp_path, same_log=True)
    assert later[f"{STEM}.jsonl"].startswith(chain.package[f"{STEM}.jsonl"])
    previous = str(first / f"{STEM}.manifest.json")
    with hostile_server(ca, send(200, archive(later))) as server:
        code, out, err = pull(server.url, tmp_path / "second", chain, "--previous", previous, ca=ca)
    assert code == 0, out + err
    assert f"Previous export: continues {STEM}.manifest.json (sequence 2" in out


def test_a_log_rewritten_between_two_pulls_fails_continuity(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        assert pull(server.url, first, chain, ca=ca)[0] == 0
    rewritten = _second_chain(chain, tmp_path, same_log=False)
    previous = str(first / f"{STEM}.manifest.json")
    with hostile_server(ca, send(200, archive(rewritten))) as server:
        code, _, err = pull(server.url, tmp_path / "second", chain, "--previous", previous, ca=ca)
    assert code == 1
    assert "the log was rewritten between the two pulls" in one_sentence(err)


def test_a_previous_manifest_signed_by_another_key_is_refused(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    with hostile_server(ca, send(200, archive(chain.other_package))) as server:
        assert pull(server.url, first, chain, ca=ca)[0] == 4
    (previous,) = (str(p) for p in first.glob(f"*.rejected-*/{STEM}.manifest.json"))
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, _, err = pull(server.url, tmp_path / "second", chain, "--previous", previous, ca=ca)
    assert code == 1 and "registered key" in one_sentence(err)


def test_a_stale_or_replayed_package_is_refused(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    """A genuine package, signed and intact, but generated before this request: a cache or
    an attacker replaying it would hide every change since."""
    import time

    time.sleep(2.1)  # the module's package is now over two seconds old
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, _, err = pull(server.url, tmp_path, chain, "--max-age", "2", ca=ca)
        assert code == 1
        assert "a stale or replayed package" in one_sentence(err)
        assert not (tmp_path / f"{STEM}.jsonl").exists()  # set aside
        code, out, err = pull(server.url, tmp_path / "b", chain, "--max-age", "3600", ca=ca)
    assert code == 0, out + err
    assert "Freshness: generated" in out


def test_links_planted_under_the_working_names_are_not_followed(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    """Whoever can write the out folder plants the .partial and staging names as links to
    files and folders elsewhere: pull replaces the links and touches nothing they point at."""
    out, victim, folder = tmp_path / "ev", tmp_path / "victim.txt", tmp_path / "victim-dir"
    out.mkdir()
    folder.mkdir()
    victim.write_text("keep me")
    (folder / "keep.txt").write_text("keep me too")
    (out / f"{STEM}.tar.gz.partial").symlink_to(victim)
    (out / f".{STEM}.tar.gz.partial.unpack").symlink_to(folder)
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        code, out_text, err = pull(server.url, out, chain, ca=ca)
    assert code == 0, out_text + err
    assert victim.read_text() == "keep me"
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("how", ["--cacert", "SSL_CERT_FILE"])
def test_the_ca_can_come_from_cacert_or_ssl_cert_file(
    chain: Chain, ca: TestCA, tmp_path: Path, how: str
) -> None:
    with hostile_server(ca, send(200, archive(chain.package))) as server:
        if how == "--cacert":
            code, out, err = pull(server.url, tmp_path, chain, "--cacert", str(ca.ca_cert))
        else:
            code, out, err = pull(
                server.url, tmp_path, chain, SSL_CERT_FILE=str(ca.ca_cert), CURL_CA_BUNDLE=""
            )
    assert code == 0, out + err


@pytest.mark.parametrize("how", ["--key-fingerprint", "FLAGTRAIL_TRUSTED_KEYS"])
def test_the_registered_key_by_fingerprint_or_trust_file(
    chain: Chain, ca: TestCA, tmp_path: Path, how: str
) -> None:
    """Trust by fingerprint: the registered key's, yes; another key's package, no (4)."""
    from relay.signing import fingerprint, load_public_key

    mark = fingerprint(load_public_key(chain.keys / "audit-public.pem"))
    trust_file = tmp_path / "trusted.txt"
    trust_file.write_text(f"{mark} the registered key\n")
    args = ["--key-fingerprint", mark] if how == "--key-fingerprint" else []
    env = {"FLAGTRAIL_TRUSTED_KEYS": str(trust_file)} if how != "--key-fingerprint" else {}
    for package, expected, out in ((chain.package, 0, "good"), (chain.other_package, 4, "other")):
        with hostile_server(ca, send(200, archive(package))) as server:
            result = run_cli(
                "pull", "--api", server.url, "--start", START, "--end", END,
                "--out", str(tmp_path / out), *args,
                env={"AUDIT_TOKEN": TOKEN, "CURL_CA_BUNDLE": str(ca.ca_cert), **env},
            )  # fmt: skip
        assert result.returncode == expected, result.stdout + result.stderr


def test_a_body_without_a_length_stops_at_the_budget(
    chain: Chain, ca: TestCA, tmp_path: Path
) -> None:
    """No Content-Length to refuse up front: the stream is cut off at --max-bytes."""

    def endless(handler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        for _ in range(64):
            handler.wfile.write(bytes(64 * 1024))

    with hostile_server(ca, endless) as server:
        code, _, err = pull(server.url, tmp_path, chain, "--max-bytes", str(1 << 20), ca=ca)
    assert code == 2 and "grew past --max-bytes" in one_sentence(err)
    assert (tmp_path / f"{STEM}.tar.gz.partial").stat().st_size <= 1 << 20


def test_a_server_that_never_answers_times_out(chain: Chain, ca: TestCA, tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    with hostile_server(ca, lambda handler: release.wait(30)) as server:
        code, _, err = pull(server.url, tmp_path, chain, "--timeout", "1", ca=ca)
        release.set()
    assert code == 5 and "did not answer within 1 s" in one_sentence(err)


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--start", END, "--end", START], {}, "is after --end"),
        ([], {"AUDIT_TOKEN": ""}, "no token"),
        (["--api", "ftp://x"], {}, "not an https:// URL"),
    ],
    ids=["start-after-end", "no-token", "not-https"],
)
def test_usage_errors_before_any_request(
    chain: Chain, tmp_path: Path, args: list[str], env: dict[str, str], words: str
) -> None:
    window = [] if "--start" in args else ["--start", START, "--end", END]
    api = [] if "--api" in args else ["--api", "https://127.0.0.1:9"]
    result = run_cli(
        "pull", *api, *window, *args, "--out", str(tmp_path),
        "--pubkey", str(chain.keys / "audit-public.pem"), env={"AUDIT_TOKEN": TOKEN, **env},
    )  # fmt: skip
    assert result.returncode == 2 and words in one_sentence(result.stderr)
    assert list(tmp_path.iterdir()) == []
