"""An API key's posting and query rates: token buckets per key and kind, with the wait to tell the caller (pure logic)."""

from __future__ import annotations

import pytest

from services.collect.quotas import KeyRates
from shared.wire.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusal(rates: KeyRates, cost: int) -> RateLimited:
    """The refusal of a post of ``cost`` deliveries by shop (which must be refused)."""
    with pytest.raises(RateLimited) as refused:
        rates.spend("deliveries", "shop", cost)
    return refused.value


def test_a_key_spends_five_seconds_of_its_rate_then_waits_as_long_as_retry_after_says() -> None:
    """At 10/s a key posts 50 deliveries at once, is refused the 51st with Retry-After 1, and is served again 1 s on."""
    clock = Clock()
    rates = KeyRates({"deliveries": 10}, clock)
    rates.spend("deliveries", "shop", 50)
    refused = refusal(rates, 5)
    assert refused.headers() == {"Retry-After": "1"} and refused.status == 429
    clock.now += 1
    rates.spend("deliveries", "shop", 5)


def test_keys_and_kinds_have_their_own_buckets_and_zero_means_no_limit() -> None:
    """One key's exhausted rate leaves another key and another kind untouched; a rate of 0 never refuses."""
    rates = KeyRates({"deliveries": 1, "presence": 0}, Clock())
    rates.spend("deliveries", "shop", 5)
    assert refusal(rates, 1).retry_after == 1
    rates.spend("deliveries", "billing", 5)
    for _ in range(1000):
        rates.spend("presence", "shop", 1)


def test_a_post_larger_than_the_bucket_passes_once_the_bucket_is_full() -> None:
    """A post costs at most a full bucket: with 50 saved it goes through, and the key then waits the full 5 s."""
    rates = KeyRates({"deliveries": 10}, Clock())
    rates.spend("deliveries", "shop", 10_000)
    assert refusal(rates, 10_000).retry_after == 5
