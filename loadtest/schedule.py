"""Reading dispatch's fire lateness of scheduled messages from its ``/metrics`` (a Prometheus histogram).

The lateness is measured where it happens, from a message's due time to its hand-over (inboxes
opened, post on the stream), so the figure is the schedule's and not the delivery's: sockets are
another scenario's subject. Percentiles come out as the bucket bound they fall under.
"""

from __future__ import annotations

import math
import re

import aiohttp

HISTOGRAM = "dispatch_scheduled_lateness_seconds"
FIRED = "dispatch_scheduled_fired_total"
_BUCKET = re.compile(HISTOGRAM + r'_bucket\{le="([^"]+)"\} (\S+)')


class Lateness:
    """One scrape: cumulative counts per bucket bound (seconds), and the messages fired."""

    def __init__(self, text: str) -> None:
        self.buckets = [(float(le), float(n)) for le, n in _BUCKET.findall(text)]
        self.fired = next((int(float(line.split()[1])) for line in text.splitlines() if line.startswith(FIRED + " ")), 0)

    def since(self, before: Lateness) -> list[tuple[float, float]]:
        earlier = dict(before.buckets)
        return [(le, n - earlier.get(le, 0.0)) for le, n in self.buckets]

    def percentile_ms(self, before: Lateness, q: float) -> float:
        """The bound (ms) under which ``q`` of the messages fired since ``before`` were; inf past the last bucket."""
        buckets = self.since(before)
        total = buckets[-1][1] if buckets else 0.0
        for le, n in buckets:
            if total and n >= q * total:
                return le * 1000
        return math.nan if not total else math.inf


async def scrape(session: aiohttp.ClientSession, dispatch_url: str) -> Lateness:
    async with session.get(f"{dispatch_url}/metrics") as r:
        return Lateness(await r.text())
