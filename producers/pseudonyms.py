"""Keyed pseudonyms of people, and the secret key files they (and the vault) use.

A pseudonym is ``id:`` + HMAC-SHA256(pseudonym key, NFC(identity)) in hex. The
key lives in a file outside the log and outside the outbox database
(``FLAGTRAIL_PSEUDONYM_KEY_PATH``, default ``pseudonym.key``), so nobody holding
only the evidence can test a guessed address against a record.

The identity is NFC-normalised before hashing: ``José`` typed with a combining
accent (NFD) and with the precomposed letter (NFC) are the same person and get
one pseudonym. Case is NOT folded: the identity provider decides who is who
(the directory maps aliases and other casings to one canonical name before
this runs; an OpenID Connect ``sub`` is case-sensitive by specification).

Key files hold one line, ``flagtrail-<kind>-key-v1 <64 hex digits>``, mode 0600.
The kind in the line stops a vault key being loaded as a pseudonym key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from producers.errors import ConfigError, InvalidChange

PREFIX = "id:"
PSEUDONYM = re.compile(r"id:[0-9a-f]{64}")
KEY_BYTES = 32
_KEY_LINE = re.compile(r"flagtrail-([a-z]+)-key-v1 ([0-9a-f]{64})\n?")


def is_pseudonym(text: object) -> bool:
    return isinstance(text, str) and PSEUDONYM.fullmatch(text) is not None


def normalise_identity(identity: str) -> bytes:
    """The bytes a pseudonym is computed over: NFC, so composed and decomposed
    spellings of one name agree; nothing else is changed."""
    try:
        return unicodedata.normalize("NFC", identity).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (undecodable bytes on a command line)
        raise InvalidChange(
            "an identity is not valid Unicode (it holds a lone surrogate)"
        ) from None


def pseudonym(key: bytes, identity: str) -> str:
    """``id:<hex>``: HMAC-SHA256 of the NFC identity under ``key``."""
    return PREFIX + hmac.digest(key, normalise_identity(identity), "sha256").hex()


@dataclass(frozen=True)
class SecretKey:
    kind: str  # "pseudonym" or "vault"
    material: bytes
    path: Path

    @property
    def key_id(self) -> str:
        """A public name for the key (recorded in the outbox database, so that a
        different key file is noticed); it reveals nothing about the key."""
        digest = hmac.digest(self.material, f"flagtrail {self.kind} key id".encode(), "sha256")
        return f"{self.kind}:{digest.hex()[:32]}"


def create_key(path: Path, kind: str) -> SecretKey:
    """Write a new random key file (0600); refuses to replace an existing one."""
    material = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{kind} key {path} already exists; a new key would orphan every pseudonym "
            "made with the old one (move it away first if you really mean it)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {kind} key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(f"flagtrail-{kind}-key-v1 {material.hex()}\n")
        out.flush()
        os.fsync(out.fileno())
    return SecretKey(kind, material, path)


def read_key(path: Path, kind: str) -> SecretKey | None:
    """The key in ``path``; None when the file does not exist."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{kind} key {path} is readable by other users: chmod 600 {path}")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {kind} key {path}: {exc}") from exc
    match = _KEY_LINE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{path} is not a flagtrail {kind} key file")
    if match.group(1) != kind:
        raise ConfigError(f"{path} holds a {match.group(1)} key, not a {kind} key")
    return SecretKey(kind, bytes.fromhex(match.group(2)), path)


def fingerprint_text(text: str) -> str:
    """A short digest of free text for messages that must not repeat it."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]
