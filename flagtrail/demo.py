"""``flagtrail demo``: the whole pipeline on the embedded default, in one folder."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from flagtrail import settings
from flagtrail.controlplane import apply_change, ensure_flag_store
from producers import FlagChange, Outbox, PolicyError
from producers.identity import SAMPLE_DIRECTORY
from relay.export import export_window
from relay.logs import open_log
from relay.outbox import open_outbox_source
from relay.relay import Relay
from relay.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_keypair
from relay.verify import render, verify_export

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
        before={"rollout": 25},
        after={"rollout": 100},
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
        before={"rollout": 25},
        after={"rollout": 100},
        reason="Error budget healthy — full rollout ✅",
        change_ref="CHG-4825",
    ),
]


def run_demo(folder: Path) -> int:
    # the venv's script by its full path: `make demo` users may not have it on PATH
    script = Path(sys.argv[0])
    command = str(script.resolve()) if script.name == "flagtrail" else "python -m flagtrail.cli"
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    identities = Path(settings.identities_path())
    if not identities.exists():
        identities.write_text(SAMPLE_DIRECTORY)
    if not Path(PRIVATE_KEY_FILE).exists():
        generate_keypair(Path("."), "rsa")

    engine = settings.make_engine(settings.outbox_url())
    outbox = Outbox(engine, str(identities), chain_id=settings.chain_id())
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

    audit_log = open_log(settings.log_url())
    relay = Relay(open_outbox_source(engine, settings.chain_id()), audit_log)
    relay.resume()
    relayed = relay.drain()
    print(f"2. Relay appended {relayed} events; chain head is sequence {relay.head.sequence}.")

    today = datetime.now(UTC).date()
    paths, manifest = export_window(
        audit_log, today, today, Path("."), Path(settings.setting("AUDIT_SIGNING_KEY_PATH"))
    )
    audit_log.close()
    print(f"3. Exported {manifest['record_count']} records for {today} (signed).")
    report = verify_export(paths.jsonl, Path(PUBLIC_KEY_FILE))
    print("4. flagtrail verify:")
    print("   " + render(report).replace("\n", "\n   "))

    here, sig = Path.cwd(), paths.signature.name
    print(f"""
Everything is in {here}:
  evidence   {paths.jsonl.name}
  signature  {paths.signature.name}
  manifest   {paths.manifest.name}
  summary    {paths.summary.name}
  keys       {PRIVATE_KEY_FILE} (secret), {PUBLIC_KEY_FILE}
  databases  outbox.db (transactional outbox), log.db (append-only log)

Check it yourself:
  cd {here}
  openssl dgst -sha256 -verify {PUBLIC_KEY_FILE} -signature {sig} {paths.jsonl.name}
  {command} verify {paths.jsonl.name} --pubkey {PUBLIC_KEY_FILE}
  {command} summary {paths.jsonl.name}
""")
    sys.stdout.flush()
    return 0 if report.ok else 1
