"""An evidence package's RFC 3161 timestamp: how export binds it, how verify checks it.

The token stamps the SHA-256 of the manifest's exact bytes, so it cannot sit inside
the manifest; it is ``<stem>.manifest.json.tsr`` beside it. The signed manifest
names the TSA, the token file and the request's nonce (chosen before the manifest
is written), so the token is bound to this manifest twice: by the digest it stamps
and by the nonce the signed manifest expected. A token taken from another package
stamps another digest and carries another nonce.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from producers.errors import BackendUnavailable, EvidenceError
from relay.manifest import PackagePaths, read_file
from relay.timestamp import (
    TSA_CERTS_ENV,
    TSA_URL_ENV,
    TimestampError,
    check_token,
    load_tsa_certs,
    new_nonce,
    postdated,
    request_token,
)

TRUSTED_TSA_CERT = "TRUSTED-TSA-CA.pem"  # what the manifest's openssl command calls it


def token_path(paths: PackagePaths) -> Path:
    return paths.manifest.with_name(paths.manifest.name + ".tsr")


def tsa_url(given: str | None, disabled: bool) -> str | None:
    """The TSA to ask at export: --tsa-url, else FLAGTRAIL_TSA_URL; None with --no-timestamp."""
    if disabled:
        return None
    return given or os.environ.get(TSA_URL_ENV) or None


def trusted_tsa_certs(given: Sequence[str]) -> list[x509.Certificate]:
    """--tsa-cert files, else FLAGTRAIL_TSA_CERTS (paths separated by ':')."""
    names = list(given) or [p for p in os.environ.get(TSA_CERTS_ENV, "").split(os.pathsep) if p]
    return load_tsa_certs(Path(n) for n in names)


def plan(url: str, paths: PackagePaths) -> dict[str, Any]:
    """The manifest's ``timestamp`` field, written before the token is asked for."""
    token = token_path(paths).name
    return {
        "tsa_url": url,
        "hash_algorithm": "sha256",
        "nonce": str(new_nonce()),  # a string: JSON numbers past 2^53 are not portable
        "token_file": token,
        "verify_command": (
            f"openssl ts -verify -data {paths.manifest.name} -in {token} -token_in "
            f"-CAfile {TRUSTED_TSA_CERT}"
        ),
    }


def obtain(stamp: dict[str, Any], manifest_data: bytes) -> bytes:
    """The TSA's token over the manifest's bytes (BackendUnavailable if it cannot give one)."""
    digest = hashlib.sha256(manifest_data).digest()
    return request_token(stamp["tsa_url"], digest, int(stamp["nonce"]))


def discard_package(paths: PackagePaths) -> None:
    """An export that cannot be stamped leaves no package behind (the shared public key stays)."""
    for path in (
        paths.jsonl,
        paths.signature,
        paths.summary,
        paths.link,
        paths.manifest,
        paths.manifest_signature,
        token_path(paths),
    ):
        path.unlink(missing_ok=True)


def stamp_failed(exc: BackendUnavailable) -> BackendUnavailable:
    return BackendUnavailable(
        f"{exc}: nothing was exported, since a TSA is configured (retry when it answers, "
        "or export with --no-timestamp to leave the package unstamped)"
    )


def check_package(
    paths: PackagePaths,
    manifest: dict[str, Any],
    manifest_data: bytes,
    trusted: Sequence[x509.Certificate],
) -> tuple[str, str | None]:
    """(what to report, the failure if any) for the package's timestamp."""
    stamp = manifest.get("timestamp")
    if stamp is None:
        if trusted:
            return "MISSING", (
                "the package has no timestamp token, but a trusted TSA was given "
                "(--tsa-cert or FLAGTRAIL_TSA_CERTS): it was exported unstamped"
            )
        return "none (exported without a TSA)", None
    if (
        not isinstance(stamp, dict)
        or stamp.get("token_file") != token_path(paths).name
        or not isinstance(stamp.get("nonce"), str)
        or not stamp["nonce"].isdigit()
    ):
        return "INVALID", "the manifest's timestamp field is malformed"
    try:
        token = read_file(token_path(paths), "timestamp token")
    except EvidenceError as exc:  # a manifest that promises a token lacks it
        return "MISSING", str(exc)
    digest = hashlib.sha256(manifest_data).digest()
    try:
        facts = check_token(token, digest, int(stamp["nonce"]), trusted)
    except TimestampError as exc:
        return "INVALID", str(exc)
    when = facts.gen_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    claimed = str(manifest.get("generated_at"))
    late = postdated(claimed, facts.gen_time)
    if late is None:
        return "INVALID", f"the manifest's generated_at {claimed[:40]!r} is not a time"
    if late:  # export writes the manifest, then asks the TSA: it cannot postdate the token
        return "INVALID", (
            f"the manifest says it was generated_at {claimed}, later than {when}, when the "
            "TSA stamped it: a restated, postdated manifest"
        )
    if facts.trusted_by is None:
        return (
            f"token covers this manifest, genTime {when}, by {facts.tsa}; its TSA is NOT "
            "checked (pass the TSA's certificate with --tsa-cert or FLAGTRAIL_TSA_CERTS)",
            None,
        )
    return (
        f"valid RFC 3161 token over this manifest, genTime {when}, by {facts.tsa} "
        f"(chains to trusted {facts.trusted_by}), serial {facts.serial}",
        None,
    )
