"""The circuit breaker's closed / open / half-open transitions (pure logic)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import SlotNotCoveredError

from shared.infra.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from shared.infra.clients import REDIS_FAILURES
from shared.wire.errors import Unavailable


async def fail() -> None:
    raise ConnectionError("down")


async def succeed() -> str:
    return "ok"


async def test_breaker_opens_after_threshold_then_half_opens_and_closes() -> None:
    """Three failures open it (calls refused at once, push_breaker_open 1); after the cooldown one trial success
    closes it (push_breaker_open 0)."""
    breaker = CircuitBreaker("dep", threshold=3, cooldown=0.05, failures=(ConnectionError,))
    for _ in range(3):
        with pytest.raises(Unavailable):
            await breaker.call(fail)
    assert breaker.state == OPEN and REGISTRY.get_sample_value("push_breaker_open", {"breaker": "dep"}) == 1
    with pytest.raises(Unavailable, match="circuit open"):
        await breaker.call(succeed)

    await asyncio.sleep(0.06)
    assert breaker.state == HALF_OPEN
    assert await breaker.call(succeed) == "ok"
    assert breaker.state == CLOSED and REGISTRY.get_sample_value("push_breaker_open", {"breaker": "dep"}) == 0


async def test_failed_trial_reopens_the_breaker() -> None:
    """A failure in half-open state opens the breaker again for another cooldown."""
    breaker = CircuitBreaker("dep", threshold=1, cooldown=0.05, failures=(ConnectionError,))
    with pytest.raises(Unavailable):
        await breaker.call(fail)

    await asyncio.sleep(0.06)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    assert breaker.state == OPEN


async def test_a_blameless_error_passes_through_unchanged_and_does_not_count() -> None:
    """Errors the request caused never open the breaker; they show the dependency answered, as a success does."""
    breaker = CircuitBreaker("dep", threshold=2, failures=(ConnectionError,), blameless=lambda exc: "refused" in str(exc))

    async def refused() -> None:
        raise ConnectionError("document refused")

    for _ in range(5):
        with pytest.raises(ConnectionError, match="refused"):
            await breaker.call(refused)
    assert breaker.state == CLOSED
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    with pytest.raises(ConnectionError):
        await breaker.call(refused)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    assert breaker.state == CLOSED, "the refusal between the two failures reset the count"


async def test_a_redis_cluster_slot_without_a_master_is_a_redis_failure_answered_503() -> None:
    """redis-py's SlotNotCoveredError is no RedisError; the Redis breaker still counts it and answers Unavailable (503)."""
    async def unserved() -> None:
        raise SlotNotCoveredError("Slot 1234 not covered by the cluster")

    breaker = CircuitBreaker("redis", failures=REDIS_FAILURES)
    with pytest.raises(Unavailable):
        await breaker.call(unserved)
    assert breaker.consecutive == 1
