"""``flagtrail demo``: the whole pipeline on the embedded default, in one folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from flagtrail import service, settings
from flagtrail.controlplane import apply_change, ensure_flag_store
from flagtrail.settings import Settings
from producers import FlagChange, Outbox, PolicyError
from producers.identity import SAMPLE_DIRECTORY
from relay.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_keypair
from relay.tree import NOTE_PRIVATE_KEY_FILE, NOTE_PUBLIC_KEY_FILE, generate_note_key

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"

SAMPLE_CHANGES = [
    FlagChange(
        actor=CAROL,
        role="engineer",
        flag_key="checkout-v2",
        environment="staging",
        action="create",
        before=None,
        after={"enabled": True, "rollout": 100},
        reason="Try the new checkout in staging",
        change_ref="CHG-4820",
    ),
    FlagChange(
        actor=ALICE,
        approver=BOB,
        role="release-manager",
        flag_key="checkout-v2",
        environment="production",
        action="update",
        before={"enabled": False},
        after={"enabled": True, "rollout": 25},
        reason="Gradual rollout",
        change_ref="CHG-4821",
    ),
    # blocked: self-approval breaks CC8.1 separation of duties
    FlagChange(
        actor=ALICE,
        approver=ALICE,
        role="release-manager",
        flag_key="checkout-v2",
        environment="production",
        action="rollout",
        before={"enabled": True, "rollout": 25},
        after={"enabled": True, "rollout": 100},
        reason="Skip review",
        change_ref="CHG-4822",
    ),
    # blocked: an engineer may not change production flags (RBAC, CC6.1)
    FlagChange(
        actor=CAROL,
        approver=BOB,
        role="engineer",
        flag_key="search-ranking",
        environment="production",
        action="update",
        before={"model": "v1"},
        after={"model": "v2"},
        reason="New ranking model",
        change_ref="CHG-4823",
    ),
    # blocked: the approver is not a verified identity
    FlagChange(
        actor=BOB,
        approver="mallory@evil.test",
        role="release-manager",
        flag_key="search-ranking",
        environment="production",
        action="update",
        before={"model": "v1"},
        after={"model": "v2"},
        reason="New ranking model",
        change_ref="CHG-4824",
    ),
    FlagChange(
        actor=BOB,
        approver=ALICE,
        role="release-manager",
        flag_key="checkout-v2",
        environment="production",
        action="rollout",
        before={"enabled": True, "rollout": 25},
        after={"enabled": True, "rollout": 100},
        reason="Error budget healthy — full rollout ✅",
        change_ref="CHG-4825",
    ),
]


KEYS_DIR = Path("keys")  # the signer's side: never shipped with the evidence
EVIDENCE_DIR = Path("evidence")  # what an auditor receives


def _flagtrail(command: list[str]) -> tuple[int, str]:
    """Run a `flagtrail` command as a user would, in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-m", "flagtrail.cli", *command], capture_output=True, text=True
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def run_demo(folder: Path) -> int:
    # the venv's script by its full path: `make demo` users may not have it on PATH
    script = Path(sys.argv[0])
    command = str(script.resolve()) if script.name == "flagtrail" else "python -m flagtrail.cli"
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    identities = Path(settings.identities_path())
    if not identities.exists():
        identities.write_text(SAMPLE_DIRECTORY)
    private_key, public_key = KEYS_DIR / PRIVATE_KEY_FILE, KEYS_DIR / PUBLIC_KEY_FILE
    if not private_key.exists():
        KEYS_DIR.mkdir(mode=0o700, exist_ok=True)
        generate_keypair(KEYS_DIR, "rsa")
    note_key, note_public = KEYS_DIR / NOTE_PRIVATE_KEY_FILE, KEYS_DIR / NOTE_PUBLIC_KEY_FILE
    if not note_key.exists():  # the relay signs Merkle checkpoints with it
        generate_note_key(KEYS_DIR, "demo.flagtrail.example")
    resolved = replace(
        Settings.resolve(signing_key=str(private_key)), note_key=note_key, note_key_named=True
    )

    engine = settings.make_engine(resolved.outbox_url)
    outbox = Outbox(engine, str(identities), chain_id=resolved.chain_id)
    ensure_flag_store(outbox)
    print("1. Recording sample flag changes through the producer path:")
    for change in SAMPLE_CHANGES:
        try:
            with engine.begin() as conn:
                apply_change(conn, outbox, change)
            print(
                f"   recorded  {change.action:8} {change.flag_key} in {change.environment} "
                f"by {change.actor}"
            )
        except PolicyError as exc:
            print(
                f"   BLOCKED   {change.action:8} {change.flag_key} in {change.environment} "
                f"by {change.actor}: 403 {exc.message}"
            )

    relay = service.make_relay(resolved, 500, 5.0, 1 << 20)
    try:
        relayed = service.relay_once(relay)  # a signed Merkle checkpoint at its end
    finally:
        relay.log.close()
    print(
        f"2. Relay appended {relayed} events (people stored as pseudonyms: "
        f"{outbox.privacy.pseudonymous(engine.connect())}); chain head is sequence "
        f"{relay.head.sequence}, with a signed Merkle checkpoint."
    )

    today = datetime.now(UTC).date()
    paths, manifest = service.export(resolved, today, today, EVIDENCE_DIR)
    count = manifest["record_count"]
    print(
        f"3. Exported {count} records for {today} (signed, with Merkle proofs) to {EVIDENCE_DIR}/."
    )
    jsonl = EVIDENCE_DIR / paths.jsonl.name
    verify = ["verify", str(jsonl), "--pubkey", str(public_key), "--note-key", str(note_public)]
    code, output = _flagtrail(verify)
    print(f"4. flagtrail {' '.join(verify)}   (registered keys, not the package's copies)")
    print("   " + output.replace("\n", "\n   "))
    report = ["report", str(jsonl), "--pubkey", str(public_key), "--out", "report.html"]
    report_code, _ = _flagtrail(report)
    if report_code == 0:
        print(f"5. The auditor's report: {Path.cwd() / 'report.html'} (one self-contained page)")

    checks = [
        f"openssl dgst -sha256 -verify {public_key} -signature {jsonl}.sig {jsonl}",
    ]
    manifest_file = EVIDENCE_DIR / paths.manifest.name
    if Path(f"{manifest_file}.sig").exists():
        checks.append(
            f"openssl dgst -sha256 -verify {public_key} -signature {manifest_file}.sig "
            f"{manifest_file}"
        )
    checks += [
        f"{command} {' '.join(verify)}",
        f"{command} summary {jsonl}",
        f"{command} changes {jsonl} --env production",
    ]
    here = Path.cwd()
    listing = "\n".join(f"  {line}" for line in checks)
    print(f"""
Everything is in {here}:
  {EVIDENCE_DIR}/   what the auditor gets: {paths.jsonl.name}, its .sig, manifest, summary
  {KEYS_DIR}/       {PRIVATE_KEY_FILE} (secret, 0600: never part of the evidence)
             {PUBLIC_KEY_FILE} (the key to register with your security controls)
             {NOTE_PRIVATE_KEY_FILE} / {NOTE_PUBLIC_KEY_FILE} (signs / checks Merkle checkpoints)
  pseudonym.key, vault.key (names outside the log: `flagtrail identity resolve ID`)
  outbox.db (transactional outbox), log.db (append-only log and its Merkle tree)

Check it yourself, with the registered public key:
  cd {here}
{listing}
""")
    sys.stdout.flush()
    return 0 if code == 0 else code
