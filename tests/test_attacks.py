"""Issue 7 attacked from outside: each test is an attack that must fail.

Attacks at the log level write what the relay itself would seal from a raw outbox
row (an operator with database access but without the signing key): the test
asserts that the relay accepts such a row, then that verify does not believe it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from producers.events import canonical_json, format_timestamp
from producers.meta import GAP_SIGNED_FIELDS, ROTATION_SIGNED_FIELDS
from relay.outbox.base import OutboxPosition, OutboxRow
from relay.quarantine import decode_row
from relay.verify import render, verify_export
from tests.conftest import run_cli
from tests.test_evidence_package import DAY1, ChainWriter, _verify_day, signed


def _relay_would_seal(record: dict) -> None:
    """The relay chains this payload from a raw outbox row (no API check on the way)."""
    payload = canonical_json({k: v for k, v in record.items() if k not in ("hash", "prev_hash")})
    decode_row(OutboxRow(OutboxPosition(0, 1), 0, payload), record["chain_id"])


def _automatic_rotation(chain: ChainWriter) -> dict:
    chain.add()
    rotation = chain.add(
        "sentinel_rotation",
        chain.rotation_meta(automatic=True, rotated_by="flagtrail-relay (automatic)"),
    )
    chain.add()
    return rotation


def _gap_record(chain: ChainWriter, meta: dict) -> dict:
    stamp = format_timestamp(chain.now + timedelta(minutes=5))
    return {
        "schema_version": 1,
        "chain_id": "flag-audit",
        "event_id": str(uuid.uuid4()),
        "recorded_at": stamp,
        "action": "gap_documented",
        "actor": meta.get("author") or meta.get("rotated_by"),
        "reason": meta["reason"],
        "soc2_controls": ["CC6.1", "CC6.6", "CC7.2"],
        "meta": meta,
    }


def test_a_rotation_signature_reused_as_a_gap_statement_documents_nothing(
    workdir: Path, rsa_keys: Path
) -> None:
    """A signed operator rotation signs chain_id, reason, rotated_by, stated_at: not
    from/to. Its meta, relabelled gap_documented with any from/to added beside the
    signed fields, must not document a gap (it would document every gap there is)."""
    chain = ChainWriter(workdir)
    rotation = _automatic_rotation(chain)
    operator = {
        "chain_id": "flag-audit",
        "reason": "annual key ceremony",
        "rotated_by": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
        "automatic": False,
    }
    stolen = signed(operator, ROTATION_SIGNED_FIELDS, rsa_keys)  # read from any old export
    forged = {**stolen, "from": "2000-01-01T00:00:00.000000Z", "to": "2100-01-01T00:00:00.000000Z"}
    record = _gap_record(chain, forged)
    _relay_would_seal(record)
    chain.add("gap_documented", forged, actor=record["actor"], reason=record["reason"])
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]
    assert "Undocumented gap (rotation)" in render(report)


def test_a_gap_statement_signed_for_another_chain_documents_nothing(
    workdir: Path, rsa_keys: Path
) -> None:
    """One audit key signs every chain's statements. A statement signed for chain
    'billing-audit' (read from its export), copied into this chain's outbox, must not
    document this chain's gap."""
    chain = ChainWriter(workdir)
    rotation = _automatic_rotation(chain)
    statement = _billing_statement(chain)
    replayed = signed(statement, [*GAP_SIGNED_FIELDS, "chain_id"], rsa_keys)
    _relay_would_seal(_gap_record(chain, replayed))
    chain.add("gap_documented", replayed, actor="bob@example.com", reason=statement["reason"])
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]
    assert "Undocumented gap (rotation)" in render(report)


def _billing_statement(chain: ChainWriter) -> dict:
    return {
        "chain_id": "billing-audit",
        "from": format_timestamp(chain.now - timedelta(hours=1)),
        "to": format_timestamp(chain.now),
        "reason": "billing relay was down",
        "author": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
    }


def test_a_gap_statement_as_flagtrail_signs_it_cannot_be_replayed_into_another_chain(
    workdir: Path, rsa_keys: Path
) -> None:
    chain = ChainWriter(workdir)
    rotation = _automatic_rotation(chain)
    statement = _billing_statement(chain)  # what `gap document` signs for billing-audit
    replayed = signed({k: statement[k] for k in GAP_SIGNED_FIELDS}, GAP_SIGNED_FIELDS, rsa_keys)
    _relay_would_seal(_gap_record(chain, replayed))
    chain.add("gap_documented", replayed, actor="bob@example.com", reason=statement["reason"])
    _, manifest, _ = _verify_day(workdir, rsa_keys)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]


