"""The hand-over from collect to dispatch: Redis Streams read by a consumer group, one entry per post.

An entry carries its post's messages (frames and recipients, ``shared.model.message``'s field map), so
dispatch never reads MongoDB. It stays pending in the group until dispatch acknowledges it after
every node holding a recipient accepted it, so a dispatch restart loses nothing and several
dispatch instances share the streams. Acknowledged entries are deleted, so a stream holds only
work not done: entries read and waiting for a node (pending in the group), and its *backlog*,
entries no dispatch instance has read yet, the measure of overload (``backlog``: a hung node's
pending entries, retried by dispatch, are not load).

There is one stream per priority tier (``tier_keys``). A post goes to the stream of its most
urgent message. Reads serve the tiers in order: a lower tier fills what a higher one leaves of a
batch, and only when every tier is empty does the read block, on all of them (so a shard's three
keys share a hash tag: one blocking read may wait on all three on a Redis Cluster). An entry's id
names its tier (``high/1700000000000-0``), so ids of two streams never collide in one batch.

The tiers may be split into ``STREAM_SHARDS`` shards, so that on a Redis Cluster no single master
takes every post (``shared/infra/slots.py``, rule 6): collect appends each post to one shard by the CRC32
of its id (``ShardedStream``), and each dispatch instance runs one read loop per shard, each over
one ``DeliveryStream``. Collect and dispatch must agree on the number.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError
from redis.typing import EncodableT, KeyT, StreamIdT

from shared.infra.scripts import SlotScript
from shared.model.message import Message, by_post, messages_of, post_fields
from shared.model.priority import TIERS, Priority, post_tier

STREAM_KEY = "push:deliveries"
GROUP = "dispatch"


def tier_keys(shard: int = 0, shards: int = 1) -> dict[Priority, str]:
    """One shard's stream per tier, under one hash tag: ``{push:deliveries}`` (normal), ``...:high``, ``...:low``."""
    tag = "{" + (STREAM_KEY if shards == 1 else f"{STREAM_KEY}:{shard}") + "}"
    return {Priority.HIGH: f"{tag}:high", Priority.NORMAL: tag, Priority.LOW: f"{tag}:low"}

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
    trace: str = ""  # the posting span's ``traceparent`` (``shared.infra.tracing``), if it was traced


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
    return StreamEntry(f"{tier.value}/{entry_id.decode()}", messages_of(fields[b"p"].decode(), int(fields[b"t"]), fields), attempts,
                       fields.get(b"tp", b"").decode())


class ShardedStream:
    """Where collect (and the reconciler, and the firing of scheduled messages) append posts: each to one shard, by the
    CRC32 of its id; and the backlog of each tier over every shard."""

    def __init__(self, redis: Redis, maxlen: int = 1_000_000, shards: int = 1) -> None:
        self.shards = [DeliveryStream(redis, maxlen, tier_keys(i, shards)) for i in range(shards)]

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one XADD per post on ``pipe``, on its shard's stream of the post's tier."""
        for post, batch in by_post(messages).items():
            self.shards[zlib.crc32(post.encode()) % len(self.shards)].stage_post(pipe, post, batch)

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        forgotten: dict[str, None] = {}
        for shard in self.shards:
            forgotten.update(dict.fromkeys(await shard.forget_idle_consumers(idle_ms, keep)))
        return list(forgotten)

    async def backlog(self) -> dict[Priority, Backlog]:
        """Each tier's backlog over every shard."""
        total = {tier: Backlog(0, None) for tier in TIERS}
        for shard in self.shards:
            for tier, backlog in (await shard.backlog()).items():
                total[tier] = total[tier] + backlog
        return total


