"""Who is subscribed to each join/leave topic, across nodes: the Redis side of ``join`` and ``leave`` frames.

Only topics whose namespace switches ``join_leave`` on (``TOPIC_NAMESPACES``) are tracked. Keys:

* ``member:{t:<topic>}:<user>`` -- a HASH node id -> 1 while that node holds a socket of the user subscribed to
  the topic. The first field makes the user *join*, the last one gone makes them *leave* (``MARK``/``UNMARK``
  answer which), so a user with tabs on two nodes joins once and leaves once;
* ``joined:{nodes}:<node>`` -- a SET of ``"<topic> <user>"`` a node has marked (topic names and user ids hold no
  space), and ``joiners:{nodes}`` the SET of nodes that have one: what to unmark for a node that died.

A node killed without unmarking is swept by the live ones once its card expires (``sweep``): each of its
fields is removed by the same ``UNMARK``, so a user with no other node leaves, once, whichever node sweeps.

Events go to every node over Redis pub/sub (``EVENTS_CHANNEL``: on a Redis Cluster a ``PUBLISH`` reaches
every node's subscribers): each node writes them to its own subscribers of the topic. They are notices,
not messages: not stored, not replayed, lost by a node whose Redis connection is down when they pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from shared.cluster.topic_log import tag
from shared.infra.clients import text
from shared.infra.scripts import SlotScript
from shared.wire.protocol import PresenceFrame

EVENTS_CHANNEL = "topic-events"
JOINERS_KEY = "joiners:{nodes}"

# Transition join: KEYS member hashes, ARGV[1] the node; per key 1 if the user had no node there before.
MARK = """
local joined = {}
for i, key in ipairs(KEYS) do
  joined[i] = (redis.call('HSET', key, ARGV[1], 1) == 1 and redis.call('HLEN', key) == 1) and 1 or 0
end
return joined
"""

# Transition leave: KEYS member hashes, ARGV[1] the node; per key 1 if that was the user's last node there.
UNMARK = """
local left = {}
for i, key in ipairs(KEYS) do
  left[i] = (redis.call('HDEL', key, ARGV[1]) == 1 and redis.call('EXISTS', key) == 0) and 1 or 0
end
return left
"""

Pair = tuple[str, str]  # (topic, user)


def member_key(topic: str, user: str) -> str:
    return f"member:{tag(topic)}:{user}"


def joined_key(node: str) -> str:
    return f"joined:{{nodes}}:{node}"


class TopicMembers:
    def __init__(self, redis: Redis, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self.mark = SlotScript(redis, MARK)
        self.unmark = SlotScript(redis, UNMARK)

    async def join(self, pairs: list[Pair]) -> list[Pair]:
        """Mark this node as holding each user on each topic; return the pairs that joined (no other node had them).
        The node's index is written first, so a crash in between still leaves every mark to sweep."""
        if not pairs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(JOINERS_KEY, self.node_id)
            pipe.sadd(joined_key(self.node_id), *(f"{t} {u}" for t, u in pairs))
            await pipe.execute()
        return _which(pairs, await self.mark.each([member_key(t, u) for t, u in pairs], head=[self.node_id]))

    async def leave(self, pairs: list[Pair], node: str | None = None) -> list[Pair]:
        """Unmark ``node`` (this one by default) for each pair; return the pairs that left (it was their last node)."""
        if not pairs:
            return []
        node = node or self.node_id
        left = _which(pairs, await self.unmark.each([member_key(t, u) for t, u in pairs], head=[node]))
        await self.redis.srem(joined_key(node), *(f"{t} {u}" for t, u in pairs))
        return left

    async def sweep(self, node: str) -> list[Pair]:
        """Unmark everything ``node`` had marked (it died, or is this node's earlier life); return who left."""
        pairs = [_pair(text(m)) for m in await self.redis.smembers(joined_key(node))]
        left = await self.leave(pairs, node) if pairs else []
        await self.redis.srem(JOINERS_KEY, node)
        return left

    async def joiners(self) -> set[str]:
        """The nodes that hold marks."""
        return {text(n) for n in await self.redis.smembers(JOINERS_KEY)}

    async def announce(self, events: Iterable[PresenceFrame]) -> None:
        """Send these frames to every node, in one message (``PresenceFrame.decode_all`` reads it)."""
        frames = [e.encode() for e in events]
        if frames:
            await self.redis.publish(EVENTS_CHANNEL, b"[" + b",".join(frames) + b"]")


def _pair(member: str) -> Pair:
    topic, _, user = member.partition(" ")
    return topic, user


def _which(pairs: list[Pair], flags: list[int]) -> list[Pair]:
    return [pair for pair, flag in zip(pairs, flags) if flag]
