"""The client library's retry decisions (pure logic)."""

from __future__ import annotations

import pytest

from pushcluster.client import PushError, RetryPolicy, post


def test_503_429_and_unreachable_are_retried_with_a_wait_under_the_cap() -> None:
    """A 503, a 429 or no answer at all gives a wait between 0 and the capped exponential backoff."""
    policy = RetryPolicy(attempts=5, base=0.5, cap=2.0)
    for attempt, status in enumerate((503, 429, 0, 503)):
        assert 0 <= policy.judge(attempt, status, "") <= min(2.0, 0.5 * 2 ** attempt)


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    """collect's Retry-After seconds are the wait, never more than the cap."""
    policy = RetryPolicy(cap=5.0)
    assert policy.judge(0, 429, "", "3") == 3.0
    assert policy.judge(0, 429, "", "60") == 5.0


def test_other_errors_and_the_last_attempt_raise_collects_code() -> None:
    """A 422 raises at once with collect's code and message; a 503 on the last attempt raises too."""
    policy = RetryPolicy(attempts=2)
    with pytest.raises(PushError) as bad:
        policy.judge(0, 422, '{"error": {"code": "invalid", "message": "user_id is required"}}')
    assert (bad.value.status, bad.value.code, bad.value.message) == (422, "invalid", "user_id is required")
    with pytest.raises(PushError) as down:
        policy.judge(1, 503, "not json")
    assert (down.value.status, down.value.code) == (503, "http")


def test_every_post_carries_an_idempotency_key_made_once() -> None:
    """A post without a key of its own gets a random one, fixed for all its retries; a given key is kept."""
    call = post({"user_id": "u", "payload": 1}, None)
    assert len(call.headers["Idempotency-Key"]) == 32
    assert post({"user_id": "u", "payload": 1}, "order-1").headers["Idempotency-Key"] == "order-1"