def test_an_old_signed_rotation_replayed_later_documents_nothing(
    workdir: Path, rsa_keys: Path
) -> None:
    """A rotation `flagtrail rotate` signed months ago (chain_id, reason, rotated_by,
    stated_at), copied into a new outbox row, is sealed again by the relay, which fills
    in the head before it: verify must not report it as an operator's signed rotation."""
    chain = ChainWriter(workdir)
    chain.add()
    operator = {
        "chain_id": "flag-audit",
        "reason": "annual key ceremony",
        "rotated_by": "bob@example.com",
        "stated_at": format_timestamp(chain.now - timedelta(days=90)),
        "automatic": False,
    }
    replayed = {**signed(operator, ROTATION_SIGNED_FIELDS, rsa_keys), **chain.rotation_meta()}
    replayed["rotated_by"] = "bob@example.com"
    record = {**_gap_record(chain, replayed), "action": "sentinel_rotation"}
    _relay_would_seal(record)
    rotation = chain.add("sentinel_rotation", replayed, actor="bob@example.com")
    chain.add()
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]
    text = render(report)
    assert "operator bob@example.com, signed by a trusted key" not in text
    assert "Rotation at record 2 is not signed by a trusted key" in text


def test_export_of_a_mistyped_chain_is_an_error_not_an_empty_signed_package(
    workdir: Path, rsa_keys: Path
) -> None:
    """One SQLite log holds several chains: a CI job with FLAGTRAIL_CHAIN=flag-audt
    must not sign 'no events this week' for a chain that is not in the log."""
    chain = ChainWriter(workdir)
    chain.add()
    chain.log.close()
    env = {"AUDIT_SIGNING_KEY_PATH": str(rsa_keys / "audit-private.pem")}
    day = ["--start", "2026-03-02", "--end", "2026-03-02"]
    good = run_cli("export", *day, "--out", "ev", cwd=workdir, env=env)
    assert good.returncode == 0, good.stderr
    typo = run_cli("export", *day, "--out", "typo", "--chain", "flag-audt", cwd=workdir, env=env)
    assert typo.returncode == 2 and "flag-audt" in typo.stderr, typo.stdout + typo.stderr
    assert "Traceback" not in typo.stderr and not (workdir / "typo").exists()


def test_another_chains_package_for_the_same_week_does_not_pass_as_this_chains(
    workdir: Path, rsa_keys: Path
) -> None:
    """One key signs every chain. The package of a quiet side chain for the same week
    must not verify under the name an auditor asks for (flag-audit's): the file name
    binds the chain as it binds the window."""
    from relay.export import export_window
    from relay.logs import open_log

    chain = ChainWriter(workdir)
    for _ in range(3):
        chain.add()
    chain.log.close()
    quiet = ChainWriter(workdir)  # the same file, another chain
    quiet.log.close()
    quiet.log = open_log(f"sqlite:///{workdir / 'log.db'}", "quiet-chain")
    quiet.add(chain_id="quiet-chain")
    quiet.log.close()
    with open_log(f"sqlite:///{workdir / 'log.db'}", "quiet-chain", read_only=True) as log:
        paths, manifest = export_window(
            log, DAY1, DAY1, workdir / "side", rsa_keys / "audit-private.pem"
        )
    assert manifest["chain_id"] == "quiet-chain" and manifest["record_count"] == 1
    asked = workdir / "side" / "flag-audit-soc2_2026-03-02_2026-03-02.jsonl"
    if paths.jsonl != asked:  # what an insider hands over as flag-audit's week
        for suffix in (".jsonl", ".jsonl.sig", ".manifest.json", ".manifest.json.sig"):
            source = paths.jsonl.with_name(paths.jsonl.name.removesuffix(".jsonl") + suffix)
            source.rename(asked.with_name(asked.name.removesuffix(".jsonl") + suffix))
        summary = paths.summary
        summary.rename(asked.with_name(asked.name.removesuffix(".jsonl") + ".summary.txt"))
    report = verify_export(asked, rsa_keys / "audit-public.pem")
    assert report.exit_code == 1, render(report)


