"""The hand-over from collect to dispatch: Redis Streams read by a consumer group, one entry per post.

An entry carries its post's messages (frames and recipients, ``shared.message``'s field map), so
dispatch never reads MongoDB. It stays pending in the group until dispatch acknowledges it after
every node holding a recipient accepted it, so a dispatch restart loses nothing and several
dispatch instances share the streams. Acknowledged entries are deleted, so a stream holds only
work not done: entries read and waiting for a node (pending in the group), and its *backlog*,
entries no dispatch instance has read yet, the measure of overload (``backlog``: a hung node's
pending entries, retried by dispatch, are not load).

There is one stream per priority tier (``STREAM_KEYS``; normal keeps the name ``push:deliveries``).
A post goes to the stream of its most urgent message. Reads serve the tiers in order: a lower tier
fills what a higher one leaves of a batch, and only when every tier is empty does the read block,
on all of them. An entry's id names its tier (``high/1700000000000-0``), so ids of two streams
never collide in one batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.message import Message, by_post, messages_of, post_fields
from shared.priority import TIERS, Priority, post_tier

STREAM_KEY = "push:deliveries"
STREAM_KEYS = {Priority.HIGH: f"{STREAM_KEY}:high", Priority.NORMAL: STREAM_KEY, Priority.LOW: f"{STREAM_KEY}:low"}
TIER_OF_KEY = {key.encode(): tier for tier, key in STREAM_KEYS.items()}
GROUP = "dispatch"

# KEYS[1]: a tier's stream; ARGV[1]: the group. Reply: how many entries the group has not read yet (the stream's
# length less the entries pending in the group), and the id of the first of them (nil if none).
BACKLOG = """
local length = redis.call('XLEN', KEYS[1])
if length == 0 then return {0, false} end
local pending, last = 0, '0-0'
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  if info['name'] == ARGV[1] then pending, last = info['pending'], info['last-delivered-id'] end
end
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
return {math.max(0, length - pending), first[1] and first[1][1] or false}
"""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str  # ``{tier}/{stream id}``
    messages: list[Message]
    attempts: int = 1  # times the group handed it to a consumer, this one included


@dataclass(frozen=True, slots=True)
class Backlog:
    """One tier's backlog: entries no dispatch instance has read yet, and when the oldest was added (ms; None: none)."""

    entries: int
    oldest_ms: int | None

    def age_ms(self, now_ms: int) -> int:
        return 0 if self.oldest_ms is None else max(0, now_ms - self.oldest_ms)

    def __add__(self, other: Backlog) -> Backlog:
        """Two queues of one tier as one: their entries, and the older of their oldest."""
        oldest = [ms for ms in (self.oldest_ms, other.oldest_ms) if ms is not None]
        return Backlog(self.entries + other.entries, min(oldest) if oldest else None)


def split_entry_id(entry_id: str) -> tuple[Priority, str]:
    tier, _, stream_id = entry_id.partition("/")
    return Priority(tier), stream_id


def _entry(tier: Priority, entry_id: bytes, fields: dict[bytes, bytes], attempts: int = 1) -> StreamEntry:
    return StreamEntry(f"{tier.value}/{entry_id.decode()}", messages_of(fields[b"p"].decode(), int(fields[b"t"]), fields), attempts)


def _entries(reply: Any) -> list[StreamEntry]:
    """The entries of an XREADGROUP reply (over one or more streams), most urgent tier first."""
    streams = reply.items() if isinstance(reply, dict) else reply
    read = [(TIER_OF_KEY[key], entries) for key, entries in streams]
    read.sort(key=lambda tier_entries: TIERS.index(tier_entries[0]))
    return [_entry(tier, i, f) for tier, entries in read for i, f in entries if f]


class DeliveryStream:
    def __init__(self, redis: Redis, maxlen: int = 1_000_000) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self._backlog = redis.register_script(BACKLOG)

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one XADD per post on its tier's stream, trimming it to about ``maxlen`` entries: a backlog past
        that (dispatch down for long) loses only the live push, since every delivery waits in its inbox too."""
        for post, batch in by_post(messages).items():
            key = STREAM_KEYS[post_tier(m.priority for m in batch)]
            pipe.xadd(key, {"p": post, "t": batch[0].ts, **post_fields(batch)}, maxlen=self.maxlen, approximate=True)

    async def ensure_group(self) -> None:
        for key in STREAM_KEYS.values():
            try:
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """Up to ``count`` new entries for this consumer, high before normal before low; they stay pending until ``ack``.
        Waits up to ``block_ms`` only when every tier is empty (then the first to get an entry answers)."""
        entries: list[StreamEntry] = []
        for tier in TIERS:
            entries += _entries(await self.redis.xreadgroup(GROUP, consumer, {STREAM_KEYS[tier]: ">"}, count=count - len(entries)))
            if len(entries) >= count:
                break
        if entries:
            return entries
        streams = {STREAM_KEYS[tier]: ">" for tier in TIERS}
        return _entries(await self.redis.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms))

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries another (or this) consumer read but did not acknowledge in time, high tier first,
        with how often each was tried."""
        claimed: list[tuple[Priority, bytes, dict[bytes, bytes]]] = []
        for tier in TIERS:
            reply = await self.redis.xautoclaim(STREAM_KEYS[tier], GROUP, consumer, min_idle_ms, "0-0", count=count - len(claimed))
            claimed += [(tier, i, f) for i, f in reply[1] if f]
            if len(claimed) >= count:
                break
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier, entry_id, _ in claimed:
                pipe.xpending_range(STREAM_KEYS[tier], GROUP, entry_id, entry_id, 1)
            pending = await pipe.execute()
        return [_entry(t, i, f, p[0]["times_delivered"] if p else 1) for (t, i, f), p in zip(claimed, pending)]

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        """Delete consumers of the group (dispatch instances gone) idle for ``idle_ms`` with nothing pending, per tier."""
        forgotten: dict[str, None] = {}
        for key in STREAM_KEYS.values():
            try:
                consumers = await self.redis.xinfo_consumers(key, GROUP)
            except ResponseError:  # no stream or group yet: nobody to forget
                continue
            idle = [c["name"] for c in consumers if c["pending"] == 0 and c["idle"] >= idle_ms and c["name"] != keep.encode()]
            for name in idle:
                await self.redis.xgroup_delconsumer(key, GROUP, name)
                forgotten[name.decode()] = None
        return list(forgotten)

    async def ack(self, entry_ids: Iterable[str]) -> None:
        """Acknowledge and delete, so each stream holds only work not yet done."""
        by_tier: dict[Priority, list[str]] = {}
        for entry_id in entry_ids:
            tier, stream_id = split_entry_id(entry_id)
            by_tier.setdefault(tier, []).append(stream_id)
        if not by_tier:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier, ids in by_tier.items():
                pipe.xack(STREAM_KEYS[tier], GROUP, *ids)
                pipe.xdel(STREAM_KEYS[tier], *ids)
            await pipe.execute()

    async def backlog(self) -> dict[Priority, Backlog]:
        """Each tier's backlog, in one round trip (a script per stream: each touches one key)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier in TIERS:
                await self._backlog(keys=[STREAM_KEYS[tier]], args=[GROUP], client=pipe)
            replies = await pipe.execute()
        return {tier: Backlog(int(entries), int(first.split(b"-")[0]) if first else None)
                for tier, (entries, first) in zip(TIERS, replies)}
