"""When a failed webhook attempt is tried again: exponential waits from ``WEBHOOK_SCHEDULE_SECONDS``, with jitter. Pure logic.

The default schedule follows the Standard Webhooks recommendation, shortened to about 24 h: 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 6 h. Each wait is spread by +-20% so endpoints that failed together (an
outage) are not retried in lockstep. An event gets ``1 + len(schedule)`` attempts in all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.2


def retry_at(attempts: int, schedule: Sequence[float], now_ms: int, rng: random.Random | None = None) -> int:
    """When the next attempt of an event whose ``attempts``-th attempt just failed is due (ms), or 0 when that was its
    last."""
    if attempts > len(schedule):
        return 0
    spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return now_ms + max(1, int(schedule[attempts - 1] * spread * 1000))
