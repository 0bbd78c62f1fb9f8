"""Pseudonymous identifiers, the vault, resolve and erase: what they promise and who may lie.

Attackers written down here: an operator with database access swapping vault rows
between pseudonyms; a host with a wrong or missing key file; a typist spelling a
name in another Unicode form; a caller naming a raw person in a signed statement
on a pseudonymous chain; an eraser whose reason names the person erased.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, text, update

from producers import InvalidChange, Outbox, PolicyError
from producers.errors import ConfigError, EvidenceError
from producers.identity_ops import erase, resolve
from producers.pseudonyms import create_key, is_pseudonym, pseudonym
from producers.schema import outbox as outbox_table
from producers.vault import privacy_chains, vault
from relay.verify import verify_export
from tests.conftest import run_cli
from tests.contracts import good_change
from tests.pseudonymised import alias
from tests.test_operations import export_today, log_records, relay_once, seed_snippet

JOSE_NFC = unicodedata.normalize("NFC", "José@example.com")
JOSE_NFD = unicodedata.normalize("NFD", "José@example.com")
DIRECTORY_EXTRA = f"""
[identities."{JOSE_NFC}"]
roles = ["release-manager"]
"""


@pytest.fixture
def outbox(sqlite_engine: Engine, workdir: Path) -> Outbox:
    return Outbox(sqlite_engine, str(workdir / "identities.toml"))


def payloads(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_table.c.payload).order_by(outbox_table.c.id))
        return [json.loads(r.payload) for r in rows]


def database_text(workdir: Path) -> bytes:
    """Every byte of the outbox database and its WAL: where a name could hide."""
    return b"".join(p.read_bytes() for p in workdir.iterdir() if p.name.startswith("outbox.db"))


# -- pseudonyms on a new chain ---------------------------------------------------------------
def test_a_new_chain_stores_pseudonyms_and_the_policy_judged_the_identities(
    outbox: Outbox, workdir: Path
) -> None:
    with outbox.engine.begin() as conn:
        outbox.record(conn, good_change(1, approver="bob"))  # an alias of bob@example.com
    (record,) = payloads(outbox.engine)
    assert record["actor"] == alias(workdir, "alice@example.com")
    assert record["approver"] == alias(workdir, "bob@example.com")  # the alias resolved first
    assert "example.com" not in json.dumps(record)
    # the policy still sees people: alice approving herself is blocked, and the
    # rejection names her by pseudonym, in its fields and in its message
    with pytest.raises(PolicyError, match="distinct approver"), outbox.engine.begin() as conn:
        outbox.record(conn, good_change(2, approver="ALICE@example.com"))
    with (
        pytest.raises(PolicyError, match=r"'mallory@evil\.test' is not a known"),
        outbox.engine.begin() as conn,
    ):
        outbox.record(conn, good_change(3, actor="mallory@evil.test"))
    _, self_approved, unknown = payloads(outbox.engine)
    assert self_approved["action"] == "rejected"
    assert self_approved["actor"] == alias(workdir, "alice@example.com")
    assert unknown["actor"] == alias(workdir, "mallory@evil.test")
    assert alias(workdir, "mallory@evil.test") in unknown["meta"]["message"]
    for stored in (self_approved, unknown):
        assert "example.com" not in json.dumps(stored) and "evil.test" not in json.dumps(stored)
    keys = [workdir / "pseudonym.key", workdir / "vault.key"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)


def test_the_vault_gives_the_names_back_and_never_stores_them_in_clear(
    outbox: Outbox, workdir: Path
) -> None:
    with outbox.engine.begin() as conn:
        outbox.record(conn, good_change(1))
    with outbox.engine.connect() as conn:
        sealed = b"".join(bytes(r.ciphertext) for r in conn.execute(select(vault)))
    assert b"alice" not in sealed and b"alice" not in database_text(workdir)
    found = resolve(outbox, "bob@example.com", [alias(workdir, "alice@example.com")])
    assert [r.identity for r in found.values()] == ["alice@example.com"]


def test_nfc_and_nfd_spellings_of_one_name_are_one_pseudonym(
    sqlite_engine: Engine, workdir: Path
) -> None:
    (workdir / "identities.toml").write_text(
        (workdir / "identities.toml").read_text() + DIRECTORY_EXTRA
    )
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    for n, actor in enumerate([JOSE_NFC, JOSE_NFD]):
        with sqlite_engine.begin() as conn:
            outbox.record(conn, good_change(n, actor=actor))
    first, second = payloads(sqlite_engine)
    assert first["actor"] == second["actor"] == alias(workdir, JOSE_NFC)
    key = outbox.privacy.pseudonym_key.material
    assert pseudonym(key, JOSE_NFC) == pseudonym(key, JOSE_NFD)
    # case is the provider's business, not the pseudonym's (an OIDC sub is case-sensitive)
    assert pseudonym(key, "Alice") != pseudonym(key, "alice")
    found = resolve(outbox, "bob@example.com", [first["actor"]])
    assert found[first["actor"]].identity == JOSE_NFC


def test_odd_unicode_identities(sqlite_engine: Engine, workdir: Path) -> None:
    (workdir / "identities.toml").write_text(
        (workdir / "identities.toml").read_text()
        + '\n[identities."\U0001f680-ops@example.com"]\nroles = ["release-manager"]\n'
    )
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        # full-width letters: the directory's NFKC matching makes them alice's alias
        outbox.record(conn, good_change(1, actor="\uff41\uff4c\uff49\uff43\uff45@example.com"))
        outbox.record(conn, good_change(2, actor="\U0001f680-ops@example.com"))
    fullwidth, rocket = payloads(sqlite_engine)
    assert fullwidth["actor"] == alias(workdir, "alice@example.com")
    found = resolve(outbox, "bob", [rocket["actor"]])
    assert found[rocket["actor"]].identity == "\U0001f680-ops@example.com"
    stored = len(payloads(sqlite_engine))  # the two changes and the resolve
    with pytest.raises(InvalidChange, match="lone surrogate"), sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(3, actor="eve\udcff@example.com"))
    assert len(payloads(sqlite_engine)) == stored
    # undecodable bytes on a command line arrive as lone surrogates: one sentence, exit 2
    result = run_cli(
        "identity", "erase", "eve\udcff", "--reason", "DSR-1", "--actor", "bob", cwd=workdir,
        env={"PYTHONIOENCODING": "utf-8:surrogateescape"},
    )  # fmt: skip
    assert result.returncode == 2 and "not valid Unicode" in result.stderr, result.stderr


# -- which chains, and the key files ----------------------------------------------------------
def test_an_existing_chain_keeps_names_and_the_decision_is_durable(
    sqlite_engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "off")
    legacy = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        legacy.record(conn, good_change(1))
    # as a database made before pseudonyms existed: records, and no decision anywhere
    with sqlite_engine.begin() as conn:
        conn.execute(delete(privacy_chains))
    monkeypatch.delenv("FLAGTRAIL_PSEUDONYMS")
    upgraded = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        upgraded.record(conn, good_change(2))
    assert [r["actor"] for r in payloads(sqlite_engine)] == ["alice@example.com"] * 2
    assert not (workdir / "pseudonym.key").exists()  # never made for a plain chain
    # a pseudonymous chain stays pseudonymous after its outbox rows are purged
    other = Outbox(sqlite_engine, str(workdir / "identities.toml"), chain_id="fresh")
    with sqlite_engine.begin() as conn:
        other.record(conn, good_change(3))
        conn.execute(delete(outbox_table).where(outbox_table.c.chain_id == "fresh"))
    again = Outbox(sqlite_engine, str(workdir / "identities.toml"), chain_id="fresh")
    with sqlite_engine.begin() as conn:
        again.record(conn, good_change(4))
    assert is_pseudonym(payloads(sqlite_engine)[-1]["actor"])


def test_pseudonyms_off_cannot_put_names_into_a_pseudonymous_chain(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "off")
    with pytest.raises(ConfigError, match="stores pseudonyms"), sqlite_engine.begin() as conn:
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(2))
    assert len(payloads(sqlite_engine)) == 1
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "sometimes")
    with pytest.raises(ConfigError, match="auto, on or off"):
        Outbox(sqlite_engine, str(workdir / "identities.toml"))


def test_pseudonyms_on_switches_a_plain_chain(
    sqlite_engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "off")
    with sqlite_engine.begin() as conn:
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(1))
    monkeypatch.setenv("FLAGTRAIL_PSEUDONYMS", "on")
    with sqlite_engine.begin() as conn:
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(2))
    monkeypatch.delenv("FLAGTRAIL_PSEUDONYMS")  # auto: the recorded decision holds
    with sqlite_engine.begin() as conn:
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(3))
    actors = [r["actor"] for r in payloads(sqlite_engine)]
    assert actors[0] == "alice@example.com" and actors[1] == actors[2]
    assert actors[1] == alias(workdir, "alice@example.com")


def test_a_missing_pseudonym_key_is_an_error_never_a_raw_name(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    (workdir / "pseudonym.key").rename(workdir / "elsewhere.key")
    with (
        pytest.raises(ConfigError, match=r"pseudonym key .* is missing"),
        sqlite_engine.begin() as conn,
    ):
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(2))
    assert len(payloads(sqlite_engine)) == 1
    assert not (workdir / "pseudonym.key").exists()  # no fresh key was made behind our back
    result = run_cli(
        "record", "--flag", "f", "--env", "staging", "--action", "update", "--actor",
        "alice@example.com", "--role", "engineer", "--reason", "r", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 2 and "is missing" in result.stderr
    assert "Traceback" not in result.stderr and b"alice" not in database_text(workdir)


def test_a_wrong_key_file_is_refused(outbox: Outbox, sqlite_engine: Engine, workdir: Path) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    right = (workdir / "pseudonym.key").read_text()
    (workdir / "pseudonym.key").unlink()
    create_key(workdir / "pseudonym.key", "pseudonym")  # another host's fresh key
    with (
        pytest.raises(ConfigError, match="not the key this database was used with"),
        sqlite_engine.begin() as conn,
    ):
        Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(2))
    # the vault key where the pseudonym key belongs: refused by its kind
    os.environ["FLAGTRAIL_PSEUDONYM_KEY_PATH"] = str(workdir / "vault.key")
    try:
        with pytest.raises(ConfigError, match="holds a vault key"), sqlite_engine.begin() as conn:
            Outbox(sqlite_engine, str(workdir / "identities.toml")).record(conn, good_change(3))
    finally:
        del os.environ["FLAGTRAIL_PSEUDONYM_KEY_PATH"]
    (workdir / "pseudonym.key").write_text(right)
    (workdir / "vault.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        fresh = Outbox(sqlite_engine, str(workdir / "identities.toml"))
        resolve(fresh, "bob", ["id:" + "0" * 64])
    assert len(payloads(sqlite_engine)) == 1


# -- the vault under attack -------------------------------------------------------------------
def test_swapping_vault_rows_between_pseudonyms_is_caught(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))  # alice acts, bob approves
    alice, bob = alias(workdir, "alice@example.com"), alias(workdir, "bob@example.com")
    with sqlite_engine.begin() as conn:
        rows = {r.pseudonym: r for r in conn.execute(select(vault))}
        # the operator makes alice's change look approved by alice: bob's row gets hers
        for target, source in ((bob, alice), (alice, bob)):
            conn.execute(
                update(vault)
                .where(vault.c.pseudonym == target)
                .values(wrapped_key=rows[source].wrapped_key, ciphertext=rows[source].ciphertext)
            )
    with pytest.raises(EvidenceError, match="altered or moved"):
        resolve(outbox, "bob@example.com", [bob])
    result = run_cli("identity", "resolve", bob, "--actor", "bob@example.com", cwd=workdir)
    assert result.returncode == 1 and "does not decrypt" in result.stderr
    # only the ciphertext moved (the subject keys kept): still refused
    with sqlite_engine.begin() as conn:
        for who in (alice, bob):
            conn.execute(
                update(vault)
                .where(vault.c.pseudonym == who)
                .values(
                    wrapped_key=rows[who].wrapped_key,
                    ciphertext=rows[alice if who == bob else bob].ciphertext,
                )
            )
    with pytest.raises(EvidenceError):
        resolve(outbox, "bob@example.com", [alice])


def test_resolving_an_unknown_pseudonym_and_a_non_pseudonym(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    stranger = "id:" + "ab" * 32
    result = run_cli("identity", "resolve", stranger, "--actor", "bob", cwd=workdir)
    assert result.returncode == 2 and "unknown" in result.stdout
    result = run_cli("identity", "resolve", "alice@example.com", "--actor", "bob", cwd=workdir)
    assert result.returncode == 2 and "neither a pseudonym" in result.stderr
    with pytest.raises(InvalidChange, match="not a pseudonym"):
        resolve(outbox, "bob", ["id:XYZ"])


def test_a_resolve_is_chained_naming_pseudonyms_and_refused_without_an_operator_role(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    relay_once(workdir)
    paths, _ = export_today(workdir, rsa_keys)
    out = workdir / "names.json"
    done = run_cli(
        "identity", "resolve", str(paths.jsonl), "--actor", "bob", "--out", str(out), cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    names = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert {v["identity"] for v in names.values()} == {"alice@example.com", "bob@example.com"}
    refused = run_cli(
        "identity", "resolve", str(paths.jsonl), "--actor", "carol@example.com", cwd=workdir
    )
    assert refused.returncode == 3 and "operator role" in refused.stderr
    assert "alice@example.com" not in refused.stdout
    relay_once(workdir)
    resolved, rejected = log_records()[-2:]
    assert resolved["action"] == "identity_resolved"
    assert resolved["actor"] == alias(workdir, "bob@example.com")
    assert resolved["meta"]["pseudonyms"] == sorted(names)
    assert rejected["action"] == "rejected"
    assert rejected["meta"]["attempted_action"] == "identity_resolved"
    assert "example.com" not in (workdir / "log.db").read_bytes().decode("latin-1")


# -- erasure --------------------------------------------------------------------------------
def test_erasure_keeps_every_export_valid_and_resolve_says_when(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    for n in range(3):
        with sqlite_engine.begin() as conn:
            outbox.record(conn, good_change(n))
    relay_once(workdir)
    before, _ = export_today(workdir, rsa_keys, out="before")
    alice = alias(workdir, "alice@example.com")
    with sqlite_engine.connect() as conn:
        sealed = conn.execute(select(vault).where(vault.c.pseudonym == alice)).one()
    sealed_bytes = [bytes(sealed.wrapped_key), bytes(sealed.ciphertext)]
    sqlite_engine.dispose()  # no reader of ours holds an old snapshot of the file
    refused = run_cli(
        "identity", "erase", "alice@example.com", "--reason", "Alice asked (alice@example.com)",
        "--actor", "bob", cwd=workdir,
    )  # fmt: skip
    assert refused.returncode == 2 and "names the person" in refused.stderr
    done = run_cli(
        "identity", "erase", "alice@example.com", "--reason", "DSR-2026-114", "--actor", "bob",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0 and alice in done.stdout, done.stderr
    twice = run_cli("identity", "erase", alice, "--reason", "DSR-2026-114", "--actor", "bob",
                    cwd=workdir)  # fmt: skip
    assert twice.returncode == 0 and "already erased" in twice.stdout
    answer = run_cli("identity", "resolve", alice, "--actor", "bob", cwd=workdir)
    assert answer.returncode == 0 and "erased on 20" in answer.stdout
    relay_once(workdir)
    after, _ = export_today(workdir, rsa_keys, out="after")
    for package in (before, after):
        assert verify_export(package.jsonl, rsa_keys / "audit-public.pem").ok
        assert "Chain intact" in seed_snippet(package.jsonl)
    records = log_records()
    erased = [r for r in records if r["action"] == "identity_erased"]
    assert len(erased) == 1  # the second erase changed nothing and chained nothing
    assert erased[0]["meta"]["pseudonym"] == alice and erased[0]["reason"] == "DSR-2026-114"
    assert "alice" not in json.dumps(records)
    # the wrapped key and the ciphertext are gone from the database's bytes (SQLite's
    # secure_delete and an emptied WAL), not only from the query's answer
    left = database_text(workdir)
    assert all(part not in left for part in sealed_bytes)
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(vault).where(vault.c.pseudonym == alice)).one()
    assert row.wrapped_key is None and row.ciphertext is None and row.erased_at_us
    summary = run_cli("summary", str(after.jsonl), cwd=workdir)
    assert summary.returncode == 0 and "CC7.2" in summary.stdout
    # identity events are ordinary chained records to the gap scan: nothing undocumented
    today = datetime.now(UTC).date().isoformat()
    scan = run_cli(
        "gap", "scan", "--start", today, "--end", today, "--fail-on-undocumented", cwd=workdir
    )
    assert scan.returncode == 0, scan.stdout + scan.stderr


def test_a_fake_erasure_behind_flagtrails_back_is_named(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    """An operator hiding who made a change by blanking the vault row by hand: resolve
    says so, since a real erasure always names the event that chained it."""
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    alice = alias(workdir, "alice@example.com")
    with sqlite_engine.begin() as conn:
        conn.execute(
            update(vault)
            .where(vault.c.pseudonym == alice)
            .values(wrapped_key=None, ciphertext=None, erased_at_us=1_780_000_000_000_000)
        )
    answer = run_cli("identity", "resolve", alice, "--actor", "bob", cwd=workdir)
    assert answer.returncode == 0 and "altered outside flagtrail" in answer.stdout
    done = erase(outbox, "bob", "bob@example.com", "DSR-9")
    bob = alias(workdir, "bob@example.com")
    assert resolve(outbox, "bob", [bob])[bob].erased_event_id == done.event_id


def test_erasing_an_unknown_subject_is_a_clear_error(outbox: Outbox, workdir: Path) -> None:
    with outbox.engine.begin() as conn:
        outbox.record(conn, good_change(1))
    with pytest.raises(InvalidChange, match="nothing to erase"):
        erase(outbox, "bob", "nobody@example.com", "DSR-1")
    with pytest.raises(PolicyError, match="operator role"):
        erase(outbox, "alice@example.com", "bob@example.com", "DSR-2")


# -- rejections, statements, redaction -----------------------------------------------------------
def test_a_rejected_newcomer_resolves_even_when_the_caller_rolls_back(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path
) -> None:
    with pytest.raises(PolicyError), sqlite_engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS flags (k TEXT)"))
        conn.execute(text("INSERT INTO flags VALUES ('x')"))  # the caller holds the lock
        outbox.record(conn, good_change(1, actor="newcomer@evil.test"))
    (rejected,) = payloads(sqlite_engine)
    found = resolve(outbox, "bob", [rejected["actor"]])
    assert found[rejected["actor"]].identity == "newcomer@evil.test"
    # that rolled-back transaction was the chain's first: its decision outlived it too,
    # so the next process does not mistake the chain for an old one and store names
    later = Outbox(sqlite_engine, str(workdir / "identities.toml"))
    with sqlite_engine.begin() as conn:
        later.record(conn, good_change(2))
    assert payloads(sqlite_engine)[-1]["actor"] == alias(workdir, "alice@example.com")


def test_a_statement_naming_a_person_is_refused_on_a_pseudonymous_chain(
    outbox: Outbox, sqlite_engine: Engine, rsa_keys: Path
) -> None:
    from producers.meta import GAP_SIGNED_FIELDS, sign_statement
    from relay.signing import load_private_key
    from tests.test_meta_policy import meta_record

    key = load_private_key(rsa_keys / "audit-private.pem")
    statement = {"from": "a", "to": "b", "reason": "r", "author": "bob@example.com",
                 "stated_at": "s", "chain_id": outbox.chain_id}  # fmt: skip
    signed = sign_statement(statement, GAP_SIGNED_FIELDS, key)
    with (
        pytest.raises(InvalidChange, match="name the operator by pseudonym"),
        sqlite_engine.begin() as conn,
    ):
        outbox.record_meta(conn, meta_record(outbox, "gap_documented", "bob@example.com", signed))
    assert payloads(sqlite_engine) == []


def test_the_policy_can_redact_reasons(
    sqlite_engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = workdir / "policy.toml"
    from producers.policy import DEFAULT_POLICY

    policy.write_text(
        DEFAULT_POLICY + "\n[privacy]\nredact_patterns = ['[\\w.+-]+@[\\w-]+\\.[\\w.]+']\n"
        'redact_hook = "tests.test_privacy:shout"\n'
    )
    outbox = Outbox(sqlite_engine, str(workdir / "identities.toml"), policy=str(policy))
    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1, reason="asked by dave@corp.example"))
    assert payloads(sqlite_engine)[0]["reason"] == "ASKED BY [REDACTED]"
    policy.write_text(DEFAULT_POLICY + "\n[privacy]\nredact_patterns = ['(']\n")
    with pytest.raises(ConfigError, match="pattern"):
        Outbox(sqlite_engine, str(workdir / "identities.toml"), policy=str(policy))
    policy.write_text(DEFAULT_POLICY + '\n[privacy]\nredact_hook = "no.such:thing"\n')
    with pytest.raises(ConfigError, match="cannot load redact_hook"):
        Outbox(sqlite_engine, str(workdir / "identities.toml"), policy=str(policy))


def shout(text: str) -> str:
    return text.upper()


def test_identity_keygen_makes_both_keys_once(workdir: Path) -> None:
    first = run_cli("identity", "keygen", cwd=workdir)
    assert first.returncode == 0 and "mode 0600" in first.stdout
    key = (workdir / "pseudonym.key").read_text()
    again = run_cli("identity", "keygen", cwd=workdir)
    assert again.returncode == 0 and "exists, kept" in again.stdout
    assert (workdir / "pseudonym.key").read_text() == key


def test_a_signed_identity_sidecar_for_the_auditor_stays_out_of_the_chain(
    outbox: Outbox, sqlite_engine: Engine, workdir: Path, rsa_keys: Path
) -> None:
    import hashlib
    import shutil
    import subprocess

    with sqlite_engine.begin() as conn:
        outbox.record(conn, good_change(1))
    relay_once(workdir)
    paths, _ = export_today(workdir, rsa_keys)
    made = run_cli(
        "identity", "sidecar", str(paths.jsonl), "--actor", "bob",
        "--signing-key", str(rsa_keys / "audit-private.pem"), cwd=workdir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    sidecar = paths.jsonl.with_name(paths.jsonl.name.removesuffix(".jsonl") + ".identities.json")
    body = json.loads(sidecar.read_text())
    assert body["export_sha256"] == hashlib.sha256(paths.jsonl.read_bytes()).hexdigest()
    assert {v["identity"] for v in body["identities"].values()} == {
        "alice@example.com",
        "bob@example.com",
    }
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    if shutil.which("openssl"):
        checked = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", str(rsa_keys / "audit-public.pem"),
             "-signature", f"{sidecar}.sig", str(sidecar)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert checked.returncode == 0 and "Verified OK" in checked.stdout
    from relay.signing import load_public_key, signature_valid

    signature = Path(f"{sidecar}.sig").read_bytes()
    digest = hashlib.sha256(sidecar.read_bytes()).digest()
    assert signature_valid(digest, signature, load_public_key(rsa_keys / "audit-public.pem"))
    forged = sidecar.read_bytes().replace(b"alice@example.com", b"carol@example.com")
    assert not signature_valid(
        hashlib.sha256(forged).digest(), signature, load_public_key(rsa_keys / "audit-public.pem")
    )
    # the package still verifies with the sidecar beside it; the chain never saw a name
    assert verify_export(paths.jsonl, rsa_keys / "audit-public.pem").ok
    relay_once(workdir)
    resolved = log_records()[-1]
    assert resolved["action"] == "identity_resolved"
    assert resolved["meta"]["export_sha256"] == body["export_sha256"]
    assert "example.com" not in json.dumps(log_records())
