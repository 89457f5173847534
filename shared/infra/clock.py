"""Time as the cluster records it: milliseconds since the epoch, in every message, card and stage."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
