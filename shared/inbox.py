"""The hot delivery state in Redis: what each user still has to receive, known without MongoDB.

Keys:

* ``msg:{id}`` -- a HASH: ``f`` the frame (stored once, however many recipients), ``u`` the
  recipients, ``n`` how many of them have not acknowledged it yet; deleted when ``n`` reaches 0 or
  the message expires;
* ``inbox:{user}`` -- a ZSET of the user's open message ids scored by acceptance time, trimmed to
  the newest ``limit``; Redis drops it when the last entry goes;
* ``expiry`` -- a ZSET of open message ids scored by expiry time (ms), read by dispatch's expiry loop;
* ``state:epoch`` -- present once this state is complete. Redis restarted empty has none: dispatch
  rebuilds the state from MongoDB (``services/dispatch/rebuild.py``) and sets a new epoch; replays
  wait for it, and push nodes that see the epoch change send their open sessions what came back.

Every write is a pipeline of single-key commands (no Lua, no multi-key command), and each method
takes a whole batch, so its cost is a few round trips whatever the batch size.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.errors import Unavailable
from shared.message import Message, Pair, join_users, split_users

EXPIRY_KEY = "expiry"
EPOCH_KEY = "state:epoch"


def msg_key(message_id: str) -> str:
    return f"msg:{message_id}"


def inbox_key(user_id: str) -> str:
    return f"inbox:{user_id}"


class Inbox:
    def __init__(self, redis: Redis, limit: int = 10_000) -> None:
        self.redis = redis
        self.limit = limit

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue the commands that open ``messages`` for their recipients (idempotent: ids are keys)."""
        for m in messages:
            pipe.hset(msg_key(m.id), mapping={"f": m.frame, "u": join_users(m.users), "n": len(m.users)})
            pipe.zadd(EXPIRY_KEY, {m.id: m.expires_ms})
            for user in m.users:
                pipe.zadd(inbox_key(user), {m.id: m.ts})
                pipe.zremrangebyrank(inbox_key(user), 0, -self.limit - 1)

    async def open(self, messages: list[Message]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self.stage(pipe, messages)
            await pipe.execute()

    async def pending(self, user_id: str, limit: int) -> list[str]:
        """The user's open message ids, oldest first (ids only: frames are read page by page).

        Raises ``Unavailable`` while the state is incomplete (being rebuilt): an inbox read then could
        miss messages, or return some the user has already acknowledged.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(EPOCH_KEY)
            pipe.zrange(inbox_key(user_id), 0, limit - 1)
            complete, ids = await pipe.execute()
        if not complete:
            raise Unavailable("the delivery state is being rebuilt from MongoDB")
        return [m.decode() for m in ids]

    async def frames(self, message_ids: list[str]) -> list[str | None]:
        """Each message's frame, or None where it is gone (expired, or trimmed away)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in message_ids:
                pipe.hget(msg_key(m), "f")
            replies = await pipe.execute()
        return [r.decode() if r is not None else None for r in replies]

    async def drop(self, user_id: str, message_ids: list[str]) -> None:
        """Forget entries whose frame is gone."""
        if message_ids:
            await self.redis.zrem(inbox_key(user_id), *message_ids)

    async def close(self, pairs: list[Pair]) -> list[Pair]:
        """Close deliveries (acknowledged or expired); return those that were open, so each closes once.

        Only an entry in the user's own inbox closes: an id the user was never sent changes nothing.
        """
        if not pairs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for m, u in pairs:
                pipe.zrem(inbox_key(u), m)
            removed = [p for p, n in zip(pairs, await pipe.execute()) if n]
        if not removed:
            return []
        counts: defaultdict[str, int] = defaultdict(int)
        for m, _ in removed:
            counts[m] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for m, n in counts.items():
                pipe.hincrby(msg_key(m), "n", -n)
            done = [m for m, left in zip(counts, await pipe.execute()) if left <= 0]
        await self.forget(done)
        return removed

    async def forget(self, message_ids: list[str]) -> None:
        """Delete messages nobody is waiting for any more."""
        if message_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for m in message_ids:
                    pipe.delete(msg_key(m))
                pipe.zrem(EXPIRY_KEY, *message_ids)
                await pipe.execute()

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Open messages whose expiry has passed, oldest expiry first."""
        return [m.decode() for m in await self.redis.zrangebyscore(EXPIRY_KEY, "-inf", now_ms, start=0, num=limit)]

    async def expire(self, message_ids: list[str]) -> list[Pair]:
        """Remove expired messages from every inbox still holding them; return those deliveries."""
        if not message_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in message_ids:
                pipe.hget(msg_key(m), "u")
            users = await pipe.execute()
        pairs = [(m, u) for m, field in zip(message_ids, users) if field is not None for u in split_users(field)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for m, u in pairs:
                pipe.zrem(inbox_key(u), m)
            open_ = [p for p, n in zip(pairs, await pipe.execute()) if n]
        await self.forget(message_ids)
        return open_

    async def open_count(self) -> int:
        """Messages with at least one recipient still waiting."""
        return int(await self.redis.zcard(EXPIRY_KEY))

    async def epoch(self) -> str | None:
        value = await self.redis.get(EPOCH_KEY)
        return value.decode() if value is not None else None

    async def complete(self) -> str:
        """Mark the state complete under a new epoch, and return it."""
        epoch = secrets.token_hex(6)
        await self.redis.set(EPOCH_KEY, epoch)
        return epoch
