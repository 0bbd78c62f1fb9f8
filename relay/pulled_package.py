"""Is a verified package the one asked for now, and does it continue the previous one?

`flagtrail export --previous` writes the link into the signed manifest and `verify
--previous` checks it. A package built by the evidence API for a puller names no
previous export, but the question still has an answer from the chain itself: the
record the previous (signed, trusted) manifest named as its head must be, hash for
hash, this package's anchor or one of its records. If the log was rewritten between
the two pulls, it is not. Run only on a package `verify` passed.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from producers.errors import EvidenceError
from relay.canonical import GENESIS, LineError, line_parts, strict_record
from relay.manifest import PackagePaths, parse_manifest, read_file
from relay.signing import signature_valid
from relay.trust import Trust

FUTURE_SLACK_S = 300.0  # server and client clocks may differ this much


def check_continues(paths: PackagePaths, previous: Path, trust: Trust) -> str:
    """One line saying how the package continues ``previous``; EvidenceError when it does not."""
    old_data = read_file(previous, "--previous manifest")
    old = parse_manifest(old_data, f"--previous {previous.name}")
    signature = read_file(previous.with_name(previous.name + ".sig"), "--previous signature")
    digest = hashlib.sha256(old_data).digest()
    if not any(signature_valid(digest, signature, key) for key in trust.keys):
        raise EvidenceError(
            f"--previous {previous.name}: its signature does not check with a registered key"
        )
    new = parse_manifest(read_file(paths.manifest, "manifest"), paths.manifest.name)
    if old.get("chain_id") != new.get("chain_id"):
        raise EvidenceError(f"{previous.name} is an export of another chain")
    head = old.get("head") or {"sequence": 0, "hash": GENESIS}
    seq, expected = head["sequence"], head["hash"]
    anchor = new.get("anchor") or {"sequence": 0, "hash": GENESIS}
    last = (new.get("head") or anchor)["sequence"]
    if seq < anchor["sequence"]:
        raise EvidenceError(
            f"{previous.name}'s head (sequence {seq}) lies before this package's first record "
            f"(sequence {anchor['sequence'] + 1}): pull a window that starts on the previous "
            "one's last day, so that the two overlap"
        )
    if seq > last:
        raise EvidenceError(
            f"{previous.name}'s head (sequence {seq}) lies after this package's last record: "
            "pull the windows in order"
        )
    found = anchor["hash"] if seq == anchor["sequence"] else _hash_at(paths.jsonl, seq)
    if found != expected:
        raise EvidenceError(
            f"the record at sequence {seq} no longer has the hash {expected[:16]}… that "
            f"{previous.name} signed: the log was rewritten between the two pulls"
        )
    return f"continues {previous.name} (sequence {seq}, hash {expected[:16]}…)"


def _hash_at(jsonl: Path, sequence: int) -> str | None:
    with jsonl.open("rb") as f:
        for line in f:  # verify has read this file as the seed does: one record a line
            try:
                _, payload, digest = line_parts(line)
                if strict_record(payload).get("sequence") == sequence:
                    return digest
            except LineError:
                return None  # verify passed this file: cannot happen unless it changed since
    return None


def check_fresh(paths: PackagePaths, max_age_s: float, now: datetime | None = None) -> str:
    """A package the API built for this request was generated moments ago; one generated
    long before is a stale copy or a replay (of a window that has grown since). Run only
    on a package `verify` passed, so ``generated_at`` is signed."""
    manifest = parse_manifest(read_file(paths.manifest, "manifest"), paths.manifest.name)
    stamp = manifest.get("generated_at")
    try:
        generated = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceError(f"the manifest's generated_at {stamp!r} is not a time") from None
    age = ((now or datetime.now(UTC)) - generated).total_seconds()
    if age > max_age_s or age < -FUTURE_SLACK_S:
        raise EvidenceError(
            f"the package was generated at {stamp}, {age:,.0f} s from now, not for this "
            f"request (--max-age {max_age_s:g} s): a stale or replayed package"
        )
    return f"generated {max(age, 0):,.0f} s ago"
