"""Each webhook endpoint's queue in Redis: what is due, what failed for good, and its counts.

Keys per endpoint ``<ep>``, under ``{webhooks}`` like the feed (``shared.delivery.webhook_feed``):

* ``{webhooks}:due:<ep>`` -- ZSET of queued events by when their next attempt is due (ms); a member is
  its order key (``services.webhooks.order.member``: when the event happened, then its fact's stream
  id and position, as fixed-width text), so the events of one fan-out, all due at the same score,
  are read in the order they happened;
* ``{webhooks}:order:<ep>`` -- ZSET of the same members, all scored 0, so the lowest is the event that
  happened first (the member order); a full queue pushes out from here, not from ``due``, where an event
  waiting for its retry scores later than one just queued;
* ``{webhooks}:body:<ep>`` -- HASH member -> ``{"id", "u", "b"}``: the webhook-id, the ordering key
  (the user, or the message for a cancel) and the exact body;
* ``{webhooks}:tries:<ep>`` -- HASH member -> ``{"n", "error"}``: attempts made and the last error;
* ``{webhooks}:failed:<ep>`` -- ZSET of events past their last attempt, or pushed out of a full
  queue, by when (``GET /v1/webhooks/{id}/failures``; ``replay`` queues them again);
* ``{webhooks}:stats:<ep>`` -- HASH ``ok``, ``failed`` (attempts), ``dropped``, ``last_error``, ``last_error_at``;
* ``{webhooks}:seen:<webhook-id>`` -- a marker that an event was fanned out (7 days), so a fact
  recorded twice is queued once.

The fan-out is one script per stream batch: it queues each new event for its endpoints, pushes the
oldest out of a queue past its bound into the failure list (counting them), and acknowledges the
stream entries, all at once, so a fan-out killed half-way is done again whole, never half.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from shared.delivery.webhook_feed import EVENTS_KEY, TAG
from shared.infra.clients import text

SEEN_TTL_SECONDS = 7 * 24 * 3600

_FANOUT = """
local plan = cjson.decode(ARGV[1])
local touched, fresh = {}, 0
for _, e in ipairs(plan.events) do
  if redis.call('SET', KEYS[e[1]], '1', 'NX', 'EX', plan.ttl) then
    fresh = fresh + 1
    for _, t in ipairs(e[3]) do
      local ep = plan.eps[t[1]]
      redis.call('ZADD', KEYS[ep[1]], plan.now, e[2])
      redis.call('ZADD', KEYS[ep[5]], 0, e[2])
      redis.call('HSET', KEYS[ep[2]], e[2], t[2])
      touched[t[1]] = true
    end
  end
end
local dropped = {}
for i, ep in ipairs(plan.eps) do
  dropped[i] = 0
  if touched[i] then
    local over = redis.call('ZCARD', KEYS[ep[1]]) - plan.limit
    if over > 0 then
      local popped = redis.call('ZPOPMIN', KEYS[ep[5]], over)
      for j = 1, #popped, 2 do
        redis.call('ZREM', KEYS[ep[1]], popped[j])
        redis.call('ZADD', KEYS[ep[3]], plan.now, popped[j])
      end
      redis.call('HINCRBY', KEYS[ep[4]], 'dropped', over)
      dropped[i] = over
    end
  end
end
if #plan.acks > 0 then
  redis.call('XACK', KEYS[1], plan.group, unpack(plan.acks))
end
return {fresh, dropped}
"""

# Queue up to ARGV[2] failed events again, due at ARGV[1], with their attempts forgotten; returns how many.
_REPLAY = """
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, m in ipairs(members) do
  redis.call('ZADD', KEYS[2], ARGV[1], m)
  redis.call('ZADD', KEYS[4], 0, m)
  redis.call('HDEL', KEYS[3], m)
  redis.call('ZREM', KEYS[1], m)
