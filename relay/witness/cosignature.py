"""C2SP tlog-cosignature, Ed25519 (cosignature/v1): the witness's key and signatures.

A cosignature is a note signature line on a checkpoint whose bytes are a big-endian
u64 POSIX time followed by an Ed25519 signature over::

    cosignature/v1
    time <that time>
    <the checkpoint's whole note text>

The key ID is SHA-256(name || "\\n" || 0x04 || public key)[:4] (0x04: a cosignature
key, distinct from a log's 0x01 note key), so a witness key can never be mistaken for
a log key. Keys travel as text like note keys: ``name+<8 hex>+base64(0x04 || key)``
for the verifier, ``PRIVATE+KEY+name+<8 hex>+base64(0x04 || seed)`` for the signer.
The note format itself (relay.proofs.note) checks the lines.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from producers.errors import ConfigError, EvidenceError
from relay.proofs.note import Signature, decode_key_base64, key_id, split_note, valid_key_name

ALG_COSIGNATURE_V1 = 0x04
HEADER = b"cosignature/v1\n"
_MAX_TIME = (1 << 63) - 1


def cosigned_message(checkpoint_text: bytes, timestamp: int) -> bytes:
    return HEADER + f"time {timestamp}\n".encode() + checkpoint_text


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's public key; a relay.proofs.note.Verifier, so open_note checks lines."""

    name: str
    key_id: int
    public_key: bytes  # the raw 32 bytes

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != 8 + 64:
            return False
        (stamp,) = struct.unpack(">Q", signature[:8])
        if stamp > _MAX_TIME:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                signature[8:], cosigned_message(text, stamp)
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"


@dataclass(frozen=True)
class Cosigner:
    name: str
    key_id: int
    private_key: Ed25519PrivateKey

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(
            self.name, self.key_id, self.private_key.public_key().public_bytes_raw()
        )

    def cosign(self, checkpoint_text: bytes, timestamp: int | None = None) -> Signature:
        """A cosignature/v1 on the checkpoint text, at ``timestamp`` (default: now)."""
        stamp = int(time.time()) if timestamp is None else timestamp
        signed = self.private_key.sign(cosigned_message(checkpoint_text, stamp))
        return Signature(self.name, self.key_id, struct.pack(">Q", stamp) + signed)


def _split_key(text: str, private: bool) -> tuple[str, int, bytes]:
    parts = text.strip().split("+", 4 if private else 2)
    if private:
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ConfigError("a witness signer key looks like PRIVATE+KEY+name+<8 hex>+<base64>")
        parts = parts[2:]
    what = "witness signer key" if private else "witness key"
    if len(parts) != 3 or not valid_key_name(parts[0]) or len(parts[1]) != 8:
        raise ConfigError(
            f"a {what} looks like {'PRIVATE+KEY+' if private else ''}name+<8 hex digits>+"
            f"<base64>, not {text.strip()[:40]!r}…"
        )
    name, hex_id, blob = parts
    try:
        stated = int(hex_id, 16)
    except ValueError:
        raise ConfigError(f"{what} {name}: key ID {hex_id!r} is not hex") from None
    raw = decode_key_base64(blob, f"{what} {name}")
    if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
        raise ConfigError(
            f"{what} {name} is not a cosignature/v1 Ed25519 key (type 0x04, 32 bytes)"
        )
    return name, stated, raw[1:]


def parse_witness_vkey(text: str) -> CosignatureVerifier:
    name, stated, public = _split_key(text, private=False)
    if key_id(name, bytes([ALG_COSIGNATURE_V1]) + public) != stated:
        raise ConfigError(f"witness key {name}: key ID {stated:08x} does not match the key")
    return CosignatureVerifier(name, stated, public)


def parse_witness_skey(text: str) -> Cosigner:
    name, stated, seed = _split_key(text, private=True)
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = bytes([ALG_COSIGNATURE_V1]) + private.public_key().public_bytes_raw()
    if key_id(name, public) != stated:
        raise ConfigError(f"witness signer key {name}: key ID {stated:08x} does not match")
    return Cosigner(name, stated, private)


def generate_witness_key(name: str) -> tuple[str, str]:
    """A new witness key pair as (signer key text, verifier key text)."""
    if not valid_key_name(name):
        raise ConfigError(f"witness name {name!r} must be non-empty, without spaces or '+'")
    private = Ed25519PrivateKey.generate()
    public = bytes([ALG_COSIGNATURE_V1]) + private.public_key().public_bytes_raw()
    kid = key_id(name, public)
    seed = bytes([ALG_COSIGNATURE_V1]) + private.private_bytes_raw()
    return (
        f"PRIVATE+KEY+{name}+{kid:08x}+{base64.b64encode(seed).decode()}",
        f"{name}+{kid:08x}+{base64.b64encode(public).decode()}",
    )


def cosignature_time(signature: Signature) -> int:
    return struct.unpack(">Q", signature.signature[:8])[0]


def verified_cosigners(note: bytes, witnesses: Sequence[CosignatureVerifier]) -> dict[str, int]:
    """{witness name: cosignature time} for each given witness whose cosignature on the
    note verifies. A line that claims a witness's name and key ID but does not verify is
    an EvidenceError (a forged cosignature), never a silent skip; other lines are ignored."""
    text, signatures = split_note(note)
    by_key = {(w.name, w.key_id): w for w in witnesses}
    found: dict[str, int] = {}
    for sig in signatures:
        witness = by_key.get((sig.name, sig.key_id))
        if witness is None:
            continue
        if not witness.verify(text, sig.signature):
            raise EvidenceError(f"the cosignature by witness {sig.name} does not verify")
        found[witness.name] = cosignature_time(sig)
    return found
