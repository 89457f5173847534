"""Verifying the webhooks collect's endpoints are sent (the Standard Webhooks specification, standardwebhooks.com).

Each event is one POST whose body is ``{"type", "timestamp", "data"}`` and whose headers are
``webhook-id`` (unique per event, the same on every retry: deduplicate on it), ``webhook-timestamp``
(seconds since the epoch, when this attempt was sent) and ``webhook-signature``: one or more
space-separated ``v1,<base64 HMAC-SHA256>`` over ``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed
by the base64-decoded part of the endpoint's secret after ``whsec_``. While a secret is being
rotated the header carries a signature by each secret, so a receiver holding either one verifies.

    from pushcluster.webhooks import verify, WebhookVerificationError
    event = verify(secret, request.headers, await request.body())  # {"type", "timestamp", "data"}

The service signs with ``sign``, so the two can never disagree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60  # the specification's: an older or newer timestamp is refused (a replayed request)


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh webhook signed by the secret given."""


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise WebhookVerificationError("the secret is not whsec_ and base64") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: a signature by each secret, space-separated."""
    return " ".join(sign(s, webhook_id, timestamp, body) for s in secrets_)


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *, tolerance: int = TOLERANCE_SECONDS,
           now: float | None = None) -> dict[str, Any]:
    """The event of a genuine webhook request, or ``WebhookVerificationError``. ``headers`` are looked up in lower
    case and as given (a Starlette or aiohttp request's headers, or a plain dict)."""
    def header(name: str) -> str:
        value = headers.get(name) or headers.get(name.title())
        if not value:
            raise WebhookVerificationError(f"missing {name} header")
        return value

    raw = body.encode() if isinstance(body, str) else body
    webhook_id, stamp, signatures = header("webhook-id"), header("webhook-timestamp"), header("webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    expected = sign(secret, webhook_id, timestamp, raw).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures.split(" ") if s.startswith("v1,")):
        raise WebhookVerificationError("no signature matches")
    try:
        event: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return event