def test_a_gap_statement_cannot_document_what_happens_after_it(
    workdir: Path, rsa_keys: Path
) -> None:
    """A careless (or far-sighted) operator signs `gap document --to 2099-12-31`: the
    statement must not pre-document the log being found tampered next month."""
    chain = ChainWriter(workdir)
    chain.add()
    statement = {
        "from": format_timestamp(chain.now - timedelta(hours=1)),
        "to": "2099-12-31T00:00:00.000000Z",
        "reason": "maintenance window",
        "author": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
        "chain_id": "flag-audit",
    }
    chain.add("gap_documented", signed(statement, GAP_SIGNED_FIELDS, rsa_keys))
    rotation = _automatic_rotation(chain)  # later: the relay finds the log tampered
    _, manifest, report = _verify_day(workdir, rsa_keys)
    assert [g["sequence"] for g in manifest["undocumented_gaps"]] == [rotation["sequence"]]
    assert "Undocumented gap (rotation)" in render(report)


@pytest.mark.parametrize("key_from", ["--pubkey", "AUDIT_SIGNING_KEY_PATH"])
def test_gap_scan_in_ci_does_not_believe_an_unsigned_statement(
    workdir: Path, rsa_keys: Path, key_from: str
) -> None:
    """`gap scan --fail-on-undocumented` is the CI gate (workflow, CronJob). A statement
    an insider wrote straight into the outbox, with no key (a made-up signature), or a
    rotation's signature relabelled as a gap statement, must not pass it."""
    chain = ChainWriter(workdir)
    _automatic_rotation(chain)
    made_up = {
        "from": "2000-01-01T00:00:00.000000Z",
        "to": format_timestamp(chain.now),
        "reason": "nothing to see",
        "author": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
        "signed_fields": GAP_SIGNED_FIELDS,
        "signing_key_fingerprint": "SHA256:" + "0" * 64,
        "statement_signature": "AAAA",
    }
    _relay_would_seal(_gap_record(chain, made_up))
    chain.add("gap_documented", made_up, actor="bob@example.com")
    chain.log.close()
    args = ["gap", "scan", "--start", "2026-03-02", "--end", "2026-03-02"]
    public, private = rsa_keys / "audit-public.pem", rsa_keys / "audit-private.pem"
    env = {"AUDIT_SIGNING_KEY_PATH": str(private)} if key_from != "--pubkey" else {}
    extra = ["--pubkey", str(public)] if key_from == "--pubkey" else []
    scan = run_cli(*args, *extra, "--fail-on-undocumented", cwd=workdir, env=env)
    assert scan.returncode == 1, scan.stdout + scan.stderr
    assert "rotation" in scan.stdout and "UNDOCUMENTED" in scan.stdout


def test_the_undocumented_gaps_alert_is_not_cleared_by_an_unsigned_statement(
    workdir: Path,
) -> None:
    from relay.logs.base import LogEntry
    from relay.metrics import RelayMetrics
    from relay.relay import BatchResult

    chain = ChainWriter(workdir)
    chain.add()
    rotation = chain.add(
        "sentinel_rotation",
        chain.rotation_meta(automatic=True, rotated_by="flagtrail-relay (automatic)"),
    )
    unsigned = {
        "from": "2000-01-01T00:00:00.000000Z",
        "to": format_timestamp(chain.now),
        "reason": "nothing to see",
        "author": "bob@example.com",
        "stated_at": format_timestamp(chain.now),
    }
    statement = chain.add("gap_documented", unsigned)
    metrics = RelayMetrics("flag-audit")
    for record in (rotation, statement):
        entry = LogEntry(record["sequence"], record["timestamp_utc"], record["hash"], "", None)
        metrics.batch(
            BatchResult(1, record["sequence"], record["sequence"], 0.0, [entry], [record], 0.0)
        )
    value = metrics.registry.get_sample_value("flagtrail_undocumented_gaps", {}) or 0.0
    assert value == 1


