"""The hot delivery state in Redis: what each user still has to receive, known without MongoDB.

Keys (a post is one POST's messages, see ``shared.message``):

* ``post:{id}`` -- a HASH with the post's field map (each message's frame, stored once however
  many recipients, its recipients and its expiry) and ``n``, how many of its deliveries are still
  open; deleted when ``n`` reaches 0 or the post expires. Topic and broadcast messages open no
  inbox and are left out (a post of only those has no hash and no expiry entry);
* ``inbox:{u<bucket>}:<user>`` -- a ZSET of the user's open message ids scored by acceptance time, trimmed to
  the newest ``limit``; Redis drops it when the last entry goes;
* ``expiry`` -- a ZSET of open post ids scored by their latest expiry (ms), read by dispatch's
  expiry loop (a replay skips a message whose own expiry has passed);
* ``state:epoch:{u<bucket>}`` -- one marker per user bucket (``shared.slots``, rule 4), present once
  this state is complete, each beside the inboxes of its bucket: a Redis restarted empty, or one
  master of a Redis Cluster restarted empty, loses the markers of exactly the buckets it lost. With
  any missing, dispatch rebuilds the state from MongoDB (``services/dispatch/rebuild.py``) and sets
  them all to a new epoch; replays of a user wait for their bucket's marker, and push nodes that see
  the epoch change send their open sessions what came back.

Each method takes a whole batch and costs a few round trips whatever its size: per post one HSET
and one ZADD; the per-recipient inbox commands run inside Redis by one script call
(``shared.scripts``), since redis-py's cost per pipelined command is what would dominate.
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import chain
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.errors import Unavailable
from shared.message import Message, Pair, by_post, index_of, message_id, post_fields, post_of, split_users
from shared.scripts import Scripts
from shared.slots import all_user_tags, user_tag

EXPIRY_KEY = "expiry"


def epoch_key(tag: str) -> str:
    return f"state:epoch:{tag}"


def post_key(post: str) -> str:
    return f"post:{post}"


def inbox_key(user_id: str) -> str:
    return f"inbox:{user_tag(user_id)}:{user_id}"


class Inbox:
    def __init__(self, redis: Redis, limit: int = 10_000) -> None:
        self.redis = redis
        self.limit = limit
        self.scripts = Scripts(redis)

    async def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue the commands that open ``messages`` for their recipients (idempotent: ids are keys); topic
        messages are skipped (they are never replayed)."""
        inboxes: defaultdict[str, dict[str, int]] = defaultdict(dict)
        expiry: dict[str, int] = {}
        for post, batch in by_post(m for m in messages if m.topic is None).items():
            pipe.hset(post_key(post), mapping={**post_fields(batch), "n": sum(len(m.users) for m in batch)})
            expiry[post] = max(m.expires_ms for m in batch)
            for m in batch:
                for user in m.users:
                    inboxes[user][m.id] = m.ts
        if expiry:
            pipe.zadd(EXPIRY_KEY, expiry)
        if inboxes:
            per_key = [[len(entries), *chain.from_iterable((ts, m) for m, ts in entries.items())] for entries in inboxes.values()]
            await self.scripts.open_inboxes.stage(pipe, [inbox_key(u) for u in inboxes], per_key, head=[self.limit])

    async def open(self, messages: list[Message]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            await self.stage(pipe, messages)
            await pipe.execute()

    async def pending(self, users: list[str], limit: int) -> list[list[str]]:
        """Each user's open message ids, oldest first (ids only: frames are read page by page).

        Raises ``Unavailable`` while the state is incomplete (being rebuilt): an inbox read then could
        miss messages, or return some the user has already acknowledged.
        """
        tags = {user_tag(u) for u in users}
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.exists(epoch_key(tag))
            for user in users:
                pipe.zrange(inbox_key(user), 0, limit - 1)
            replies = await pipe.execute()
        if not all(replies[:len(tags)]):
            raise Unavailable("the delivery state is being rebuilt from MongoDB")
        return [[m.decode() for m in ids] for ids in replies[len(tags):]]

    async def frames(self, message_ids: list[str], now_ms: int) -> list[str | None]:
        """Each message's frame, or None where it is gone (expired, or trimmed away): one HMGET per post."""
        fields: defaultdict[str, list[str]] = defaultdict(list)
        for m in message_ids:
            i = index_of(m)
            fields[post_of(m)] += [str(i), f"x{i}"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for post, names in fields.items():
                pipe.hmget(post_key(post), names)
            replies = dict(zip(fields, await pipe.execute()))
        found: dict[str, str | None] = {}
        for post, names in fields.items():
            values = replies[post]
            for k in range(0, len(names), 2):
                frame, expires = values[k], values[k + 1]
                alive = frame is not None and expires is not None and int(expires) > now_ms
                found[message_id(post, int(names[k]))] = frame.decode() if alive else None
        return [found[m] for m in message_ids]

    async def drop(self, user_id: str, message_ids: list[str]) -> None:
        """Forget entries whose frame is gone."""
        if message_ids:
            await self.redis.zrem(inbox_key(user_id), *message_ids)

    async def close(self, pairs: list[Pair]) -> list[Pair]:
        """Close deliveries (acknowledged or expired); return those that were open, so each closes once.

        Only an entry in the user's own inbox closes: an id the user was never sent changes nothing.
        """
        removed = await self._remove(pairs)
        await self._settle(Counter(post_of(m) for m, _ in removed))
        return removed

    async def _remove(self, pairs: list[Pair]) -> list[Pair]:
        """Remove each (message, user) from the user's inbox; return those that were there."""
        if not pairs:
            return []
        flags = await self.scripts.zrem_each.each([inbox_key(u) for _, u in pairs], [[m] for m, _ in pairs])
        return [p for p, there in zip(pairs, flags) if there]

    async def _settle(self, closed: Counter[str]) -> None:
        """Count closed deliveries against their posts; forget the posts nobody waits for any more."""
        if not closed:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for post, n in closed.items():
                pipe.hincrby(post_key(post), "n", -n)
            done = [post for post, left in zip(closed, await pipe.execute()) if left <= 0]
        await self.forget(done)

    async def forget(self, posts: list[str]) -> None:
        if posts:
            async with self.redis.pipeline(transaction=False) as pipe:
                for post in posts:
                    pipe.delete(post_key(post))
                pipe.zrem(EXPIRY_KEY, *posts)
                await pipe.execute()

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Open posts whose latest expiry has passed, oldest first."""
        posts = cast(list[bytes], await self.redis.zrangebyscore(EXPIRY_KEY, "-inf", now_ms, start=0, num=limit))
        return [p.decode() for p in posts]

    async def expire(self, posts: list[str]) -> list[Pair]:
        """Remove expired posts' messages from every inbox still holding them; return those deliveries."""
        if not posts:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for post in posts:
                pipe.hgetall(post_key(post))
            maps = await pipe.execute()
        pairs = [(message_id(post, int(k[1:])), u) for post, fields in zip(posts, maps)
                 for k, v in fields.items() if k.startswith(b"u") for u in split_users(v)]
        open_ = await self._remove(pairs)
        await self.forget(posts)
        return open_

    async def open_count(self) -> int:
        """Posts with at least one recipient still waiting."""
        return int(await self.redis.zcard(EXPIRY_KEY))

    async def epoch(self) -> str | None:
        """The state's epoch, or None while any bucket's marker is missing (the state is incomplete)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.get(epoch_key(tag))
            values = await pipe.execute()
        if any(v is None for v in values):
            return None
        return ",".join(sorted({v.decode() for v in values}))

    async def complete(self) -> str:
        """Mark the state complete under a new epoch, in every bucket, and return it."""
        epoch = secrets.token_hex(6)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.set(epoch_key(tag), epoch)
            await pipe.execute()
        return epoch
