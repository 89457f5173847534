"""Handing stored posts over to dispatch, and finishing a hand-over whose collect did not live to.

collect writes a post to MongoDB, then opens its inboxes and appends it to the stream in one Redis
pipeline. Between the two it can die (or Redis can fail). So before the insert it records an
*intent*: the post id in the ZSET ``handover``, scored by the time; the hand-over pipeline removes
it. An intent older than a grace period is a hand-over nobody finished: dispatch's reconciler reads
that post back from MongoDB by id and hands it over itself. An intent whose post MongoDB never got
(the insert failed) is dropped once it is old enough that no insert can still be running. An intent can also
outlive a hand-over that was done: an Idempotency-Key retry refused while MongoDB was down leaves its own, after the
first attempt was handed over. So the reconciler's ``finish`` hands over none of a post's messages that have a
lifecycle record (the hand-over was done: fired, delivered, acked, cancelled), and puts scheduled messages back only
through the schedule, which skips those cancelled since.

A scheduled message not yet due is held back instead (``shared.delivery.schedule``), in the same pipeline:
it reaches inboxes and the stream when dispatch fires it.

Costs one ZADD per group commit, in the pipeline that hands over the posts that go before their insert
(``services/collect/acceptance.py``), and nothing per recipient. With Redis replicas (a Redis Cluster
with a replica per master), ``REPLICA_ACKS`` makes the hand-over wait for them before the 202
(``complete``): a failover then loses nothing collect accepted. While a master has no live replica
(one died, or a failover just promoted it), collect answers 503 until a replica is back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline

from shared.delivery.inbox import Inbox
from shared.delivery.schedule import Schedule
from shared.delivery.stream import ShardedStream
from shared.infra.clients import is_cluster
from shared.infra.clock import now_ms
from shared.model.message import Message, by_post
from shared.wire.errors import Unavailable

HANDOVER_KEY = "handover"


def unrecorded(message: Message, recorded: Collection[str]) -> Message | None:
    """``message`` for those of its recipients no lifecycle row names (``recorded``), None if there are none left; a
    topic or broadcast message (no recipients) whole, or None once any row names it."""
    if message.topic is not None:
        return None if recorded else message
    users = tuple(u for u in message.users if u not in recorded)
    if not users:
        return None
    return message if len(users) == len(message.users) else replace(message, users=users)


class Handover:
    def __init__(self, redis: Redis, inbox: Inbox, stream: ShardedStream, replica_acks: int = 0, ack_ms: int = 500) -> None:
        self.redis = redis
        self.inbox = inbox
        self.stream = stream
        self.replica_acks = replica_acks
        self.ack_ms = ack_ms
        self.schedule = Schedule(redis)

    async def intend(self, messages: Iterable[Message], now_ms: int) -> None:
        """Record that these posts are about to be stored; an intent already there (an earlier attempt) keeps its time.
        (A post handed over ahead of its insert needs none: ``services/collect/acceptance.py``.)"""
        posts = by_post(messages)
        if posts:
            await self.redis.zadd(HANDOVER_KEY, dict.fromkeys(posts, now_ms), nx=True)

    async def complete(self, messages: list[Message]) -> None:
        """One pipeline: open each delivery in its user's inbox, append the posts to the stream (or hold back the
        messages not due yet), drop their intents; with ``replica_acks``, then wait until that many replicas of
        each master have it all (``WAIT``).

        Raises ``Unavailable`` if they do not within ``ack_ms``: Redis replicates asynchronously, so a master
        killed right after answering can take the last writes with it, and a failover would then lose a post
        already answered 202 (its intent is gone too, so the reconciler would not finish it).
        """
        if not messages:
            return
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            self.stage(pipe, [m for m in messages if m.due_ms <= now])
            self.schedule.stage(pipe, (m for m in messages if m.due_ms > now))
            pipe.zrem(HANDOVER_KEY, *by_post(messages))
            waits = self._stage_waits(pipe)
            replies = await pipe.execute()
        if waits and min(replies[-waits:]) < self.replica_acks:
            raise Unavailable(f"Redis replicas did not confirm the hand-over within {self.ack_ms} ms")

    def _stage_waits(self, pipe: Pipeline) -> int:
        """Queue a WAIT after the writes on each master's connection (every master: a post touches most); return how many."""
        if not self.replica_acks:
            return 0
        masters = cast(RedisCluster, self.redis).get_primaries() if is_cluster(self.redis) else [None]
        for node in masters:
            pipe.execute_command("WAIT", self.replica_acks, self.ack_ms, **({"target_nodes": node} if node else {}))
        return len(masters)

    def stage(self, pipe: Pipeline, messages: list[Message]) -> None:
        """Queue on ``pipe`` what hands ``messages`` to dispatch now: their inboxes opened, their posts on the stream."""
        self.inbox.stage(pipe, messages)
        self.stream.stage(pipe, messages)

    async def finish(self, messages: list[Message], recorded: Mapping[str, Collection[str]] | None = None) -> None:
        """Hand over posts MongoDB has whose hand-over nobody finished (the reconciler): like ``complete``, except that
        every scheduled message goes to the schedule, even one due by now (it fires at once), and only if no cancel
        took it out; then drop their intents. The intent may be a refused Idempotency-Key retry's, left after the
        first attempt's hand-over, and its deliveries fired, acked or cancelled since: a delivery with a lifecycle
        record (``recorded``: message id -> the users its rows name, "" for a topic message's) is not handed over
        again, nor is a scheduled message a cancel took out: none must come back."""
        waiting = [w for m in messages if (w := unrecorded(m, (recorded or {}).get(m.id, ()))) is not None]
        await self.schedule.hold([m for m in waiting if m.due_ms])
        await self.complete([m for m in waiting if not m.due_ms])
        await self.drop(list(by_post(messages)))

    async def settle_retried(self, messages: Iterable[Message], now_ms: int) -> None:
        """For posts MongoDB already had (a retried Idempotency-Key): drop the intent this attempt wrote. An older
        intent stays: the first attempt died before its hand-over, which the reconciler finishes from MongoDB."""
        posts = list(by_post(messages))
        if posts:
            scores = await self.redis.zmscore(HANDOVER_KEY, posts)
            ours = [p for p, score in zip(posts, scores) if score == now_ms]
            if ours:
                await self.redis.zrem(HANDOVER_KEY, *ours)

    async def unfinished(self, older_than_ms: int, limit: int) -> list[tuple[str, int]]:
        """Intents older than ``older_than_ms``, oldest first, with their times."""
        reply = cast(list[tuple[bytes, float]], await self.redis.zrangebyscore(HANDOVER_KEY, "-inf", older_than_ms, start=0,
                                                                               num=limit, withscores=True))
        return [(post.decode(), int(score)) for post, score in reply]

    async def drop(self, posts: list[str]) -> None:
        if posts:
            await self.redis.zrem(HANDOVER_KEY, *posts)