@pytest.mark.parametrize("forgery", ["a far position", "the next row, edited"])
def test_a_forged_tail_cannot_make_the_relay_skip_real_outbox_rows(
    workdir: Path, forgery: str
) -> None:
    """Someone who can write the log file (no key needed: the chain is keyless) appends
    one well-chained record whose outbox position lies far ahead. The relay takes a log
    ahead of its checkpoint for its own crashed batch and marks the outbox through the
    tail's position: the real rows below it must not vanish unlogged."""
    import json

    from flagtrail import settings
    from producers.schema import outbox
    from relay.canonical import seal
    from relay.logs import open_log
    from relay.logs.base import LogEntry
    from relay.outbox import open_outbox_source
    from tests.test_operations import log_records, record_changes
    from tests.test_relay_integrity import relay_in_process

    record_changes(workdir, 3)
    relay_in_process()
    record_changes(workdir, 2, start=3)  # real changes, not relayed yet
    with open_log("sqlite:///log.db") as audit_log:
        tail = audit_log.tail()
        forged = {**json.loads(tail.line), "event_id": str(uuid.uuid4())}
        position = OutboxPosition(0, 1000)
        if forgery != "a far position":  # the next row's own record, its approver changed
            row = open_outbox_source(settings.make_engine("sqlite:///outbox.db"), "flag-audit")
            (next_row,) = row.fetch_pending(None, 1)
            forged = {**json.loads(next_row.payload), "approver": "mallory@evil.test"}
            position = next_row.position
        forged |= {"sequence": tail.sequence + 1, "relayed_at": forged["recorded_at"]}
        forged["timestamp_utc"] = tail.timestamp_utc
        forged.pop("hash", None), forged.pop("prev_hash", None)
        digest, line = seal(forged, tail.record_hash)
        entry = LogEntry(forged["sequence"], forged["timestamp_utc"], digest, line, position)
        audit_log.append([entry], tail.sequence)
    relay_in_process()
    records = log_records()
    engine = settings.make_engine("sqlite:///outbox.db")
    with engine.connect() as conn:
        committed = {row.event_id for row in conn.execute(outbox.select())}
    engine.dispose()
    assert committed - {r["event_id"] for r in records} == set(), "real changes never logged"
    rotation = next(r for r in records if r["action"] == "sentinel_rotation")
    assert rotation["meta"]["automatic"] is True and "appended" in rotation["meta"]["reason"]


def test_a_batch_appended_but_not_marked_is_still_resumed_without_a_rotation(
    workdir: Path,
) -> None:
    """The other side of the forged-tail check: the relay's own crash between append and
    mark (log ahead of the checkpoint, by rows still pending) is no tampering."""
    from flagtrail import settings
    from relay.logs import open_log
    from relay.outbox import open_outbox_source
    from relay.relay import Relay
    from tests.test_operations import log_records, record_changes

    record_changes(workdir, 3)
    engine = settings.make_engine("sqlite:///outbox.db")

    class Crash(Exception):
        pass

    def crash(*_: object, **__: object) -> int:
        raise Crash  # killed after the log committed, before the outbox marks

    first = Relay(open_outbox_source(engine, "flag-audit"), open_log("sqlite:///log.db"))
    first.resume()
    first.relay_batch()
    record_changes(workdir, 2, start=3)
    first.source.mark_through = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        first.relay_batch()
    first.log.close()
    second = Relay(open_outbox_source(engine, "flag-audit"), open_log("sqlite:///log.db"))
    assert second.source.checkpoint().sequence == 3 and second.log.tail().sequence == 5
    second.resume()
    assert second.drain() == 0  # nothing left, nothing repeated
    second.log.close()
    engine.dispose()
    records = log_records()
    assert [r["action"] for r in records].count("sentinel_rotation") == 0
    assert len({r["event_id"] for r in records}) == len(records) == 5


@pytest.mark.parametrize("how", ["--pubkey", "FLAGTRAIL_TRUSTED_KEYS"])
def test_a_ci_job_trusting_the_key_shipped_in_the_package_is_refused(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    """A careless job runs `verify evidence/x.jsonl --pubkey evidence/audit-public.pem`:
    whoever replaces the package (key included) then passes it. Trusting the package's
    own key file is the same as trusting no key."""
    import shutil

    from relay.signing import generate_keypair

    mallory_keys = tmp_path_factory.mktemp("mallory")
    generate_keypair(mallory_keys, "ec")
    chain = ChainWriter(workdir)
    chain.add()
    paths, _ = _export_day(workdir, mallory_keys)  # a package made with Mallory's key
    shipped = paths.public_key
    assert shipped.read_bytes() == (mallory_keys / "audit-public.pem").read_bytes()
    args = ["verify", str(paths.jsonl)]
    if how == "--pubkey":
        result = run_cli(*args, "--pubkey", str(shipped), cwd=workdir)
    else:
        trust_file = paths.jsonl.parent / "trusted.pem"
        shutil.copy(shipped, trust_file)  # a copy in the folder is still not the package's
        ok = run_cli(*args, cwd=workdir, env={"FLAGTRAIL_TRUSTED_KEYS": str(trust_file)})
        assert ok.returncode == 0, ok.stdout + ok.stderr
        result = run_cli(*args, cwd=workdir, env={"FLAGTRAIL_TRUSTED_KEYS": str(shipped)})
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "package" in (result.stdout + result.stderr)


def _export_day(workdir: Path, keys: Path):
    from relay.export import export_window
    from relay.logs import open_log

    with open_log(f"sqlite:///{workdir / 'log.db'}", read_only=True) as audit_log:
        return export_window(audit_log, DAY1, DAY1, workdir / "ev", keys / "audit-private.pem")
