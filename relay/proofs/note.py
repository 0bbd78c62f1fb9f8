"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, byte for byte as Go's
golang.org/x/mod/sumdb/note reads and writes them.

A note is UTF-8 text of newline-terminated lines with no other control character
(so no CR), a blank line, then one line per signature: ``— <key name> <base64(key
ID || signature)>``. The key ID is the first 4 bytes of SHA-256(name || 0x0A ||
key type || public key), big-endian. Keys travel as text: the verifier key
``name+<8 hex key ID>+base64(0x01 || public key)`` and the signer key
``PRIVATE+KEY+name+<8 hex key ID>+base64(0x01 || seed)``.

Opening a note trusts only the verifiers its caller names: a signature whose key
name and ID match a trusted verifier must verify (else the note is refused), one
that matches none is kept aside as unverified (cosignatures of others, for one),
and at least one trusted signature must verify. This module is shared by writer
and verifier and imports nothing of the relay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from producers.errors import ConfigError, EvidenceError

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "— "  # an em dash (U+2014) and a space
MAX_SIGNATURES = 100  # as Go's note.Open: parsing stays cheap whatever a note holds


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode white space, no '+' (the key text's separator)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, public: bytes) -> int:
    """``public`` is the type byte followed by the key, as in the verifier key text."""
    return struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + public).digest()[:4])[0]


def decode_key_base64(text: str, what: str) -> bytes:
    """The base64 part of a key's text (note and witness keys alike), or one sentence."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ConfigError(f"{what} is not valid base64") from exc


class Verifier(Protocol):
    """One trusted key: what ``open_note`` asks to check a signature."""

    name: str
    key_id: int

    def verify(self, text: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class Ed25519Verifier:
    name: str
    key_id: int
    public_key: bytes  # the raw 32 bytes

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"


def parse_vkey(text: str) -> Ed25519Verifier:
    """A verifier key ``name+hash+base64``; its stated key ID must match its key."""
    parts = text.strip().split("+", 2)  # base64 may hold "+"
    if len(parts) != 3 or not valid_key_name(parts[0]) or len(parts[1]) != 8:
        raise ConfigError(
            "a note verifier key looks like name+<8 hex digits>+<base64 key>, "
            f"not {text.strip()[:80]!r}"
        )
    name, hex_id, blob = parts
    try:
        stated = int(hex_id, 16)
    except ValueError as exc:
        raise ConfigError(f"note verifier key {name}: key ID {hex_id!r} is not hex") from exc
    public = decode_key_base64(blob, f"note verifier key {name}")
    if len(public) != 33 or public[0] != ALG_ED25519:
        raise ConfigError(f"note verifier key {name} is not an Ed25519 key (type 0x01, 32 bytes)")
    if key_id(name, public) != stated:
        raise ConfigError(f"note verifier key {name}: key ID {hex_id} does not match the key")
    return Ed25519Verifier(name, stated, public[1:])


@dataclass(frozen=True)
class Signer:
    name: str
    key_id: int
    private_key: Ed25519PrivateKey

    def sign(self, text: bytes) -> bytes:
        return self.private_key.sign(text)

    def verifier(self) -> Ed25519Verifier:
        raw = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Ed25519Verifier(self.name, self.key_id, raw)


def generate_signer_key(name: str) -> tuple[str, str]:
    """A new key pair as (signer key text, verifier key text)."""
    if not valid_key_name(name):
        raise ConfigError(f"note key name {name!r} must be non-empty, without spaces or '+'")
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = bytes([ALG_ED25519]) + private.public_key().public_bytes_raw()
    kid = key_id(name, public)
    skey = f"PRIVATE+KEY+{name}+{kid:08x}+" + base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
    return skey, f"{name}+{kid:08x}+" + base64.b64encode(public).decode()


def parse_signer_key(text: str) -> Signer:
    """A signer key ``PRIVATE+KEY+name+hash+base64``; the hash must match the key."""
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not valid_key_name(parts[2]):
        raise ConfigError("a note signer key looks like PRIVATE+KEY+name+<8 hex>+<base64>")
    name, hex_id, blob = parts[2:]
    seed = decode_key_base64(blob, f"note signer key {name}")
    if len(seed) != 33 or seed[0] != ALG_ED25519 or len(hex_id) != 8:
        raise ConfigError(f"note signer key {name} is not an Ed25519 key (type 0x01, 32 bytes)")
    private = Ed25519PrivateKey.from_private_bytes(seed[1:])
    public = bytes([ALG_ED25519]) + private.public_key().public_bytes_raw()
    try:
        stated = int(hex_id, 16)
    except ValueError as exc:
        raise ConfigError(f"note signer key {name}: key ID {hex_id!r} is not hex") from exc
    if key_id(name, public) != stated:
        raise ConfigError(f"note signer key {name}: key ID {hex_id} does not match the key")
    return Signer(name, stated, private)


# -- notes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    name: str
    key_id: int
    signature: bytes  # after the 4-byte key ID

    def line(self) -> str:
        blob = base64.b64encode(struct.pack(">I", self.key_id) + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n"


@dataclass
class Note:
    text: bytes
    verified: list[Signature] = field(default_factory=list)
    unverified: list[Signature] = field(default_factory=list)


def check_text(text: bytes) -> str:
    """Note text: UTF-8, newline-terminated lines, no control character but newline."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceError("the note is not UTF-8") from exc
    bad = next((c for c in decoded if c < " " and c != "\n"), None)
    if bad is not None:
        raise EvidenceError(f"the note holds the control character {bad!r} (CR line ends?)")
    if not decoded.endswith("\n"):
        raise EvidenceError("the note text does not end with a newline")
    return decoded


