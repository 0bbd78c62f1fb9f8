"""Which keys a verifier trusts: only the ones its user names, never one shipped in a package.

Sources (any combination):
- ``--pubkey PEM``: a registered public key file;
- ``--key-fingerprint SHA256:<64 hex>``: trusts the key shipped in the package
  (``audit-public.pem``) only when its DER SubjectPublicKeyInfo hashes to this
  (``openssl pkey -pubin -in audit-public.pem -outform DER | sha256sum``);
- ``FLAGTRAIL_TRUSTED_KEYS=FILE``: either a PEM bundle (one or more
  ``-----BEGIN PUBLIC KEY-----`` blocks) or lines of fingerprints
  (``SHA256:<64 hex>``, optional text after a space, ``#`` comments).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from producers.errors import ConfigError
from relay.signing import PublicKey, fingerprint, load_public_key, parse_public_key

TRUST_ENV = "FLAGTRAIL_TRUSTED_KEYS"
_FINGERPRINT = re.compile(r"(?:SHA256:)?([0-9a-fA-F]{64})")
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def normalise_fingerprint(text: str, where: str = "--key-fingerprint") -> str:
    match = _FINGERPRINT.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"{where}: {text.strip()[:80]!r} is not a key fingerprint like SHA256:<64 hex digits>"
        )
    return "SHA256:" + match.group(1).lower()


@dataclass
class Trust:
    """Trusted public keys and trusted fingerprints, with where each came from."""

    keys: list[PublicKey] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # where the keys were read from

    @property
    def empty(self) -> bool:
        return not self.keys and not self.fingerprints

    def trusts(self, key: PublicKey) -> bool:
        mark = fingerprint(key)
        return mark in self.fingerprints or any(fingerprint(k) == mark for k in self.keys)

    @classmethod
    def load(
        cls,
        pubkeys: Iterable[Path] = (),
        fingerprints: Sequence[str] = (),
        trust_file: str | None = None,
    ) -> Trust:
        trust = cls()
        for path in pubkeys:
            trust.keys.append(load_public_key(path))
            trust.sources.append(f"--pubkey {path}")
            trust.files.append(Path(path))
        for text in fingerprints:
            trust.fingerprints.add(normalise_fingerprint(text))
            trust.sources.append("--key-fingerprint")
        if trust_file:
            trust._read_file(Path(trust_file))
        return trust

    def names_any_of(self, shipped: Iterable[Path]) -> Path | None:
        """The trusted key file that is one of ``shipped`` (a package's own key), if any."""
        for trusted in self.files:
            for candidate in shipped:
                try:
                    if candidate.is_file() and os.path.samefile(trusted, candidate):
                        return trusted
                except OSError:
                    continue
        return None

    @classmethod
    def from_environment(
        cls, pubkeys: Iterable[Path] = (), fingerprints: Sequence[str] = ()
    ) -> Trust:
        return cls.load(pubkeys, fingerprints, os.environ.get(TRUST_ENV) or None)

    def _read_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{TRUST_ENV}: cannot read trust file {path}: {exc}") from None
        if b"-----BEGIN" in data:
            self.files.append(path)
            blocks = _PEM_BLOCK.findall(data)
            if not blocks:
                raise ConfigError(f"{TRUST_ENV}: {path} holds no PEM public key")
            for block in blocks:
                self.keys.append(parse_public_key(block, f"{TRUST_ENV} file {path}"))
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise ConfigError(f"{TRUST_ENV}: {path} is not text") from None
            for number, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    where = f"{TRUST_ENV} file {path} line {number}"
                    self.fingerprints.add(normalise_fingerprint(line.split()[0], where))
        self.sources.append(f"{TRUST_ENV}={path}")
