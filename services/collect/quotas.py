"""What one API key may take from the cluster: deliveries and presence queries per second, scheduled messages waiting.

* **Rates** are token buckets per key in each collect instance (``KeyRates``): deliveries (messages x
  recipients) posted, and presence and topic queries. With n collect instances behind a balancer a key
  gets up to n times the rate. Past it: 429 ``rate_limited`` with ``Retry-After``.
* **Scheduled messages waiting** are counted across the cluster in Redis (``PendingSchedules``):
  ``scheduled:<sender>`` is a ZSET of the key's scheduled message ids scored by due time. What fired
  leaves the count once its due time has passed (nothing else has to remove it), a cancel removes its
  message. Checked before the post is stored and recorded after, so concurrent posts can pass the limit
  by what they carry together. Past it: 429 with ``Retry-After`` until the earliest one falls due.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import cast

from redis.asyncio import Redis

from shared.infra.clients import REDIS_FAILURES
from shared.infra.token_bucket import TokenBucket
from shared.model.message import Message
from shared.wire.errors import RateLimited

log = logging.getLogger(__name__)

BURST_SECONDS = 5  # a key may save up this many seconds of its rate
DELIVERIES, PRESENCE = "deliveries", "presence"


class KeyRates:
    """One token bucket per (kind, key) with ``rates[kind]`` tokens a second (0: no limit), ``BURST_SECONDS`` of them
    saved up; one request costs at most a full bucket (a post larger than that passes when the key has saved it all)."""

    def __init__(self, rates: dict[str, float], clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = rates
        self.clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def spend(self, kind: str, sender: str, cost: int) -> None:
        rate = self.rates[kind]
        if not rate:
            return
        now = self.clock()
        bucket = self._buckets.get((kind, sender))
        if bucket is None:
            bucket = self._buckets[kind, sender] = TokenBucket.full(rate, rate * BURST_SECONDS, now)
        charge = min(cost, bucket.burst)
        if not bucket.take(charge, now):
            raise RateLimited(f"this API key is past its {kind} rate ({rate:g}/s)", retry_after=max(1, math.ceil(bucket.wait(charge))))


def scheduled_key(sender: str) -> str:
    return f"scheduled:{sender}"


class PendingSchedules:
    """The scheduled messages each key has waiting, at most ``limit`` (0: no limit)."""

    def __init__(self, redis: Redis, limit: int) -> None:
        self.redis = redis
        self.limit = limit

    async def admit(self, sender: str, messages: list[Message], now_ms: int) -> None:
        """``RateLimited`` if ``messages`` would take ``sender`` past the limit."""
        adding = sum(1 for m in messages if m.due_ms > now_ms)
        if not self.limit or not adding:
            return
        key = scheduled_key(sender)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            _, waiting, earliest = await pipe.execute()
        if waiting + adding > self.limit:
            first = cast(list[tuple[bytes, float]], earliest)
            retry = max(1, math.ceil((first[0][1] - now_ms) / 1000)) if first else 1
            raise RateLimited(f"{waiting} scheduled messages wait for this API key; the limit is {self.limit}", retry_after=retry)

    async def record(self, sender: str, messages: list[Message], now_ms: int) -> None:
        """Count the scheduled ones among ``messages``, stored by now (best effort: a failure only undercounts)."""
        due = {m.id: m.due_ms for m in messages if m.due_ms > now_ms}
        if not self.limit or not due:
            return
        key, gone = scheduled_key(sender), math.ceil(max(due.values()) / 1000) + 60  # the set outlives its last due time
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, due)
                pipe.expireat(key, gone, nx=True)
                pipe.expireat(key, gone, gt=True)
                await pipe.execute()
        except REDIS_FAILURES as exc:
            log.warning("scheduled messages not counted for their key", extra={"sender": sender, "count": len(due), "error": repr(exc)})

    async def forget(self, sender: str, message_id: str) -> None:
        """A cancelled message no longer counts (best effort)."""
        if self.limit:
            try:
                await self.redis.zrem(scheduled_key(sender), message_id)
            except REDIS_FAILURES as exc:
                log.warning("cancelled message still counted for its key", extra={"sender": sender, "id": message_id, "error": repr(exc)})