def split_note(message: bytes) -> tuple[bytes, list[Signature]]:
    """The text and the signature lines of a note, none of them checked."""
    check_text(message)
    split = message.rfind(b"\n\n")
    if split < 0:
        raise EvidenceError("the note has no blank line before its signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block.endswith(b"\n"):
        raise EvidenceError("the note has no signature lines")
    lines = block.decode().split("\n")[:-1]
    if len(lines) > MAX_SIGNATURES:
        raise EvidenceError(f"the note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise EvidenceError(f"the note has a line that is not a signature: {line[:60]!r}")
        name, _, blob = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(blob.encode(), validate=True) if blob else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not valid_key_name(name) or len(raw) < 5:
            raise EvidenceError(f"the note has a malformed signature line: {line[:60]!r}")
        signatures.append(Signature(name, struct.unpack(">I", raw[:4])[0], raw[4:]))
    return text, signatures


def open_note(message: bytes, trusted: Sequence[Verifier]) -> Note:
    """Check a note's signatures against ``trusted`` (see the module's docstring)."""
    by_key: dict[tuple[str, int], Verifier] = {}
    for v in trusted:
        if (v.name, v.key_id) in by_key:
            raise ConfigError(
                f"two trusted note keys share the name and key ID {v.name}+{v.key_id:08x}"
            )
        by_key[(v.name, v.key_id)] = v
    text, signatures = split_note(message)
    note = Note(text)
    for sig in signatures:
        verifier = by_key.get((sig.name, sig.key_id))
        if verifier is None:
            if sig not in note.unverified:
                note.unverified.append(sig)
            continue
        if not verifier.verify(text, sig.signature):
            raise EvidenceError(
                f"the note's signature by {sig.name}+{sig.key_id:08x} does not verify"
            )
        if all((s.name, s.key_id) != (sig.name, sig.key_id) for s in note.verified):
            note.verified.append(sig)
    if not note.verified:
        names = ", ".join(f"{v.name}+{v.key_id:08x}" for v in trusted) or "none given"
        raise EvidenceError(f"the note carries no signature by a trusted key ({names})")
    return note


def sign_note(text: bytes, signers: Sequence[Signer], keep: Sequence[Signature] = ()) -> bytes:
    """The note: text, blank line, the kept signatures, then one per signer."""
    check_text(text)
    if text.endswith(b"\n\n") or b"\n\n" in text:
        raise EvidenceError("a note's text cannot hold a blank line")
    lines = [s.line() for s in keep]
    for signer in signers:
        if not valid_key_name(signer.name):
            raise ConfigError(f"note key name {signer.name!r} is not valid")
        lines.append(Signature(signer.name, signer.key_id, signer.sign(text)).line())
    return text + b"\n" + "".join(lines).encode()
