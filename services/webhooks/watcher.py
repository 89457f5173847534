"""Who went online or offline: ``user.online`` and ``user.offline`` facts, judged from the routes push nodes keep in Redis.

Push nodes put every user whose sockets on them changed on ``{webhooks}:presence`` (``shared.cluster.routes``).
The watcher reads that feed as a consumer group and judges each such user against the routes,
counting live nodes only, exactly as presence does (``shared.cluster.routes.RouteReader.sockets``):

* a user with sockets who was not online is ``online`` now (``{webhooks}:online``: user -> since);
* an online user with none starts leaving: ``{webhooks}:leaving`` scores the user by now +
  ``OFFLINE_GRACE_SECONDS``; a socket opening meanwhile (a page reload) takes the user out of it;
* a leaving user whose grace ended and who still has no socket is ``offline`` (its time: when it
  started leaving).

A killed node writes nothing: its card expires within ``NODE_TTL_SECONDS`` and the watcher, seeing a
node gone from the live set, judges every online user again, so the node's users start leaving then
and go offline a grace later. The state lives in Redis, and a fact is appended before the state that
records it, so a watcher killed in between judges again (an offline again under the same event id;
an online again under a new one): events are at least once. One instance runs this loop.
"""

from __future__ import annotations

import logging
from typing import cast

from redis.asyncio import Redis

from services.webhooks.fanout import CONSUMER, GROUP, ensure_group
from shared.cluster.routes import NodeCard, RouteReader
from shared.delivery.webhook_feed import PRESENCE_KEY, TAG, WebhookFeed, entries_of
from shared.infra.clients import text
from shared.infra.clock import now_ms
from shared.infra.retry import Backoff
from shared.model.webhook_events import Fact

log = logging.getLogger(__name__)
ONLINE_KEY = f"{TAG}:online"
LEAVING_KEY = f"{TAG}:leaving"
TICK_MS = 200
PAGE = 1000


class PresenceWatcher:
    def __init__(self, redis: Redis, routes: RouteReader, grace_seconds: float) -> None:
        self.redis = redis
        self.routes = routes
        self.feed = WebhookFeed(redis)
        self.grace_ms = int(grace_seconds * 1000)
        self._known: set[str] | None = None  # the live nodes seen last time; None: judge every online user

    async def run(self) -> None:
        backoff, backlog = Backoff(), True
        while True:
            try:
                await ensure_group(self.redis, PRESENCE_KEY, GROUP)
                replies = await self.redis.xreadgroup(GROUP, CONSUMER, {PRESENCE_KEY: "0" if backlog else ">"},
                                                      count=PAGE, block=None if backlog else TICK_MS)
                entries = [(i, text(fields[b"u"])) for i, fields in entries_of(replies)]
                backlog = backlog and bool(entries)
                await self.tick({u for _, users in entries for u in users.split(",") if u})
                if entries:
                    await self.redis.xack(PRESENCE_KEY, GROUP, *(i for i, _ in entries))
                backoff.succeeded()
            except Exception as exc:  # never die silently: what was read stays pending and is judged again
                backlog, self._known = True, None
                await backoff.failed(log, "presence watch", exc)

    async def tick(self, changed: set[str]) -> None:
        live = await self.routes.live_nodes()
        if self._known is None or self._known - set(live):
            changed |= await self.online_users()
        self._known = set(live)
        users = sorted(changed)
        for start in range(0, len(users), PAGE):
            await self.judge(users[start:start + PAGE], live)
        await self.leave(live)

    async def online_users(self) -> set[str]:
        return {text(u) async for u, _ in self.redis.hscan_iter(ONLINE_KEY, count=PAGE)}

    async def judge(self, users: list[str], live: dict[str, NodeCard]) -> None:
        sockets = await self.routes.sockets(users, live)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(ONLINE_KEY, users)
            pipe.zmscore(LEAVING_KEY, users)
            online, leaving = await pipe.execute()
        now = now_ms()
        arrived = [u for u, since in zip(users, online) if since is None and u in sockets]
        back = [u for u, score in zip(users, leaving) if score is not None and u in sockets]
        left = [u for u, since, score in zip(users, online, leaving) if since is not None and score is None and u not in sockets]
        await self.feed.publish([Fact("online", "", u, now) for u in arrived])
        if arrived or back or left:
            async with self.redis.pipeline(transaction=False) as pipe:
                if arrived:
                    pipe.hset(ONLINE_KEY, mapping=dict.fromkeys(arrived, now))
                if back:
                    pipe.zrem(LEAVING_KEY, *back)
                if left:
                    pipe.zadd(LEAVING_KEY, dict.fromkeys(left, now + self.grace_ms))
                await pipe.execute()

    async def leave(self, live: dict[str, NodeCard]) -> None:
        """Users whose grace ended: offline if they still have no socket, online still otherwise."""
        due = cast(list[tuple[bytes, float]],
                   await self.redis.zrangebyscore(LEAVING_KEY, "-inf", now_ms(), start=0, num=PAGE, withscores=True))
        if not due:
            return
        users = [text(u) for u, _ in due]
        sockets = await self.routes.sockets(users, live)
        gone = [(u, int(score) - self.grace_ms) for u, (_, score) in zip(users, due) if u not in sockets]
        await self.feed.publish([Fact("offline", "", u, at) for u, at in gone])
        async with self.redis.pipeline(transaction=False) as pipe:
            if gone:
                pipe.hdel(ONLINE_KEY, *(u for u, _ in gone))
            pipe.zrem(LEAVING_KEY, *users)
            await pipe.execute()
        if gone:
            log.info("users offline", extra={"count": len(gone)})
