"""The Standard Webhooks signature scheme as pushcluster.webhooks signs and verifies it, against the specification's
construction written out here with the standard library."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pushcluster.webhooks import WebhookVerificationError, new_secret, sign, signature_header, verify

# The example of the Standard Webhooks specification's reference libraries (standard-webhooks, test vectors)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TIMESTAMP = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_signature_is_the_specifications_hmac_over_id_timestamp_and_body() -> None:
    """sign() is base64(HMAC-SHA256(base64-decoded secret, "{id}.{timestamp}.{body}")) with the "v1," prefix."""
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{SPEC_ID}.{SPEC_TIMESTAMP}.".encode() + SPEC_BODY, hashlib.sha256).digest())
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == "v1," + expected.decode() == SPEC_SIGNATURE


def headers(signature: str, timestamp: int = SPEC_TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": SPEC_ID, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_verify_returns_the_event_of_a_genuine_fresh_request() -> None:
    """A request signed with the secret, within the tolerance, verifies and yields its JSON body."""
    assert verify(SPEC_SECRET, headers(SPEC_SIGNATURE), SPEC_BODY, now=SPEC_TIMESTAMP + 10) == {"test": 2432232314}


def test_verify_accepts_any_of_several_signatures_during_a_rotation() -> None:
    """A header with the old and the new secret's signatures verifies under either secret."""
    other = new_secret()
    both = signature_header([other, SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    for secret in (other, SPEC_SECRET):
        assert verify(secret, headers(both), SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize(("change", "reason"), [
    ({"body": b'{"test": 2432232315}'}, "no signature matches"),
    ({"secret": new_secret()}, "no signature matches"),
    ({"now": SPEC_TIMESTAMP + 301}, "too old"),
    ({"now": SPEC_TIMESTAMP - 301}, "too new"),
    ({"headers": {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP)}}, "missing webhook-signature"),
    ({"headers": headers("v2," + SPEC_SIGNATURE[3:])}, "no signature matches"),
])
def test_verify_refuses_a_changed_stale_or_unsigned_request(change: dict[str, object], reason: str) -> None:
    """A changed body, another secret, a timestamp past the 5-minute tolerance or a missing signature is refused."""
    args = {"secret": SPEC_SECRET, "headers": headers(SPEC_SIGNATURE), "body": SPEC_BODY, "now": SPEC_TIMESTAMP} | change
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(args["secret"], args["headers"], args["body"], now=args["now"])  # type: ignore[arg-type]


def test_new_secrets_are_whsec_and_32_random_bytes() -> None:
    """A secret is whsec_ and base64 of 32 bytes, and no two are alike."""
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(len(base64.b64decode(s.removeprefix("whsec_"))) == 32 for s in secrets)
