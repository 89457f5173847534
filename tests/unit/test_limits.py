"""The token bucket and address counts behind a push node's client limits (pure logic)."""

from __future__ import annotations

import pytest

from services.push.limits import AddressCount
from shared.infra.token_bucket import TokenBucket
from shared.wire.errors import RateLimited


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    """A full bucket of 20 pays for 20 at once, refuses the 21st, and pays 5 more after half a second at 10/s."""
    bucket = TokenBucket.full(rate=10, burst=20, now=100.0)
    assert bucket.take(20, 100.0)
    assert not bucket.take(1, 100.0)
    assert bucket.take(5, 100.5)
    assert not bucket.take(1, 100.5)


def test_bucket_never_saves_more_than_its_burst() -> None:
    """An hour idle still leaves only the burst to spend."""
    bucket = TokenBucket.full(rate=10, burst=20, now=0.0)
    assert not bucket.take(21, 3600.0)
    assert bucket.take(20, 3600.0)


def test_address_count_refuses_past_the_limit_until_one_closes() -> None:
    """Two open from one address with a limit of 2 refuse a third there, not elsewhere, until one closes."""
    count = AddressCount(2)
    count.opened("10.0.0.1")
    count.opened("10.0.0.1")
    with pytest.raises(RateLimited):
        count.check("10.0.0.1")
    count.check("10.0.0.2")
    count.closed("10.0.0.1")
    count.check("10.0.0.1")


def test_address_limit_zero_means_none() -> None:
    """A limit of 0 never refuses."""
    count = AddressCount(0)
    for _ in range(10_000):
        count.opened("10.0.0.1")
    count.check("10.0.0.1")