end
return #members
"""


def key(kind: str, endpoint_id: str) -> str:
    return f"{TAG}:{kind}:{endpoint_id}"


def seen_key(webhook_id: str) -> str:
    return f"{TAG}:seen:{webhook_id}"


KINDS = ("due", "body", "tries", "failed", "stats", "order")


@dataclass(frozen=True, slots=True)
class Queued:
    """One event waiting in an endpoint's queue (or its failure list)."""

    member: str
    webhook_id: str
    order: str  # events of one user (or one cancelled message) are sent in order
    body: bytes
    attempts: int = 0
    error: str = ""
    at: int = 0  # when it is due (queue) or failed (failure list), ms

    @staticmethod
    def stored(webhook_id: str, order: str, body: bytes) -> bytes:
        return orjson.dumps({"id": webhook_id, "u": order, "b": body.decode()})

    @classmethod
    def read(cls, member: str, stored: bytes, tries: bytes | None, at: int) -> Queued:
        fields, attempts = orjson.loads(stored), orjson.loads(tries) if tries else {}
        return cls(member, fields["id"], fields["u"], fields["b"].encode(), attempts.get("n", 0), attempts.get("error", ""), at)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt: sent (``retry_at`` 0, no error), to be retried at ``retry_at``, or failed for good."""

    queued: Queued
    error: str = ""
    retry_at: int = 0

    @property
    def sent(self) -> bool:
        return not self.error


class WebhookQueues:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._fanout = redis.register_script(_FANOUT)
        self._replay = redis.register_script(_REPLAY)

    async def fan_out(self, group: str, acks: list[str], events: list[tuple[str, str, list[tuple[str, bytes]]]], now: int,
                      limit: int) -> tuple[int, dict[str, int]]:
        """Queue each ``(webhook_id, member, [(endpoint, stored body)])`` not fanned out before, and acknowledge the
        stream entries ``acks``; returns how many were new and, per endpoint, how many a full queue dropped."""
        keys, index = [EVENTS_KEY], {}

        def at(k: str) -> int:
            if k not in index:
                keys.append(k)
                index[k] = len(keys)
            return index[k]

        endpoints = list(dict.fromkeys(ep for _, _, targets in events for ep, _ in targets))
        eps = [[at(key(kind, ep)) for kind in ("due", "body", "failed", "stats", "order")] for ep in endpoints]
        position = {ep: i + 1 for i, ep in enumerate(endpoints)}
        plan = {"group": group, "acks": acks, "ttl": str(SEEN_TTL_SECONDS), "limit": limit, "now": str(now), "eps": eps,
                "events": [[at(seen_key(webhook_id)), member, [[position[ep], body.decode()] for ep, body in targets]]
                           for webhook_id, member, targets in events]}
        fresh, dropped = await self._fanout(keys=keys, args=[orjson.dumps(plan)])
        return int(fresh), {ep: int(n) for ep, n in zip(endpoints, dropped) if int(n)}

    async def due(self, endpoint_id: str, now: int, limit: int) -> tuple[list[Queued], int | None]:
        """Up to ``limit`` events due by ``now``, in order; and when the next one is due if none is."""
        while True:
            found = cast(list[tuple[bytes, float]],
                         await self.redis.zrangebyscore(key("due", endpoint_id), "-inf", now, start=0, num=limit, withscores=True))
            if not found:
                head = await self.redis.zrange(key("due", endpoint_id), 0, 0, withscores=True)
                return [], int(head[0][1]) if head else None
            if batch := await self._read(endpoint_id, found):  # else all were removed as orphans: look again
                return batch, None

    async def _read(self, endpoint_id: str, found: list[tuple[bytes, float]]) -> list[Queued]:
        """The events of ``found`` (members and scores); a member whose body is gone (sent while a full queue pushed
        it into the failure list) is removed, so it never stands in front of the others."""
        members = [text(m) for m, _ in found]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key("body", endpoint_id), members)
            pipe.hmget(key("tries", endpoint_id), members)
            bodies, tries = await pipe.execute()
        orphans = [m for m, b in zip(members, bodies) if b is None]
        if orphans:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(key("due", endpoint_id), *orphans)
                pipe.zrem(key("order", endpoint_id), *orphans)
                pipe.zrem(key("failed", endpoint_id), *orphans)
                await pipe.execute()
        return [Queued.read(m, b, t, int(score)) for m, (_, score), b, t in zip(members, found, bodies, tries) if b is not None]

    async def settle(self, endpoint_id: str, outcomes: Iterable[Outcome], now: int) -> None:
        """Record a round of attempts in one pipeline: sent ones leave, failed ones wait for their retry or go to the
        failure list. Additions come before removals, so a round cut short loses nothing (at worst one is sent again)."""
        due, body, tries, failed, stats, order = (key(kind, endpoint_id) for kind in KINDS)
        outcomes = list(outcomes)
        sent = [o.queued.member for o in outcomes if o.sent]
        errors = [o for o in outcomes if not o.sent]
        async with self.redis.pipeline(transaction=False) as pipe:
            for o in errors:
                pipe.hset(tries, o.queued.member, orjson.dumps({"n": o.queued.attempts + 1, "error": o.error}))
                if o.retry_at:
                    pipe.zadd(due, {o.queued.member: o.retry_at}, xx=True)
                else:
                    pipe.zadd(failed, {o.queued.member: now})
                    pipe.zrem(due, o.queued.member)
                    pipe.zrem(order, o.queued.member)
            if sent:
                pipe.zrem(due, *sent)
                pipe.zrem(order, *sent)
                pipe.zrem(failed, *sent)
                pipe.hdel(body, *sent)
                pipe.hdel(tries, *sent)
                pipe.hincrby(stats, "ok", len(sent))
            if errors:
                pipe.hincrby(stats, "failed", len(errors))
                pipe.hset(stats, mapping={"last_error": errors[-1].error, "last_error_at": now})
            await pipe.execute()

    async def failures(self, endpoint_id: str, limit: int) -> list[Queued]:
        found = cast(list[tuple[bytes, float]], await self.redis.zrange(key("failed", endpoint_id), 0, limit - 1, withscores=True))
        return await self._read(endpoint_id, found) if found else []

    async def replay(self, endpoint_id: str, now: int, page: int = 10_000) -> int:
        """Queue every failed event again, due now, with its attempts forgotten; returns how many."""
        total = 0
        keys = [key(kind, endpoint_id) for kind in ("failed", "due", "tries", "order")]
        while n := int(await self._replay(keys=keys, args=[now, page])):
            total += n
        return total

    async def report(self, endpoint_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per endpoint: events queued, failed for good, and its counts (``ok``, ``failed`` attempts, ``dropped``,
        ``last_error``, ``last_error_at``)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for ep in endpoint_ids:
                pipe.zcard(key("due", ep))
                pipe.zcard(key("failed", ep))
                pipe.hgetall(key("stats", ep))
            replies = await pipe.execute()
        result = {}
        for i, ep in enumerate(endpoint_ids):
            queued, failed, raw = replies[3 * i: 3 * i + 3]
            stats = {text(k): text(v) for k, v in cast(dict[bytes, bytes], raw).items()}
            result[ep] = {"queued": int(queued), "failures": int(failed), "ok": int(stats.get("ok", 0)),
                          "failed_attempts": int(stats.get("failed", 0)), "dropped": int(stats.get("dropped", 0)),
                          "last_error": stats.get("last_error") or None, "last_error_at": int(stats.get("last_error_at", 0)) or None}
        return result

    async def remove(self, endpoint_id: str) -> None:
        await self.redis.delete(*(key(kind, endpoint_id) for kind in KINDS))
