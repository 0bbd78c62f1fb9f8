"""The evidence package's files and its signed manifest.

The manifest is canonical JSON (``producers.events.canonical_json``: sorted
keys, no spaces, ASCII) with a detached signature ``<stem>.manifest.json.sig``
by the key that signs the JSONL, so ``openssl dgst -sha256 -verify KEY
-signature X.manifest.json.sig X.manifest.json`` checks it. Export and verify
derive the manifest's facts with the same function (``describe``), so verify
recomputes every derivable field from the file and compares.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from producers.events import canonical_json
from relay.canonical import GENESIS, refuse_constant
from relay.signing import PUBLIC_KEY_FILE, PrivateKey, sign_digest

MANIFEST_VERSION = 2
STEM_PREFIX = "flag-audit-soc2_"
# what verify_commands call the registered key: the copy shipped in the package
# proves nothing, the auditor's registered copy does
REGISTERED_KEY = "REGISTERED-audit-public.pem"
# fields verify cannot recompute from the package; the signature still covers them
NOT_DERIVED = frozenset(
    {
        "generated_at",
        "generator",
        "chain_head_at_export",
        "previous_export",
        "link",
        "merkle",
        "public_key",
        "public_key_fingerprint",
        "statements_after_window",
        "sha256",
        "checkpoint_timestamp",  # RFC 3161 over the checkpoint (relay/checkpoint_stamps.py)
        "timestamp",  # RFC 3161: the TSA, the nonce and the token file (relay/stamping.py)
    }
)


@dataclass(frozen=True)
class PackagePaths:
    jsonl: Path
    signature: Path
    manifest: Path
    manifest_signature: Path
    summary: Path
    public_key: Path
    link: Path
    proof: Path  # the Merkle proofs (relay/package_proofs.py)

    @classmethod
    def for_window(
        cls, out_dir: Path, start: date, end: date, chain_id: str | None = None
    ) -> PackagePaths:
        return cls.beside(out_dir / f"{window_stem(start, end, chain_id)}.jsonl")

    @classmethod
    def beside(cls, jsonl: Path) -> PackagePaths:
        stem = jsonl.name.removesuffix(".jsonl")
        return cls(
            jsonl,
            jsonl.with_name(jsonl.name + ".sig"),
            jsonl.with_name(f"{stem}.manifest.json"),
            jsonl.with_name(f"{stem}.manifest.json.sig"),
            jsonl.with_name(f"{stem}.summary.txt"),
            jsonl.with_name(PUBLIC_KEY_FILE),
            jsonl.with_name(f"{stem}.link.jsonl"),
            jsonl.with_name(f"{stem}.proof.json"),
        )


# the meta-events a package reports: verify checks them whole, the manifest lists them.
# identity_resolved / identity_erased / retention_applied are not signed statements: they
# are chained and verified like changes (hash, sequence, relay lag) and counted under
# CC7.2 in the summary; they name pseudonyms, so listing them adds nothing for an auditor
REPORTED_META_ACTIONS = ("sentinel_rotation", "gap_documented")


def window_stem(start: date, end: date, chain_id: str | None = None) -> str:
    """The name binds the chain as it binds the window (one key signs every chain's
    packages); the default chain's name is the seed's, flag-audit-soc2_<start>_<end>."""
    prefix = f"{chain_id}-soc2_" if chain_id else STEM_PREFIX
    return f"{prefix}{start.isoformat()}_{end.isoformat()}"


def window_bounds(start: date, end: date) -> tuple[str, str]:
    """Whole UTC days, both included: [start 00:00, end+1 00:00)."""
    if end < start:
        raise ConfigError(f"--end {end} is before --start {start}")
    return (
        f"{start.isoformat()}T00:00:00.000000Z",
        f"{(end + timedelta(days=1)).isoformat()}T00:00:00.000000Z",
    )


@dataclass
class WindowFacts:
    """What export and verify both learn from the records of a window, in order."""

    chain_id: str | None = None
    count: int = 0
    anchor: dict[str, Any] | None = None  # {"sequence", "hash"}: what the first record follows
    head: dict[str, Any] | None = None  # {"sequence", "hash", "timestamp_utc"}
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    controls: Counter[str] = field(default_factory=Counter)
    meta_events: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)


def meta_event(number: int, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "record": number,
        "sequence": record["sequence"],
        "action": record["action"],
        "event_id": record.get("event_id"),
        "timestamp_utc": record["timestamp_utc"],
        "details": record.get("meta"),
    }


def anchor_of(first: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """What a window's first record follows: its prev_hash, or, for a rotation that
    restarted from GENESIS (legacy, or a lost log), the head its meta names."""
    meta = first.get("meta") if isinstance(first.get("meta"), dict) else {}
    named_seq, named_hash = meta.get("previous_sequence"), meta.get("previous_hash")
    if (
        first.get("action") == "sentinel_rotation"
        and prev_hash == GENESIS
        and isinstance(named_seq, int)
        and not isinstance(named_seq, bool)
        and isinstance(named_hash, str)
        and len(named_hash) == 64
    ):
        return {"sequence": named_seq, "hash": named_hash}
    return {"sequence": first["sequence"] - 1, "hash": prev_hash}


def rotation_problem(
    record: dict[str, Any], prev_hash: str, before: tuple[int, str], log_start: bool
) -> str | None:
    """Why a sentinel_rotation does not name the record before it, if it does not."""
    if log_start and prev_hash == GENESIS:
        return None  # nothing before it in this log (a lost log): its meta says what was
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    seq, digest = before
    if meta.get("previous_sequence") != seq or meta.get("previous_hash") != digest:
        return (
            f"sentinel_rotation names sequence {meta.get('previous_sequence')} hash "
            f"{str(meta.get('previous_hash'))[:16]}…, but the record before it is sequence "
            f"{seq} hash {digest[:16]}… (a forged or misplaced rotation)"
        )
    if record["sequence"] <= seq:  # a new epoch may skip numbers (a gap), never reuse them
        return f"sentinel_rotation has sequence {record['sequence']}, not after {seq}"
    return None


def summary_sha256(summary: str) -> str:
    return hashlib.sha256(summary.encode()).hexdigest()


def describe(
    facts: WindowFacts,
    jsonl_name: str,
    start: date,
    end: date,
    reported: list[str],
    lag_threshold_s: float,
    summary_digest: str,
    key_fingerprint: str,
) -> dict[str, Any]:
    """Every manifest field verify can recompute from the package itself."""
    paths = PackagePaths.beside(Path(jsonl_name))
    since, until = window_bounds(start, end)
    jsonl, sig = paths.jsonl.name, paths.signature.name
    manifest, manifest_sig = paths.manifest.name, paths.manifest_signature.name
    return {
        "manifest_version": MANIFEST_VERSION,
        "chain_id": facts.chain_id,
        "window": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "from_utc": since,
            "until_utc": until,
            "days_inclusive": True,
        },
        "evidence_file": jsonl,
        "signature_file": sig,
        "manifest_signature_file": manifest_sig,
        "summary_file": paths.summary.name,
        "record_count": facts.count,
        "anchor": facts.anchor,
        "head": facts.head,
        "first_timestamp_utc": facts.first_timestamp,
        "last_timestamp_utc": facts.last_timestamp,
        "rotations": [m for m in facts.meta_events if m["action"] == "sentinel_rotation"],
        "gap_statements": [m for m in facts.meta_events if m["action"] == "gap_documented"],
        "gap_thresholds": {"lag_s": lag_threshold_s},
        "documented_gaps": [g for g in facts.gaps if g["documented_by"]],
        "undocumented_gaps": [g for g in facts.gaps if not g["documented_by"]],
        "controls_reported": reported,
        "control_counts": {c: facts.controls.get(c, 0) for c in reported},
        "summary_sha256": summary_digest,
        "verify_commands": [
            f"openssl dgst -sha256 -verify {REGISTERED_KEY} -signature {manifest_sig} {manifest}",
            f"openssl dgst -sha256 -verify {REGISTERED_KEY} -signature {sig} {jsonl}",
            f"sha256sum {jsonl}",
            f"flagtrail verify {jsonl} --pubkey {REGISTERED_KEY}",
            f"flagtrail verify {jsonl} --key-fingerprint {key_fingerprint}",
        ],
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return canonical_json(manifest).encode()


def write_signed(
    path: Path, signature_path: Path, manifest: dict[str, Any], key: PrivateKey
) -> None:
    data = manifest_bytes(manifest)
    path.write_bytes(data)
    signature_path.write_bytes(sign_digest(hashlib.sha256(data).digest(), key))


# top-level fields verify reads, with their types
_TYPES: dict[str, type | tuple[type, ...]] = {
    "manifest_version": int,
    "window": dict,
    "evidence_file": str,
    "record_count": int,
    "sha256": str,
    "controls_reported": list,
    "gap_thresholds": dict,
    "anchor": (dict, type(None)),
    "head": (dict, type(None)),
    "statements_after_window": list,
}


def parse_manifest(data: bytes, where: str = "manifest") -> dict[str, Any]:
    """A manifest's bytes → dict, or EvidenceError: canonical JSON, one object,
    the fields verify relies on present with their types."""
    try:
        manifest = json.loads(data, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EvidenceError(f"{where} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict):
        raise EvidenceError(f"{where} is not a JSON object")
    try:
        canonical = manifest_bytes(manifest) == data
    except (ValueError, UnicodeEncodeError, RecursionError):
        canonical = False
    if not canonical:
        raise EvidenceError(f"{where} is not canonical JSON (it was rewritten after export)")
    for name, kind in _TYPES.items():
        value = manifest.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EvidenceError(f"{where}: field {name!r} is missing or has the wrong type")
    if manifest["manifest_version"] != MANIFEST_VERSION:
        raise EvidenceError(
            f"{where}: manifest_version {manifest['manifest_version']} is not "
            f"{MANIFEST_VERSION} (export it again with this flagtrail)"
        )
    window = manifest["window"]
    try:
        start, end = date.fromisoformat(window["start"]), date.fromisoformat(window["end"])
    except (KeyError, TypeError, ValueError):
        raise EvidenceError(f"{where}: the window is not two dates") from None
    if end < start:
        raise EvidenceError(f"{where}: the window ends before it starts")
    if (window.get("from_utc"), window.get("until_utc")) != window_bounds(start, end):
        raise EvidenceError(f"{where}: the window's bounds are not its days")
    if not isinstance(manifest.get("chain_id"), str | None):
        raise EvidenceError(f"{where}: chain_id must be a string")
    if not all(isinstance(c, str) for c in manifest["controls_reported"]):
        raise EvidenceError(f"{where}: controls_reported must list strings")
    lag = manifest["gap_thresholds"].get("lag_s")
    if not isinstance(lag, int | float) or isinstance(lag, bool) or lag < 0:
        raise EvidenceError(f"{where}: gap_thresholds.lag_s must be a number")
    for name in ("anchor", "head"):
        point = manifest.get(name)
        if point is not None and (
            not isinstance(point.get("sequence"), int)
            or isinstance(point.get("sequence"), bool)
            or not isinstance(point.get("hash"), str)
        ):
            raise EvidenceError(f"{where}: {name} needs an integer sequence and a hash")
    if not all(isinstance(line, str) for line in manifest["statements_after_window"]):
        raise EvidenceError(f"{where}: statements_after_window must list record lines")
    return manifest


def manifest_window(manifest: dict[str, Any]) -> tuple[date, date]:
    window = manifest["window"]
    return date.fromisoformat(window["start"]), date.fromisoformat(window["end"])


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EvidenceError(f"{what} {path} is missing from the package") from None
    except OSError as exc:
        raise EvidenceError(f"cannot read {what} {path}: {exc.strerror}") from None
