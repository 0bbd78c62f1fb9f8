"""Signing keys and detached signatures that ``openssl dgst -sha256`` accepts (RSA and EC)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from producers.errors import ConfigError

PRIVATE_KEY_FILE = "audit-private.pem"
PUBLIC_KEY_FILE = "audit-public.pem"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def generate_keypair(
    out_dir: Path, kind: str = "rsa", overwrite: bool = False
) -> tuple[Path, Path]:
    """Write audit-private.pem (mode 0600) and audit-public.pem into ``out_dir``."""
    if kind == "rsa":
        key: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ConfigError(f"key type {kind!r} is not supported: use rsa or ec")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return write_key_pair(
        out_dir / PRIVATE_KEY_FILE,
        pem,
        out_dir / PUBLIC_KEY_FILE,
        public_pem(key.public_key()),
        overwrite,
        "key pair",
    )


def write_key_pair(
    private_path: Path,
    private: bytes,
    public_path: Path,
    public: bytes,
    overwrite: bool,
    what: str,
) -> tuple[Path, Path]:
    """Write a key pair's files: the private one 0600; neither replaced without
    ``overwrite`` (a key made again orphans everything the old one signed)."""
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise ConfigError(
            f"{private_path} or {public_path} already exists; "
            f"move it away or pass --force to replace the {what}"
        )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(private_path, private)
    public_path.write_bytes(public)
    return private_path, public_path


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (0600), atomically."""
    # O_CREAT's mode applies only to a new file: an overwritten key keeps the old
    # file's mode, so write a fresh 0600 file beside it and rename it over the old one
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(data)
    os.replace(partial, path)


def fingerprint_of_der(der: bytes) -> str:
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the DER public key: `openssl pkey -pubin -outform DER | sha256sum`."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return fingerprint_of_der(der)


def _read(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


def load_private_key(path: Path) -> PrivateKey:
    data = _read(
        path,
        "signing key",
        "create one with `flagtrail keygen --out DIR` or "
        "set AUDIT_SIGNING_KEY_PATH / --signing-key",
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: only RSA and EC keys work with `openssl dgst -sha256`")
    return key


def load_public_key(path: Path) -> PublicKey:
    data = _read(path, "public key", "pass the auditor's registered key with --pubkey")
    return parse_public_key(data, str(path))


def parse_public_key(data: bytes, where: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{where} is not a PEM public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigError(f"{where}: only RSA and EC public keys are supported")
    return key


_PREHASHED = Prehashed(hashes.SHA256())


def sign_digest(sha256_digest: bytes, key: PrivateKey) -> bytes:
    """Sign a file by its SHA-256 (streamed by the caller): PKCS#1 v1.5 for RSA, DER
    ECDSA for EC, which is what `openssl dgst -sha256 -sign` makes."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(sha256_digest, padding.PKCS1v15(), _PREHASHED)
    return key.sign(sha256_digest, ec.ECDSA(_PREHASHED))


def signature_valid(sha256_digest: bytes, signature: bytes, key: PublicKey) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, sha256_digest, padding.PKCS1v15(), _PREHASHED)
        else:
            key.verify(signature, sha256_digest, ec.ECDSA(_PREHASHED))
    except InvalidSignature:
        return False
    return True
