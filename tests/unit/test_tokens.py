"""Token issuing and verification rules (pure logic, no servers)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.auth.tokens import TokenService
from shared.wire.errors import InvalidFields, NotFound, Unauthorized

KEY = "unit-test-key-0123456789-0123456789-0123456789"


def rsa_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode(), public.decode()


def hmac_token(claims: dict[str, object], key: bytes) -> str:
    """An HS256 token signed by hand: pyjwt itself refuses to use a PEM public key as an HMAC secret."""
    part = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in ({"alg": "HS256", "typ": "JWT"}, claims)]
    signature = base64.urlsafe_b64encode(hmac.new(key, b".".join(part), hashlib.sha256).digest()).rstrip(b"=")
    return b".".join([*part, signature]).decode()


def test_hs256_token_round_trips_to_its_user() -> None:
    """A token issued with the shared key verifies to the same user and expiry."""
    tokens = TokenService("HS256", KEY, KEY)
    token, expires_at = tokens.issue("alice", 60)
    identity = tokens.verify(token)
    assert identity.user_id == "alice" and identity.expires_at == expires_at


def test_expired_token_is_refused_as_expired() -> None:
    """A token past its exp is refused with a message saying so."""
    token = jwt.encode({"sub": "a", "exp": int(time.time()) - 1}, KEY, "HS256")
    with pytest.raises(Unauthorized, match="expired"):
        TokenService("HS256", KEY, KEY).verify(token)


def test_token_without_exp_is_refused() -> None:
    """exp is always required: a token that never expires is not accepted."""
    with pytest.raises(Unauthorized):
        TokenService("HS256", KEY, KEY).verify(jwt.encode({"sub": "a"}, KEY, "HS256"))


def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is refused."""
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, "none")
    with pytest.raises(Unauthorized):
        TokenService("HS256", KEY, KEY).verify(token)


def test_rs256_verifies_and_refuses_hmac_signed_with_the_public_key() -> None:
    """With RS256, tokens signed by the private key pass; an HS256 token keyed with the public key (algorithm confusion) fails."""
    private, public = rsa_pair()
    tokens = TokenService("RS256", public, private)
    token, _ = tokens.issue("bob", 60)
    assert tokens.verify(token).user_id == "bob"
    with pytest.raises(Unauthorized):
        tokens.verify(hmac_token({"sub": "mallory", "exp": 9999999999}, public.encode()))
    with pytest.raises(NotFound):
        TokenService("RS256", public).issue("bob", 60)


def test_issuer_and_audience_are_required_when_configured() -> None:
    """With iss/aud configured, a token lacking or mismatching them is refused."""
    strict = TokenService("HS256", KEY, KEY, issuer="push", audience="browsers")
    token, _ = strict.issue("carol", 60)
    assert strict.verify(token).user_id == "carol"
    loose, _ = TokenService("HS256", KEY, KEY).issue("carol", 60)
    with pytest.raises(Unauthorized):
        strict.verify(loose)


def test_ttl_outside_bounds_is_invalid() -> None:
    """A lifetime of zero or beyond the maximum is rejected as invalid input."""
    tokens = TokenService("HS256", KEY, KEY, max_ttl_seconds=100)
    for ttl in (0, 101):
        with pytest.raises(InvalidFields):
            tokens.issue("dave", ttl)


def test_topics_claim_round_trips_to_the_identity() -> None:
    """Topic names and prefix patterns given at issue come back in the verified identity; none gives an empty tuple."""
    tokens = TokenService("HS256", KEY, KEY)
    token, _ = tokens.issue("erin", 60, ["news", "room:*"])
    assert tokens.verify(token).topics == ("news", "room:*")
    plain, _ = tokens.issue("erin", 60)
    assert tokens.verify(plain).topics == () and "topics" not in jwt.decode(plain, KEY, ["HS256"])


def test_bad_topics_are_invalid_at_issue_and_unauthorized_in_a_token() -> None:
    """Issuing refuses a non-list, a bad pattern or too many patterns; a token carrying a bad claim is refused."""
    tokens = TokenService("HS256", KEY, KEY)
    for topics in ("news", ["bad topic"], ["*"], ["room*"], [f"t{i}" for i in range(101)]):
        with pytest.raises(InvalidFields):
            tokens.issue("frank", 60, topics)
    forged = jwt.encode({"sub": "a", "exp": int(time.time()) + 60, "topics": ["ok", 3]}, KEY, "HS256")
    with pytest.raises(Unauthorized):
        tokens.verify(forged)
