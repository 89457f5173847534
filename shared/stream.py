"""The hand-over from collect to dispatch: a Redis Stream read by a consumer group, one entry per post.

An entry carries its post's messages (frames and recipients, ``shared.message``'s field map), so
dispatch never reads MongoDB. It stays pending in the group until dispatch acknowledges it after
every node holding a recipient accepted it, so a dispatch restart loses nothing and several
dispatch instances share the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.message import Message, by_post, messages_of, post_fields

STREAM_KEY = "push:deliveries"
GROUP = "dispatch"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    messages: list[Message]
    attempts: int = 1  # times the group handed it to a consumer, this one included


def _entry(entry_id: bytes, fields: dict[bytes, bytes], attempts: int = 1) -> StreamEntry:
    return StreamEntry(entry_id.decode(), messages_of(fields[b"p"].decode(), int(fields[b"t"]), fields), attempts)


class DeliveryStream:
    def __init__(self, redis: Redis, maxlen: int = 1_000_000) -> None:
        self.redis = redis
        self.maxlen = maxlen

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one XADD per post on ``pipe``, trimming the stream to about ``maxlen`` entries: a backlog past
        that (dispatch down for long) loses only the live push, since every delivery waits in its inbox too."""
        for post, batch in by_post(messages).items():
            pipe.xadd(STREAM_KEY, {"p": post, "t": batch[0].ts, **post_fields(batch)}, maxlen=self.maxlen, approximate=True)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """New entries for this consumer; they stay pending until ``ack``."""
        reply = await self.redis.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=count, block=block_ms)
        return [_entry(i, f) for _, entries in reply for i, f in entries if f]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Entries another (or this) consumer read but did not acknowledge in time, with how often each was tried."""
        reply = await self.redis.xautoclaim(STREAM_KEY, GROUP, consumer, min_idle_ms, "0-0", count=count)
        claimed = [(i, f) for i, f in reply[1] if f]
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(STREAM_KEY, GROUP, entry_id, entry_id, 1)
            pending = await pipe.execute()
        return [_entry(i, f, p[0]["times_delivered"] if p else 1) for (i, f), p in zip(claimed, pending)]

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        """Delete consumers of the group (dispatch instances gone) idle for ``idle_ms`` with nothing pending."""
        try:
            consumers = await self.redis.xinfo_consumers(STREAM_KEY, GROUP)
        except ResponseError:  # no stream or group yet: nobody to forget
            return []
        idle = [c["name"] for c in consumers if c["pending"] == 0 and c["idle"] >= idle_ms and c["name"] != keep.encode()]
        for name in idle:
            await self.redis.xgroup_delconsumer(STREAM_KEY, GROUP, name)
        return [n.decode() for n in idle]

    async def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete, so the stream holds only work not yet done."""
        if not entry_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(STREAM_KEY, GROUP, *entry_ids)
            pipe.xdel(STREAM_KEY, *entry_ids)
            await pipe.execute()
