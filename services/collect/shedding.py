"""Load shedding by priority tier: under overload the cluster refuses new low posts first, then normal, never high.

A sampler reads every tier's backlog a few times a second: the posts of the tier this collect is still
storing and has not put on the stream yet (its write lanes, ``acceptance.py``), and in one Redis round trip the
stream entries no dispatch instance has read yet (``ShardedStream.backlog``), with the age of the oldest. A new post of a tier
waits behind its own tier's backlog and every more urgent tier's, so that is what its thresholds
measure: the tier is shed when those entries pass ``entries``, or the oldest of them has waited
past ``age_ms``; a tier is also shed whenever a more urgent one is. A shed post gets 429
``overloaded`` with a ``Retry-After`` of about the age of the backlog ahead of it; nothing of it was
stored. Shedding only refuses new posts: what was accepted stays in its stream and is delivered late.

If Redis cannot be read, nothing is shed (the post then meets Redis's own error).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from shared.delivery.stream import Backlog, ShardedStream
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.model.priority import TIERS, Priority
from shared.wire.errors import Overloaded

log = logging.getLogger(__name__)

BACKLOG = Gauge("push_tier_backlog", "Stream entries (posts) not yet done, by priority tier", ["tier"])
AGE = Gauge("push_tier_backlog_age_seconds", "Age of the oldest stream entry not yet done, by priority tier", ["tier"])
SHEDDING = Gauge("collect_shedding", "1 while new posts of the tier are refused with 429", ["tier"])
SHED = Counter("collect_shed_total", "Posts refused with 429 to shed load, by priority tier", ["tier"])
MAX_RETRY_AFTER = 60  # seconds


@dataclass(frozen=True, slots=True)
class Threshold:
    entries: int
    age_ms: int


def shed_tiers(backlog: Mapping[Priority, Backlog], thresholds: Mapping[Priority, Threshold], now: int) -> frozenset[Priority]:
    """The tiers whose new posts are refused, given each tier's backlog (a tier without a threshold never is)."""
    shed: set[Priority] = set()
    ahead, age = 0, 0
    for tier in TIERS:
        ahead += backlog[tier].entries
        age = max(age, backlog[tier].age_ms(now))
        limit = thresholds.get(tier)
        if limit is not None and (shed or ahead > limit.entries or age > limit.age_ms):
            shed.add(tier)
    return frozenset(shed)


def retry_after(backlog: Mapping[Priority, Backlog], tier: Priority, now: int) -> int:
    """Seconds to suggest before a shed post is tried again: the age of the oldest entry ahead of it (1 to 60)."""
    age = max(backlog[t].age_ms(now) for t in TIERS[:TIERS.index(tier) + 1])
    return min(MAX_RETRY_AFTER, max(1, math.ceil(age / 1000)))


class Shedder:
    def __init__(self, stream: ShardedStream, thresholds: Mapping[Priority, Threshold], interval_ms: int,
                 storing: Callable[[], Mapping[Priority, Backlog]]) -> None:
        self.stream = stream
        self.storing = storing
        self.thresholds = thresholds
        self.interval = interval_ms / 1000
        self.backlog = {tier: Backlog(0, None) for tier in TIERS}
        self.sampled_at = 0
        self.shed: frozenset[Priority] = frozenset()

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except REDIS_FAILURES as exc:
                if self.shed:
                    log.warning("backlog unreadable: shedding off", extra={"error": repr(exc)})
                self.shed = frozenset()
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        streams = await self.stream.backlog()
        storing = self.storing()
        self.backlog = {tier: streams[tier] + storing[tier] for tier in TIERS}
        self.sampled_at = now_ms()
        shed = shed_tiers(self.backlog, self.thresholds, self.sampled_at)
        if shed != self.shed:
            log.warning("shedding changed", extra={"shed": sorted(t.value for t in shed), **self._figures()})
        self.shed = shed
        for tier in TIERS:
            BACKLOG.labels(tier.value).set(self.backlog[tier].entries)
            AGE.labels(tier.value).set(self.backlog[tier].age_ms(self.sampled_at) / 1000)
            SHEDDING.labels(tier.value).set(int(tier in shed))

    def admit(self, tier: Priority) -> None:
        """Raise ``Overloaded`` if new posts of ``tier`` are shed now."""
        if tier in self.shed:
            SHED.labels(tier.value).inc()
            raise Overloaded(f"the cluster is overloaded: {tier.value} priority posts are refused for now; nothing was stored",
                             retry_after(self.backlog, tier, now_ms()))

    def _figures(self) -> dict[str, int]:
        return {f"{tier.value}_backlog": self.backlog[tier].entries for tier in TIERS}

    def report(self) -> dict[str, Any]:
        """Each tier's backlog as last sampled, and whether its new posts are refused."""
        return {tier.value: {"backlog": self.backlog[tier].entries, "age_ms": self.backlog[tier].age_ms(self.sampled_at),
                             "shedding": tier in self.shed} for tier in TIERS}