class DeliveryStream:
    """One shard: a stream per tier and its consumer group."""

    def __init__(self, redis: Redis, maxlen: int = 1_000_000, keys: dict[Priority, str] | None = None) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.keys = keys or tier_keys()
        self.tier_of_key = {key.encode(): tier for tier, key in self.keys.items()}
        self._backlog = SlotScript(redis, BACKLOG)
        self._behind = False  # the last read was full: read the tiers in turn (``read``)

    def _entries(self, reply: Any) -> list[StreamEntry]:
        """The entries of an XREADGROUP reply (over one or more of the tiers' streams), most urgent tier first."""
        streams = reply.items() if isinstance(reply, dict) else reply
        read = [(self.tier_of_key[key], entries) for key, entries in streams]
        read.sort(key=lambda tier_entries: TIERS.index(tier_entries[0]))
        return [_entry(tier, i, f) for tier, entries in read for i, f in entries if f]

    def stage_post(self, pipe: Pipeline, post: str, batch: list[Message]) -> None:
        """Queue the post's XADD on its tier's stream, trimming it to about ``maxlen`` entries: a backlog past that
        (dispatch down for long) loses only the live push, since every delivery waits in its inbox too."""
        key = self.keys[post_tier(m.priority for m in batch)]
        traced: dict[EncodableT, EncodableT] = {"tp": batch[0].trace} if batch[0].trace else {}
        pipe.xadd(key, {"p": post, "t": batch[0].ts, **post_fields(batch), **traced}, maxlen=self.maxlen, approximate=True)

    async def ensure_group(self) -> None:
        for key in self.keys.values():
            try:
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, consumer: str, count: int, block_ms: int, ack: Iterable[str] = ()) -> list[StreamEntry]:
        """New entries for this consumer, most urgent tier first; they stay pending until acknowledged. Waits up to
        ``block_ms`` when every tier is empty. The entries in ``ack`` (the previous cycle's) are acknowledged in the
        same round trip, before the read.

        While the streams keep up (the last read was not full), one blocking read over the three tiers answers at once
        with what any of them holds (up to ``count`` each): one round trip per cycle. Behind a backlog (the last read
        was full), the tiers are read in turn, so high entries fill a batch before normal and low ones take the rest."""
        entries: list[StreamEntry] = []
        acks = list(ack)
        if self._behind:
            for tier in TIERS:
                one: dict[KeyT, StreamIdT] = {self.keys[tier]: ">"}
                entries += self._entries(await self._read(acks, consumer, one, count - len(entries)))
                acks = []
                if len(entries) >= count:
                    break
        if not entries:
            streams: dict[KeyT, StreamIdT] = {self.keys[tier]: ">" for tier in TIERS}
            entries = self._entries(await self._read(acks, consumer, streams, count, block_ms))
        self._behind = len(entries) >= count
        return entries

    async def _read(self, acks: list[str], consumer: str, streams: dict[KeyT, StreamIdT], count: int,
                    block_ms: int | None = None) -> Any:
        """One XREADGROUP, after acknowledging ``acks`` in the same pipeline if there are any."""
        if not acks:
            return await self.redis.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms)
        async with self.redis.pipeline(transaction=False) as pipe:
            self._stage_ack(pipe, acks)
            pipe.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms)
            return (await pipe.execute())[-1]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries another (or this) consumer read but did not acknowledge in time, high tier first,
        with how often each was tried."""
        claimed: list[tuple[Priority, bytes, dict[bytes, bytes]]] = []
        for tier in TIERS:
            reply = await self.redis.xautoclaim(self.keys[tier], GROUP, consumer, min_idle_ms, "0-0", count=count - len(claimed))
            claimed += [(tier, i, f) for i, f in reply[1] if f]
            if len(claimed) >= count:
                break
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier, entry_id, _ in claimed:
                pipe.xpending_range(self.keys[tier], GROUP, entry_id, entry_id, 1)
            pending = await pipe.execute()
        return [_entry(t, i, f, p[0]["times_delivered"] if p else 1) for (t, i, f), p in zip(claimed, pending)]

    async def forget_idle_consumers(self, idle_ms: int, keep: str) -> list[str]:
        """Delete consumers of the group (dispatch instances gone) idle for ``idle_ms`` with nothing pending, per tier."""
        forgotten: dict[str, None] = {}
        for key in self.keys.values():
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
        ids = list(entry_ids)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self._stage_ack(pipe, ids)
            await pipe.execute()

    def _stage_ack(self, pipe: Pipeline, entry_ids: list[str]) -> None:
        by_tier: dict[Priority, list[str]] = {}
        for entry_id in entry_ids:
            tier, stream_id = split_entry_id(entry_id)
            by_tier.setdefault(tier, []).append(stream_id)
        for tier, ids in by_tier.items():
            pipe.xack(self.keys[tier], GROUP, *ids)
            pipe.xdel(self.keys[tier], *ids)

    async def backlog(self) -> dict[Priority, Backlog]:
        """Each tier's backlog, in one round trip (a script per stream: each touches one key)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier in TIERS:
                self._backlog.stage(pipe, [self.keys[tier]], head=[GROUP])
            replies = await pipe.execute()
        return {tier: Backlog(int(entries), int(first.split(b"-")[0]) if first else None)
                for tier, (entries, first) in zip(TIERS, replies)}
