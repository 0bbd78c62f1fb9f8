"""``flagtrail verify``'s witness part: the package's checkpoint must carry valid
cosignatures from at least N of the witnesses the auditor trusts.

The checkpoint is the one the signed manifest names and the Merkle proofs tie every
record of the window to (relay/verify_proofs.py checks that first). Whoever holds the
log and its keys can sign any checkpoint, but not a witness's cosignature: a witness
cosigns only a tree that extends the one it cosigned before, so a rewritten history
cannot be cosigned by a witness that saw the original."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, EvidenceError
from relay.witness.cosignature import CosignatureVerifier, parse_witness_vkey, verified_cosigners

WITNESS_KEYS_ENV = "FLAGTRAIL_WITNESS_KEYS"


def load_witness_keys(given: Sequence[str]) -> list[CosignatureVerifier]:
    """--witness-key values (a vkey, or a file of vkey lines), else FLAGTRAIL_WITNESS_KEYS."""
    values = list(given) or [v for v in os.environ.get(WITNESS_KEYS_ENV, "").split(",") if v]
    keys: list[CosignatureVerifier] = []
    for value in values:
        value = value.strip()
        if "+" not in value and Path(value).is_file():
            try:
                text = Path(value).read_text()
            except (OSError, UnicodeDecodeError):
                raise ConfigError(f"--witness-key: cannot read {value} as text") from None
            lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
            keys.extend(parse_witness_vkey(ln) for ln in lines if ln)
        else:
            keys.append(parse_witness_vkey(value))
    # by public key too: a cosignature does not sign the witness's name, so one key
    # under two names would count one witness twice toward --min-witnesses
    if len({(k.name, k.key_id) for k in keys}) != len(keys) or len(
        {k.public_key for k in keys}
    ) != len(keys):
        raise ConfigError("--witness-key: the same witness key is given twice")
    return keys


def check_witnesses(
    manifest: dict[str, Any], keys: Sequence[CosignatureVerifier], minimum: int
) -> tuple[str, str | None]:
    """(what to report, the failure if any)."""
    if minimum > len(keys):
        raise ConfigError(
            f"--min-witnesses {minimum} asks for more witnesses than the {len(keys)} "
            "--witness-key given"
        )
    if not keys:
        return "not checked (pass --witness-key VKEY and --min-witnesses N)", None
    entry = manifest.get("merkle")
    if not isinstance(entry, dict) or not isinstance(entry.get("checkpoint"), str):
        return "MISSING", "the package carries no Merkle checkpoint for witnesses to cosign"
    try:
        found = verified_cosigners(entry["checkpoint"].encode(), keys)
    except EvidenceError as exc:
        return "INVALID", f"{exc} (a forged cosignature)"
    said = ", ".join(
        f"{name} at {datetime.fromtimestamp(t, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        for name, t in sorted(found.items())
    )
    if len(found) < minimum:
        return "TOO FEW", (
            f"the package's checkpoint is cosigned by {len(found)} of the trusted witnesses "
            f"({said or 'none'}), {minimum} required: no witness vouches that this history "
            "extends the one it saw (a rewritten log, or a checkpoint not yet witnessed)"
        )
    return f"checkpoint cosigned by {len(found)} trusted witness(es): {said}", None
