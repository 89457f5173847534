"""The suite's wait helper: polls sync or async probes, returns the accepted value, fails naming what it waited for."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.waits import until


async def test_until_returns_the_first_value_the_condition_accepts_from_a_sync_or_async_probe() -> None:
    """A counting probe is called until its value passes ``done``; an async probe is awaited the same way."""
    counter = itertools.count()
    assert await until(lambda: next(counter), lambda n: n >= 3, what="three", every=0) == 3

    async def later() -> str:
        await asyncio.sleep(0)
        return "ready"

    assert await until(later, what="ready") == "ready"


async def test_until_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    """Past its timeout the wait is an AssertionError that says what it waited for and what it saw last."""
    with pytest.raises(AssertionError, match=r"waited [0-9.]+ s for the door to open; last value: 'shut'"):
        await until(lambda: "shut", lambda v: v == "open", what="the door to open", timeout=0.05, every=0.01)


async def test_until_lets_a_probes_own_timeout_through() -> None:
    """A TimeoutError raised by the probe is the probe's failure, not reported as this wait running out."""
    def probe() -> None:
        raise TimeoutError("the probe's own")

    with pytest.raises(TimeoutError, match="the probe's own"):
        await until(probe, what="never")
