"""The hand-over from collect to dispatch: a Redis Stream read by a consumer group, one entry per post.

An entry carries its post's messages (frames and recipients, ``shared.message``'s field map), so
dispatch never reads MongoDB. It stays pending in the group until dispatch acknowledges it after
every node holding a recipient accepted it, so a dispatch restart loses nothing and several
dispatch instances share the stream.

The stream may be split into ``STREAM_SHARDS`` keys (``stream_keys``), so that on a Redis Cluster no
single master takes every post: collect appends each post to one shard by its id
(``ShardedStream``), and each dispatch instance runs one read loop per shard (``DeliveryStream``
is one key). Collect and dispatch must agree on the number.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.message import Message, by_post, messages_of, post_fields

STREAM_KEY = "push:deliveries"
GROUP = "dispatch"


def stream_keys(shards: int = 1) -> list[str]:
    """The stream's keys: ``push:deliveries`` alone, or ``shards`` shards on different slots (``shared.slots``, rule 6)."""
    return [STREAM_KEY] if shards == 1 else [f"{STREAM_KEY}:{i}" for i in range(shards)]


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    messages: list[Message]
    attempts: int = 1  # times the group handed it to a consumer, this one included


def _entry(entry_id: bytes, fields: dict[bytes, bytes], attempts: int = 1) -> StreamEntry:
    return StreamEntry(entry_id.decode(), messages_of(fields[b"p"].decode(), int(fields[b"t"]), fields), attempts)


class ShardedStream:
    """Where collect (and the reconciler) append posts: each to one of the stream's keys, by the CRC32 of its id."""

    def __init__(self, redis: Redis, maxlen: int = 1_000_000, shards: int = 1) -> None:
        self.shards = [DeliveryStream(redis, maxlen, key) for key in stream_keys(shards)]

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one XADD per post on ``pipe``, on its shard."""
        for post, batch in by_post(messages).items():
            self.shards[zlib.crc32(post.encode()) % len(self.shards)].stage_post(pipe, post, batch)

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        return [name for shard in self.shards for name in await shard.forget_idle_consumers(idle_ms, keep)]


class DeliveryStream:
    """One stream key and its consumer group."""

    def __init__(self, redis: Redis, maxlen: int = 1_000_000, key: str = STREAM_KEY) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.key = key

    def stage_post(self, pipe: Pipeline, post: str, batch: list[Message]) -> None:
        """Queue the post's XADD on ``pipe``, trimming the stream to about ``maxlen`` entries: a backlog past
        that (dispatch down for long) loses only the live push, since every delivery waits in its inbox too."""
        pipe.xadd(self.key, {"p": post, "t": batch[0].ts, **post_fields(batch)}, maxlen=self.maxlen, approximate=True)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """New entries for this consumer; they stay pending until ``ack``."""
        reply = await self.redis.xreadgroup(GROUP, consumer, {self.key: ">"}, count=count, block=block_ms)
        return [_entry(i, f) for _, entries in reply for i, f in entries if f]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Entries another (or this) consumer read but did not acknowledge in time, with how often each was tried."""
        reply = await self.redis.xautoclaim(self.key, GROUP, consumer, min_idle_ms, "0-0", count=count)
        claimed = [(i, f) for i, f in reply[1] if f]
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(self.key, GROUP, entry_id, entry_id, 1)
            pending = await pipe.execute()
        return [_entry(i, f, p[0]["times_delivered"] if p else 1) for (i, f), p in zip(claimed, pending)]

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        """Delete consumers of the group (dispatch instances gone) idle for ``idle_ms`` with nothing pending."""
        try:
            consumers = await self.redis.xinfo_consumers(self.key, GROUP)
        except ResponseError:  # no stream or group yet: nobody to forget
            return []
        idle = [c["name"] for c in consumers if c["pending"] == 0 and c["idle"] >= idle_ms and c["name"] != keep.encode()]
        for name in idle:
            await self.redis.xgroup_delconsumer(self.key, GROUP, name)
        return [n.decode() for n in idle]

    async def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete, so the stream holds only work not yet done."""
        if not entry_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.key, GROUP, *entry_ids)
            pipe.xdel(self.key, *entry_ids)
            await pipe.execute()
