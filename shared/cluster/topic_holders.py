"""Which push nodes hold subscribers of each topic: the Redis side of topics (the node keeps topic -> sockets).

Keys:

* ``topic:{topics}:<name>`` -- a HASH node id -> how many of that node's sockets are subscribed, with the same
  long garbage-collection TTL as user routes (renewed by the node's heartbeat). A node writes its field
  only when its local count changes (coalesced with its route writes, one script call per flush) and
  deletes it with its last local subscriber and when it withdraws at shutdown;
* ``{topics}`` -- a SET of topic names that had a subscriber, for enumeration; a name leaves it when its
  hash empties, so an entry can only be briefly stale, and readers skip empty ones. Both share the
  ``{topics}`` hash tag, so the script below writes them together on a Redis Cluster too (``shared.infra.slots``).

Like a route, a field counts only while its node's card is live: a killed node stops counting (and
being sent topic messages) when its card expires, without anyone deleting its fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.infra.clients import text
from shared.infra.scripts import SlotScript

TOPICS_KEY = "{topics}"  # the hash tag keeps the counts and their index on one slot: one script writes both

# KEYS: topic hashes, then the ``topics`` set; ARGV: node id, ttl, then per hash its name and this node's count.
# A count > 0 sets the node's field (and renews the TTL); 0 drops it, and the name once the hash is empty.
WRITE_COUNTS = """
local node, ttl, index = ARGV[1], tonumber(ARGV[2]), KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local key, name, count = KEYS[i], ARGV[2 * i + 1], tonumber(ARGV[2 * i + 2])
  if count > 0 then
    redis.call('HSET', key, node, count)
    redis.call('EXPIRE', key, ttl)
    redis.call('SADD', index, name)
  else
    redis.call('HDEL', key, node)
    if redis.call('HLEN', key) == 0 then redis.call('SREM', index, name) end
  end
end
return #KEYS - 1
"""


def topic_key(topic: str) -> str:
    return f"topic:{TOPICS_KEY}:{topic}"


class TopicWriter:
    """A push node's side: queue its per-topic socket counts on the route writer's pipelines."""

    def __init__(self, redis: Redis, node_id: str, ttl: int) -> None:
        self.node_id = node_id
        self.ttl = ttl
        self.script = SlotScript(redis, WRITE_COUNTS)

    def stage(self, pipe: Pipeline, counts: Mapping[str, int]) -> None:
        """Queue one script call writing these topics' local counts (0 removes this node from the topic)."""
        if not counts:
            return
        per_key = [*([topic, count] for topic, count in counts.items()), []]  # the index key last, with no arguments
        self.script.stage(pipe, [*map(topic_key, counts), TOPICS_KEY], per_key, head=[self.node_id, self.ttl])


class TopicReader:
    """Dispatch's (and presence's) side: the live nodes holding each topic, and its subscriber count."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def counts(self, topics: list[str], live: Iterable[str]) -> dict[str, dict[str, int]]:
        """For each topic, its live nodes and their subscribed sockets, in one round trip; topics with none are left out."""
        if not topics:
            return {}
        alive = set(live)
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.hgetall(topic_key(topic))
            replies = await pipe.execute()
        found = {}
        for topic, fields in zip(topics, replies):
            nodes = {n: int(c) for n, c in ((k.decode(), v) for k, v in fields.items()) if n in alive and int(c) > 0}
            if nodes:
                found[topic] = nodes
        return found

    async def names(self) -> list[str]:
        """Every topic name that may have subscribers (check with ``counts``)."""
        return sorted(text(m) for m in await self.redis.smembers(TOPICS_KEY))
