"""The suite's one way to wait: poll a condition until it holds, within a timeout scaled for slow machines.

Every timeout in the tests goes through ``scaled``: ``TEST_TIMEOUT_SCALE`` (default 1) multiplies it, so
a slow or loaded machine can run the suite with, say, ``TEST_TIMEOUT_SCALE=3`` without editing a test.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tools.cluster import Proc

T = TypeVar("T")


def _scale() -> float:
    raw = os.environ.get("TEST_TIMEOUT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"TEST_TIMEOUT_SCALE must be a number, not {raw!r}") from None
    if not scale > 0:
        raise ValueError(f"TEST_TIMEOUT_SCALE must be above 0, not {raw!r}")
    return scale


SCALE = _scale()


def scaled(seconds: float) -> float:
    """``seconds`` times ``TEST_TIMEOUT_SCALE``."""
    return seconds * SCALE


async def until(probe: Callable[[], T | Awaitable[T]], done: Callable[[T], Any] = bool, *, what: str,
                timeout: float = 10, every: float = 0.05) -> T:
    """Call ``probe`` (sync or async) every ``every`` seconds until ``done`` holds for its value; return that value.
    Past ``scaled(timeout)`` fail with an AssertionError naming ``what`` and the last value seen."""
    last: Any = "(no answer yet)"
    limit = scaled(timeout)
    try:
        async with asyncio.timeout(limit) as deadline:
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if done(value):
                    return value  # type: ignore[return-value]
                last = value
                await asyncio.sleep(every)
    except TimeoutError:
        if not deadline.expired():
            raise  # the probe's own timeout, not this wait's
        raise AssertionError(f"waited {limit:g} s for {what}; last value: {last!r}") from None


@asynccontextmanager
async def stopped(proc: Proc) -> AsyncIterator[None]:
    """``proc`` SIGSTOPped for the block, from the moment the kernel reports it stopped; SIGCONTed after it."""
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        await until(lambda: proc.state, lambda state: state == "T", what=f"{proc.name} to be stopped", every=0.005)
        yield
    finally:
        proc.popen.send_signal(signal.SIGCONT)
