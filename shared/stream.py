"""The hand-over from collect to dispatch: a Redis Stream read by a consumer group, one entry per message.

An entry carries the message's frame and recipients, so dispatch never reads MongoDB. It stays
pending in the group until dispatch acknowledges it after every node holding a recipient accepted
it, so a dispatch restart loses nothing and several dispatch instances share the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.message import Message, join_users, split_users

STREAM_KEY = "push:deliveries"
GROUP = "dispatch"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    message: Message


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEntry:
    message = Message(fields[b"m"].decode(), split_users(fields[b"u"]), fields[b"f"].decode(), int(fields[b"t"]),
                      int(fields[b"x"]))
    return StreamEntry(entry_id.decode(), message)


class DeliveryStream:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def stage(pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one XADD per message on ``pipe``."""
        for m in messages:
            pipe.xadd(STREAM_KEY, {"m": m.id, "u": join_users(m.users), "f": m.frame, "t": m.ts, "x": m.expires_ms})

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
        """Entries another (or this) consumer read but did not acknowledge in time: retry them."""
        reply = await self.redis.xautoclaim(STREAM_KEY, GROUP, consumer, min_idle_ms, "0-0", count=count)
        return [_entry(i, f) for i, f in reply[1] if f]

    async def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete, so the stream holds only work not yet done."""
        if not entry_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(STREAM_KEY, GROUP, *entry_ids)
            pipe.xdel(STREAM_KEY, *entry_ids)
            await pipe.execute()
