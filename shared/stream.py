"""The hand-over from collect to dispatch: a Redis Stream read by a consumer group.

An entry stays pending in the group until dispatch acknowledges it after a node accepted it, so a
dispatch restart loses nothing and several dispatch instances share the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.protocol import Delivery, MessageFrame
from shared.store import NewDelivery

STREAM_KEY = "push:deliveries"
GROUP = "dispatch"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    delivery: Delivery
    expires_ms: int


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEntry:
    delivery = Delivery(fields[b"m"].decode(), fields[b"u"].decode(), fields[b"f"].decode(), int(fields[b"t"]))
    return StreamEntry(entry_id.decode(), delivery, int(fields[b"x"]))


def stream_items(records: Iterable[NewDelivery]) -> list[tuple[Delivery, int]]:
    """What goes on the stream for stored records: each message's frame is encoded once."""
    frames: dict[str, str] = {}
    items = []
    for r in records:
        if r.message_id not in frames:
            frames[r.message_id] = MessageFrame(r.message_id, r.payload, r.ts).encode()
        items.append((Delivery(r.message_id, r.user_id, frames[r.message_id], r.ts), r.expires_ms))
    return items


class DeliveryStream:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def enqueue(self, deliveries: Iterable[tuple[Delivery, int]]) -> None:
        """Append (delivery, expiry in ms) pairs in one pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for d, expires_ms in deliveries:
                pipe.xadd(STREAM_KEY, {"m": d.message_id, "u": d.user_id, "f": d.frame, "t": d.ts, "x": expires_ms})
            await pipe.execute()

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
