"""What a new chain stores for a person: the pseudonym under the folder's key file."""

from __future__ import annotations

from pathlib import Path

from producers.pseudonyms import pseudonym, read_key


def alias(folder: Path, identity: str) -> str:
    key = read_key(folder / "pseudonym.key", "pseudonym")
    assert key is not None, f"no pseudonym key in {folder}"
    return pseudonym(key.material, identity)
