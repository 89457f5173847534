"""Backoff for the loops that consume Redis and MongoDB: they retry and log, never die silently."""

from __future__ import annotations

import asyncio
import logging
import random


class Backoff:
    """Exponential delay with full jitter, reset by the first success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    async def failed(self, log: logging.Logger, what: str, exc: BaseException) -> None:
        self.failures += 1
        delay = random.uniform(0, min(self.cap, self.base * 2 ** min(self.failures, 16)))
        log.warning(f"{what} failed; retrying", extra={"error": repr(exc), "count": self.failures})
        await asyncio.sleep(delay)
