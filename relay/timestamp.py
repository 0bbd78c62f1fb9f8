"""RFC 3161 trusted timestamps: ask a time-stamping authority (TSA) to sign a digest,
and check a token against a digest and the TSA certificates a verifier trusts.

A token proves that the digest existed at the TSA's genTime, so a package cannot be
back-dated or re-made later by whoever holds the signing key. ASN.1 is read and
written by asn1crypto (its ``tsp`` and ``cms`` definitions keep each value's
original DER, which the CMS signature covers); signatures and certificates are
checked by ``cryptography``.
"""

from __future__ import annotations

import hashlib
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asn1crypto import cms, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from producers.errors import BackendUnavailable, ConfigError, EvidenceError

TSA_URL_ENV = "FLAGTRAIL_TSA_URL"
TSA_CERTS_ENV = "FLAGTRAIL_TSA_CERTS"
REQUEST_TIMEOUT_S = 15.0
_MAX_RESPONSE = 1 << 20  # a token is a few KiB; refuse to buffer more than this
_MAX_CHAIN = 6
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


CLOCK_SLACK_S = 300.0  # a signer's clock and the TSA's may differ this much


def postdated(claimed: str, gen_time: datetime) -> bool | None:
    """Whether a signed RFC 3339 time lies past the TSA's genTime (beyond the slack):
    whoever signed it asked the TSA after, so such a time never happened. None when
    ``claimed`` is not a time."""
    try:
        moment = datetime.fromisoformat(claimed.replace("Z", "+00:00"))
        return (moment - gen_time).total_seconds() > CLOCK_SLACK_S
    except (ValueError, TypeError):
        return None


class TimestampError(EvidenceError):
    """A timestamp token does not prove what it should (exit 1)."""


@dataclass(frozen=True)
class TokenFacts:
    """What a checked token says."""

    gen_time: datetime
    tsa: str  # the signing certificate's subject
    serial: int
    policy: str
    trusted_by: str | None  # the trusted certificate it chains to, None when not checked


def new_nonce() -> int:
    return secrets.randbits(64)


def build_request(digest: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq for a SHA-256 digest, asking for the TSA's certificate."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": digest,
            },
            "nonce": nonce,
            "cert_req": True,
        }
    )
    return request.dump()


