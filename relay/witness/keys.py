"""The witness's key files and its list of trusted logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from producers.errors import ConfigError
from relay.proofs.note import Ed25519Verifier, parse_vkey
from relay.signing import write_key_pair
from relay.witness.cosignature import Cosigner, generate_witness_key, parse_witness_skey

WITNESS_KEY_FILE = "witness.key"
WITNESS_VKEY_FILE = "witness.vkey"


def generate_key_files(out_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, str]:
    """witness.key (0600) and witness.vkey in out_dir; returns the key path and vkey."""
    skey, vkey = generate_witness_key(name)
    private, public = out_dir / WITNESS_KEY_FILE, out_dir / WITNESS_VKEY_FILE
    try:
        write_key_pair(
            private,
            (skey + "\n").encode(),
            public,
            (vkey + "\n").encode(),
            overwrite,
            "witness key",
        )
    except OSError as exc:
        raise ConfigError(f"cannot write the witness key in {out_dir}: {exc.strerror}") from None
    return private, vkey


def load_cosigner(path: Path) -> Cosigner:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the witness key {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the witness key {path} is not a key text file") from None
    return parse_witness_skey(text)


def parse_logs(entries: Sequence[str]) -> dict[str, list[Ed25519Verifier]]:
    """``ORIGIN=VKEY`` entries (a log's origin line and its note verifier key)."""
    logs: dict[str, list[Ed25519Verifier]] = {}
    for entry in entries:
        origin, sep, vkey = entry.strip().partition("=")
        if not sep or not origin or not vkey:
            raise ConfigError(f"--trusted-log takes ORIGIN=VKEY, not {entry.strip()[:60]!r}")
        logs.setdefault(origin, []).append(parse_vkey(vkey))
    if not logs:
        raise ConfigError("a witness needs at least one log: --trusted-log ORIGIN=VKEY")
    return logs


def read_logs_file(path: Path) -> list[str]:
    """Lines ``ORIGIN VKEY`` or ``ORIGIN=VKEY`` (# comments) as --log entries."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the witness's log list {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the witness's log list {path} is not text") from None
    entries = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line if "=" in line.split()[0] else "=".join(line.split(None, 1)))
    return entries
