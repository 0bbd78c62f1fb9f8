"""Edge cases and attacks on token verification, with tokens signed here by local keys.

These test the verifier's own refusals (alg none, alg confusion, kid tricks,
huge key sets, issuer spelling, duplicate claims, clock skew); the provider
itself is exercised in test_real_provider.py. Each attack names the check that
stops it: the test fails without that check.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from producers.errors import BackendUnavailable, ConfigError
from producers.oidc.jwks import KeyCache
from producers.oidc.settings import OidcSettings, parse_oidc
from producers.oidc.tokens import TokenRefused, TokenVerifier

ISSUER = "https://idp.example.com"
NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return json.loads(algorithm.to_jwk(key.public_key())) | {"kid": kid, **extra}


def settings(**overrides: Any) -> OidcSettings:
    table = {"issuer": ISSUER, "audience": "flagtrail", "group_roles": {"rm": ["release-manager"]}}
    return parse_oidc(table | overrides, "test")


class Provider:
    """A stand-in for the provider's two documents, counting what is fetched."""

    def __init__(self, keys: list[dict[str, Any]], issuer: str = ISSUER) -> None:
        self.documents = {
            f"{ISSUER}/.well-known/openid-configuration": {
                "issuer": issuer,
                "jwks_uri": f"{ISSUER}/jwks",
            },
            f"{ISSUER}/jwks": {"keys": keys},
        }
        self.fetched: list[str] = []

    def fetch(self, url: str, what: str) -> Any:
        self.fetched.append(url)
        return self.documents[url]


def verifier(
    keys: list[dict[str, Any]] | None = None, provider: Provider | None = None, **overrides: Any
) -> TokenVerifier:
    provider = provider or Provider(
        keys if keys is not None else [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1")]
    )
    config = settings(**overrides)
    return TokenVerifier(config, KeyCache(config, provider.fetch), clock=lambda: NOW)


def claims(**overrides: Any) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": "flagtrail",
        "sub": "alice@example.com",
        "groups": ["rm"],
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "jti": "t-1",
    } | overrides