def request_token(url: str, digest: bytes, nonce: int, timeout: float = REQUEST_TIMEOUT_S) -> bytes:
    """Ask the TSA at ``url`` to stamp ``digest``; returns the token's DER (a CMS
    ContentInfo). Raises BackendUnavailable when the TSA cannot be reached or refuses,
    and TimestampError when its answer does not cover what was asked."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the TSA URL {url!r} is not an http(s) URL")
    http_request = urllib.request.Request(
        url,
        data=build_request(digest, nonce),
        headers={"Content-Type": "application/timestamp-query"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as answer:
            body = answer.read(_MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        raise BackendUnavailable(f"the TSA at {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackendUnavailable(f"the TSA at {url} cannot be reached ({reason})") from None
    if len(body) > _MAX_RESPONSE:
        raise BackendUnavailable(f"the TSA at {url} sent an answer over 1 MiB")
    try:
        response = tsp.TimeStampResp.load(body)
        status = response["status"]["status"].native
        token = response["time_stamp_token"]
    except (ValueError, TypeError, KeyError) as exc:
        raise BackendUnavailable(f"the TSA at {url} sent no TimeStampResp ({exc})") from None
    if status not in ("granted", "granted_with_mods") or token.native is None:
        text = response["status"]["status_string"].native
        raise BackendUnavailable(f"the TSA at {url} refused the request ({status}: {text})")
    der = token.dump()
    check_token(der, digest, nonce, trusted=())  # what it signed is what was asked
    return der


def load_tsa_certs(paths: Iterable[Path]) -> list[x509.Certificate]:
    """Trusted TSA or CA certificates from PEM files (each may hold several)."""
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"--tsa-cert: cannot read {path}: {exc.strerror}") from None
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ConfigError(f"--tsa-cert: {path} holds no PEM certificate") from None
        certs.extend(found)
    return certs


def _signed_data(token_der: bytes) -> cms.SignedData:
    try:
        info = cms.ContentInfo.load(token_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise TimestampError("the timestamp token is not CMS SignedData")
        signed = info["content"]
        if signed["encap_content_info"]["content_type"].native != "tst_info":
            raise TimestampError("the timestamp token does not hold a TSTInfo")
        return signed
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"the timestamp token is not valid DER ({exc})") from None


def _cert(value: cms.CertificateChoices) -> x509.Certificate | None:
    if value.name != "certificate":
        return None
    return x509.load_der_x509_certificate(value.chosen.dump())


def _matches_sid(cert: x509.Certificate, sid: cms.SignerIdentifier) -> bool:
    if sid.name == "issuer_and_serial_number":
        wanted = sid.chosen
        return (
            cert.serial_number == wanted["serial_number"].native
            and cert.issuer.public_bytes() == wanted["issuer"].dump()
        )
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return ski == sid.chosen.native


def _verify_signature(cert: x509.Certificate, signature: bytes, data: bytes, algo: str) -> None:
    key = cert.public_key()
    if algo not in _HASHES:
        raise TimestampError(f"the timestamp token uses digest {algo}, which is not accepted")
    chosen = _HASHES[algo]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), chosen)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(chosen))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            raise TimestampError("the TSA's key type is not supported")
    except InvalidSignature:
        raise TimestampError(
            "the timestamp token's signature does not check with its TSA certificate "
            "(the token was altered)"
        ) from None


def _check_ess(attrs: dict[str, object], cert: x509.Certificate) -> None:
    """RFC 3161 §2.4.1 / RFC 5816: the signed attributes name the signing certificate
    by its hash, so a token cannot be passed off as signed by another certificate."""
    der = cert.public_bytes(Encoding.DER)
    v2 = attrs.get("signing_certificate_v2")
    v1 = attrs.get("signing_certificate")
    if v2 is not None:
        first = v2[0]["certs"][0]  # type: ignore[index]
        algo = first["hash_algorithm"]["algorithm"].native
        if algo not in _HASHES:
            raise TimestampError(f"signing-certificate hash {algo} is not accepted")
        digest = hashlib.new(algo, der).digest()
    elif v1 is not None:
        first = v1[0]["certs"][0]  # type: ignore[index]
        digest = hashlib.sha1(der).digest()  # ESSCertID (v1) is SHA-1 by definition
    else:
        raise TimestampError("the timestamp token does not name its signing certificate")
    if first["cert_hash"].native != digest:
        raise TimestampError(
            "the timestamp token's signing-certificate attribute names another certificate"
        )


def _check_tsa_usage(cert: x509.Certificate) -> None:
    """RFC 3161 §2.3: a TSA certificate has one critical extendedKeyUsage, timeStamping only."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or not eku.critical or list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise TimestampError(
            "the timestamp token's signer is not a TSA certificate (extendedKeyUsage must "
            "be critical and timeStamping only)"
        )


def _valid_at(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _chain_to_trusted(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate],
    when: datetime,
) -> x509.Certificate:
    """The trusted certificate ``leaf`` is, or chains to through ``pool``; each link
    verified, valid at ``when``, issued by a CA."""
    current = leaf
    for _ in range(_MAX_CHAIN):
        if not _valid_at(current, when):
            raise TimestampError(
                f"certificate {current.subject.rfc4514_string()} was not valid at the "
                f"token's time {when.isoformat()}"
            )
        for anchor in trusted:
            if anchor == current:
                return anchor
        issuer = next(
            (
                c
                for c in (*trusted, *pool)
                if c != current and c.subject == current.issuer and _issued(c, current)
            ),
            None,
        )
        if issuer is None:  # also an untrusted self-signed root: the chain ends untrusted
            raise TimestampError(
                f"the TSA certificate {leaf.subject.rfc4514_string()} does not chain to a "
                "trusted TSA certificate (pass the TSA's CA with --tsa-cert or "
                f"{TSA_CERTS_ENV})"
            )
        if not _is_ca(issuer):
            raise TimestampError(f"{issuer.subject.rfc4514_string()} is not a CA certificate")
        current = issuer
    raise TimestampError("the TSA certificate's chain is too long")


