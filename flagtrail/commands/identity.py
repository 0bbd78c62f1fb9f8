"""``flagtrail identity resolve / erase / keygen``: pseudonyms back to names, erasure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_backends, add_identities, add_signing_key

    group = sub.add_parser(
        "identity",
        help="resolve pseudonyms for an auditor, erase a subject (GDPR)",
        description="Records name people by keyed pseudonyms (id:<hex>); the vault in the "
        "outbox database maps them back. Every resolve and erase needs an operator role "
        "and is chained as a meta-event that names pseudonyms, never people.",
    )
    commands = group.add_subparsers(dest="identity_command", required=True)

    p = commands.add_parser(
        "resolve",
        help="the names behind pseudonyms",
        description="TARGET is a pseudonym or a file (an export's JSONL) whose pseudonyms "
        "are all resolved. The names are printed or written to --out (mode 0600), never "
        "chained.",
    )
    p.add_argument("target", help="a pseudonym (id:…) or a file naming pseudonyms")
    p.add_argument("--actor", required=True, help="who asks (an operator role)")
    p.add_argument("--out", help="write the answers as JSON to this file (0600)")
    add_identities(p)
    add_backends(p, log=False)
    p.set_defaults(func=cmd_resolve)

    p = commands.add_parser(
        "sidecar",
        help="a signed identity sidecar for an export (for the auditor)",
        description="Resolves every pseudonym an export names and writes "
        "<stem>.identities.json (0600) with a detached signature by the audit signing key "
        "(openssl dgst -sha256 -verify checks it), bound to the export by SHA-256. It never "
        "enters the chain; the resolve is chained.",
    )
    p.add_argument("file", metavar="EXPORT", help="the export's JSONL")
    p.add_argument("--actor", required=True, help="who asks (an operator role)")
    p.add_argument("--out", help="sidecar file (default beside the export)")
    add_signing_key(p, "the sidecar")
    add_identities(p)
    add_backends(p, log=False)
    p.set_defaults(func=cmd_sidecar)

    p = commands.add_parser(
        "erase",
        help="crypto-shred a subject's vault entry",
        description="Destroys the subject's key and encrypted name. Every export stays "
        "valid; resolve answers 'erased on DATE'. The reason is chained forever: give a "
        "ticket or request number, never the person's name or other personal data.",
    )
    p.add_argument("subject", help="the pseudonym (id:…) or the identity to erase")
    p.add_argument("--reason", required=True, help="why, without personal data (a ticket)")
    p.add_argument("--actor", required=True, help="who erases (an operator role)")
    add_identities(p)
    add_backends(p, log=False)
    p.set_defaults(func=cmd_erase)

    p = commands.add_parser(
        "keygen",
        help="create the pseudonym and vault keys",
        description="Writes FLAGTRAIL_PSEUDONYM_KEY_PATH and FLAGTRAIL_VAULT_KEY_PATH (0600) "
        "when missing, for deployments where several hosts share them. A new chain "
        "otherwise creates them on first use.",
    )
    p.add_argument(
        "--dir", help="folder for pseudonym.key and vault.key (default: the two settings)"
    )
    p.set_defaults(func=cmd_keygen)


def _outbox(args: argparse.Namespace):  # -> producers.Outbox
    from flagtrail.cli import _outbox as make

    return make(args)


def cmd_resolve(args: argparse.Namespace) -> int:
    from producers.errors import ConfigError
    from producers.identity_ops import pseudonyms_in_file, resolve
    from producers.pseudonyms import is_pseudonym

    single = is_pseudonym(args.target)
    if single:
        wanted = [args.target]
    elif Path(args.target).is_file():
        wanted = pseudonyms_in_file(Path(args.target))  # none: refused by resolve
    else:
        raise ConfigError(f"{args.target!r} is neither a pseudonym (id:…) nor a file")
    found = resolve(_outbox(args), args.actor, wanted)
    answers = {p: found[p].as_json() for p in sorted(found)}
    if args.out:
        _write_private(Path(args.out), json.dumps(answers, indent=2, ensure_ascii=False) + "\n")
        counts = [a["status"] for a in answers.values()]
        print(
            f"{len(answers)} pseudonyms: {counts.count('resolved')} resolved, "
            f"{counts.count('erased')} erased, {counts.count('unknown')} unknown; "
            f"written to {args.out} (personal data: keep it private)"
        )
        return 0
    for alias, answer in answers.items():
        print(f"{alias} {_describe(answer)}")
    return 2 if single and answers[args.target]["status"] == "unknown" else 0


def _describe(answer: dict) -> str:
    if answer["status"] == "resolved":
        return answer["identity"]
    if answer["status"] == "erased" and answer["event_id"] is None:
        return (
            f"marked erased on {answer['erased_at']} but no erasure event names it: the vault "
            "row was altered outside flagtrail"
        )
    if answer["status"] == "erased":
        return f"erased on {answer['erased_at']} (event {answer['event_id']})"
    return "unknown (not in this vault)"


def _write_private(path: Path, text: str) -> None:
    from producers.identity_ops import write_private as write

    write(path, text.encode("utf-8"))


def cmd_sidecar(args: argparse.Namespace) -> int:
    from flagtrail import settings
    from producers.identity_ops import write_sidecar
    from relay.signing import load_private_key

    key = load_private_key(Path(settings.setting("AUDIT_SIGNING_KEY_PATH", args.signing_key)))
    path, signature = write_sidecar(
        _outbox(args), args.actor, Path(args.file), key, Path(args.out) if args.out else None
    )
    print(f"identity sidecar: {path} (personal data, mode 0600; never part of the chain)")
    print(f"  openssl dgst -sha256 -verify audit-public.pem -signature {signature} {path}")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from producers.identity_ops import erase

    done = erase(_outbox(args), args.actor, args.subject, args.reason)
    if done.already:
        print(f"{done.pseudonym} was already erased on {done.erased_at}; nothing to do")
    else:
        print(
            f"{done.pseudonym} erased on {done.erased_at} (event {done.event_id}); its records "
            "and every export stay valid"
        )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from producers.errors import ConfigError
    from producers.privacy import key_path
    from producers.pseudonyms import create_key, read_key

    if args.dir and not Path(args.dir).is_dir():
        raise ConfigError(f"--dir {args.dir} is not a folder")
    for kind in ("pseudonym", "vault"):
        path = Path(args.dir) / f"{kind}.key" if args.dir else key_path(kind)
        if read_key(path, kind) is not None:
            print(f"{kind} key: {path} exists, kept")
            continue
        create_key(path, kind)
        print(f"{kind} key: {path} (mode 0600; keep it outside the log and the database)")
    return 0