def sign(payload: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str = "r1") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: str, payload: str, key: Any = RSA_KEY, alg: str = "RS256") -> str:
    """A token over exactly these JSON texts (duplicates and all), properly signed."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}".encode()
    algorithm = jwt.get_algorithm_by_name(alg)
    return f"{signing_input.decode()}.{b64(algorithm.sign(signing_input, key))}"


def refused(token: str, verifier_: TokenVerifier | None = None) -> str:
    with pytest.raises(TokenRefused) as caught:
        (verifier_ or verifier()).verify(token)
    return caught.value.reason


def test_both_algorithms_verify() -> None:
    assert verifier().verify(sign(claims())).subject == "alice@example.com"
    token = verifier().verify(sign(claims(), EC_KEY, "ES256", "e1"))
    assert (token.algorithm, token.key_id, token.groups) == ("ES256", "e1", ("rm",))


def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "kid": "r1", "typ": "at+jwt"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}.x"
    assert "algorithm 'none'" in refused(token)


def test_rsa_public_key_as_hmac_secret_is_refused() -> None:
    # the classic confusion: HS256 keyed with the provider's public key PEM
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = json.dumps({"alg": "HS256", "kid": "r1", "typ": "at+jwt"})
    signing_input = f"{b64(header.encode())}.{b64(json.dumps(claims()).encode())}".encode()
    import hashlib
    import hmac

    mac = hmac.new(pem, signing_input, hashlib.sha256).digest()
    assert "algorithm 'HS256'" in refused(f"{signing_input.decode()}.{b64(mac)}")


def test_a_key_of_another_kind_never_verifies_the_other_algorithm() -> None:
    # header says ES256 but names the RSA key's kid
    token = sign(claims(), EC_KEY, "ES256", "r1")
    assert "is a RS256 key" in refused(token)


def test_symmetric_and_private_keys_in_the_jwks_are_ignored() -> None:
    oct_key = {"kty": "oct", "kid": "h1", "k": b64(b"secret" * 8), "alg": "HS256"}
    private = json.loads(RSAAlgorithm.to_jwk(RSA_KEY)) | {"kid": "p1"}
    v = verifier([oct_key, private, jwk(RSA_KEY, "r1")])
    assert "not among" in refused(sign(claims(), kid="p1"), v)
    assert v.verify(sign(claims())).key_id == "r1"


@pytest.mark.parametrize(
    "kid", ["../../../etc/passwd", "r1/../r1", "r1\x00", "http://evil/jwks", "r1 ", "x" * 257]
)
def test_kid_tricks_find_no_key(kid: str) -> None:
    reason = refused(sign(claims(), kid=kid))
    assert "not among" in reason or "usable key id" in reason


@pytest.mark.parametrize("kid", [None, 7, ["r1"], {"kid": "r1"}, ""])
def test_a_kid_that_is_not_a_string_is_refused(kid: object) -> None:
    header = json.dumps({"alg": "RS256", "kid": kid, "typ": "at+jwt"})
    assert "usable key id" in refused(raw_token(header, json.dumps(claims())))


def test_a_huge_jwks_is_refused_not_parsed() -> None:
    keys = [jwk(RSA_KEY, f"k{n}") for n in range(51)]
    with pytest.raises(BackendUnavailable, match="more than jwks_max_keys"):
        verifier(keys).verify(sign(claims()))


def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    provider = Provider([jwk(RSA_KEY, "r1")])
    v = verifier(provider=provider)
    v.verify(sign(claims()))
    for n in range(100):
        refused(sign(claims(), kid=f"made-up-{n}"), v)
    assert provider.fetched.count(f"{ISSUER}/jwks") == 1


@pytest.mark.parametrize(
    "token_issuer", [ISSUER + "/", "https://IDP.example.com", "idp.example.com"]
)
def test_the_issuer_must_match_exactly(token_issuer: str) -> None:
    assert "issuer" in refused(sign(claims(iss=token_issuer)))


def test_a_discovery_document_naming_another_issuer_is_a_config_error() -> None:
    provider = Provider([jwk(RSA_KEY, "r1")], issuer=ISSUER + "/")
    with pytest.raises(ConfigError, match="names issuer"):
        verifier(provider=provider).verify(sign(claims()))


def test_a_trailing_slash_issuer_still_finds_discovery_without_a_double_slash() -> None:
    assert settings(issuer=ISSUER + "/").discovery_url == (
        f"{ISSUER}/.well-known/openid-configuration"
    )


@pytest.mark.parametrize("issuer", ["http://idp.example.com", "ftp://x", "idp.example.com"])
def test_an_issuer_that_is_not_https_is_refused_outside_loopback(issuer: str) -> None:
    with pytest.raises(ConfigError, match="https"):
        settings(issuer=issuer)
    assert settings(issuer="http://127.0.0.1:8080").issuer == "http://127.0.0.1:8080"


def test_duplicate_claims_are_refused() -> None:
    header = json.dumps({"alg": "RS256", "kid": "r1", "typ": "at+jwt"})
    body = json.dumps(claims())[:-1] + ', "sub": "bob@example.com"}'
    assert "appears twice" in refused(raw_token(header, body))


def test_duplicate_header_members_are_refused() -> None:
    header = '{"alg":"RS256","kid":"r1","typ":"at+jwt","alg":"none"}'
    assert "appears twice" in refused(raw_token(header, json.dumps(claims())))


def test_a_groups_claim_that_is_a_string_is_refused() -> None:
    assert "not a list" in refused(sign(claims(groups="rm")))
    assert "not a list" in refused(sign(claims(groups=["rm", 3])))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(NOW) - 31}, "expired"),
        ({"nbf": int(NOW) + 31}, "not valid yet"),
        ({"iat": int(NOW) + 31}, "issued in the future"),
        ({"exp": None}, "no numeric expiry"),
        ({"exp": True}, "no numeric expiry"),
        ({"exp": "1800000300"}, "no numeric expiry"),
        ({"nbf": "soon"}, "not a number"),
    ],
)
def test_clock_checks_beyond_the_leeway_refuse(overrides: dict[str, Any], reason: str) -> None:
    payload = {k: v for k, v in claims(**overrides).items() if v is not None}
    assert reason in refused(sign(payload))


def test_clock_skew_within_the_leeway_is_accepted() -> None:
    skewed = claims(exp=int(NOW) - 29, nbf=int(NOW) + 29, iat=int(NOW) + 29)
    assert verifier().verify(sign(skewed)).subject == "alice@example.com"
    assert "expired" in refused(sign(skewed), verifier(leeway_seconds=0))


@pytest.mark.parametrize(
    "audience", ["other", ["other", "another"], None, {"aud": "flagtrail"}, "flagtrail-admin"]
)
def test_the_audience_must_include_ours(audience: object) -> None:
    assert "audience" in refused(sign(claims(aud=audience)))


def test_an_audience_list_holding_ours_is_accepted() -> None:
    assert verifier().verify(sign(claims(aud=["other", "flagtrail"]))).subject


@pytest.mark.parametrize("subject", ["", "   ", None, 42, "x" * 257])
def test_an_unusable_subject_is_refused(subject: object) -> None:
    payload = {k: v for k, v in claims(sub=subject).items() if v is not None}
    assert "subject" in refused(sign(payload))


@pytest.mark.parametrize(
    "token", ["", "a.b", "a.b.c.d", "..", "!!!.???.***", "x" * 20000, "e30.e30."]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    refused(token)


def test_critical_header_extensions_are_refused() -> None:
    header = json.dumps({"alg": "RS256", "kid": "r1", "typ": "at+jwt", "crit": ["exp"], "exp": 1})
    assert "critical" in refused(raw_token(header, json.dumps(claims())))
    header = json.dumps({"alg": "RS256", "kid": "r1", "typ": "at+jwt", "b64": False})
    assert "critical" in refused(raw_token(header, json.dumps(claims())))


def test_a_signature_over_other_bytes_is_refused() -> None:
    one, two = sign(claims()), sign(claims(sub="bob@example.com"))
    assert "signature" in refused(".".join([*one.split(".")[:2], two.split(".")[2]]))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"algorithms": []}, "algorithms"),
        ({"group_roles": {}}, "group_roles"),
        ({"group_roles": {"g": "release-manager"}}, "group_roles"),
        ({"leeway_seconds": 3600}, "leeway_seconds"),
        ({"require_tokens": "yes"}, "require_tokens"),
        ({"audiance": "x"}, "unknown setting"),
        ({"issuer": ""}, "issuer"),
    ],
)
def test_bad_oidc_settings_are_clear_config_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**table)


def test_the_shipped_oidc_example_policy_parses_with_every_setting() -> None:
    from pathlib import Path

    from producers.policy import load_policy

    example = Path(__file__).resolve().parents[2] / "deploy/examples/policy-oidc.toml"
    oidc = load_policy(example).oidc
    assert oidc is not None and oidc.issuer == "https://login.example.com"
    assert oidc.roles_for(["flag-release-managers", "unknown"]) == {"release-manager"}


def test_only_access_tokens_are_accepted_by_their_type() -> None:
    # an ID token (typ JWT) the provider signed with our audience is not an access token
    id_token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"})
    assert "type (typ)" in refused(id_token)
    assert verifier(token_types=["JWT"]).verify(id_token).subject == "alice@example.com"
    media = jwt.encode(
        claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1", "typ": "application/at+jwt"}
    )
    assert verifier().verify(media).subject == "alice@example.com"


def test_an_expiry_years_ahead_is_refused() -> None:
    assert "a year ahead" in refused(sign(claims(exp=int(NOW) + 400 * 86400)))
    assert "a year ahead" in refused(sign(claims(exp=1e308)))


def test_an_unreachable_provider_is_asked_once_per_interval_not_once_per_token() -> None:
    calls: list[str] = []

    def down(url: str, what: str) -> Any:
        calls.append(url)
        raise BackendUnavailable(f"cannot fetch the identity provider's {what} {url}")

    config = settings()
    v = TokenVerifier(config, KeyCache(config, down), clock=lambda: NOW)
    for _ in range(20):
        with pytest.raises(BackendUnavailable, match="cannot fetch"):
            v.verify(sign(claims()))
    assert len(calls) == 1