def _issued(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_token(
    token_der: bytes,
    digest: bytes,
    nonce: int | None,
    trusted: Sequence[x509.Certificate],
) -> TokenFacts:
    """Check that the token stamps ``digest`` (SHA-256) with ``nonce`` (when given), that
    its CMS signature holds, and, when ``trusted`` is not empty, that its signer is a TSA
    certificate chaining to one of them. Raises TimestampError otherwise."""
    try:
        return _check_token(token_der, digest, nonce, trusted)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # asn1crypto parses lazily: a malformed field shows where it is first read
        raise TimestampError(f"the timestamp token is malformed ({exc})") from None


def _check_token(
    token_der: bytes,
    digest: bytes,
    nonce: int | None,
    trusted: Sequence[x509.Certificate],
) -> TokenFacts:
    signed = _signed_data(token_der)
    content = signed["encap_content_info"]["content"]
    tst: tsp.TSTInfo = content.parsed
    imprint = tst["message_imprint"]
    if imprint["hash_algorithm"]["algorithm"].native != "sha256":
        raise TimestampError("the timestamp token's imprint is not SHA-256")
    if imprint["hashed_message"].native != digest:
        raise TimestampError(
            "the timestamp token stamps another digest (a token of another file or package)"
        )
    if nonce is not None and tst["nonce"].native != nonce:
        raise TimestampError("the timestamp token's nonce is not the one this package asked for")
    signers = signed["signer_infos"]
    if len(signers) != 1:
        raise TimestampError("the timestamp token must have exactly one signer")
    signer = signers[0]
    attrs_value = signer["signed_attrs"]
    if not attrs_value:
        raise TimestampError("the timestamp token has no signed attributes")
    attrs = {a["type"].native: a["values"] for a in attrs_value}
    if attrs.get("content_type") is None or attrs["content_type"][0].native != "tst_info":
        raise TimestampError("the timestamp token's signed content type is not TSTInfo")
    algo = signer["digest_algorithm"]["algorithm"].native
    if algo not in _HASHES:
        raise TimestampError(f"the timestamp token uses digest {algo}, which is not accepted")
    content_digest = hashlib.new(algo, content.contents).digest()
    if attrs.get("message_digest") is None or attrs["message_digest"][0].native != content_digest:
        raise TimestampError(
            "the timestamp token's TSTInfo does not match its signed digest (the token was altered)"
        )
    pool = [c for c in (_cert(v) for v in signed["certificates"] or []) if c is not None]
    cert = next(
        (c for c in (*pool, *trusted) if _matches_sid(c, signer["sid"])),
        None,
    )
    if cert is None:
        raise TimestampError("the timestamp token does not carry its TSA's certificate")
    # the signature covers the signed attributes as a DER SET (RFC 5652 §5.4)
    _verify_signature(cert, signer["signature"].native, _attrs_as_set(attrs_value), algo)
    _check_ess(attrs, cert)
    gen_time: datetime = tst["gen_time"].native
    anchor = None
    if trusted:
        _check_tsa_usage(cert)
        anchor = _chain_to_trusted(cert, pool, trusted, gen_time)
    return TokenFacts(
        gen_time=gen_time,
        tsa=cert.subject.rfc4514_string(),
        serial=tst["serial_number"].native,
        policy=tst["policy"].native,
        trusted_by=anchor.subject.rfc4514_string() if anchor is not None else None,
    )


def _attrs_as_set(attrs: cms.CMSAttributes) -> bytes:
    """The signed attributes re-tagged from [0] IMPLICIT to a universal SET, their
    contents byte for byte as received."""
    return attrs.untag().dump()
