"""Where users are: the Redis schema shared by push nodes (writers) and dispatch (reader).

Keys:

* ``route:{u<bucket>}:<user>`` -- a HASH node id -> how many of the user's sockets that node holds (presence reads
  the counts, dispatch the node ids), with a long TTL (``route_ttl``) that only
  collects garbage left by dead nodes;
* ``node:{nodes}:<id>`` -- the node's JSON card (link URL, public URL, load), signed with the internal key
  (``shared.wire.signing``), with a short TTL (``node_ttl``) renewed by the node's heartbeat: this key
  *is* the node's liveness, and a card that does not verify is no node at all;
* ``{nodes}`` -- a SET of every node id seen, for enumeration without KEYS/SCAN; the cards share its
  hash tag, so one MGET reads them all on a Redis Cluster too (``shared.infra.slots``);
* ``topic:{topics}:<name>`` and ``{topics}`` -- which nodes hold a topic's subscribers (``shared.cluster.topic_holders``),
  written on the same pipelines as the routes;
* ``{webhooks}:presence`` -- the users whose count changed, one stream entry per route write, for the webhooks
  service's presence watcher (``shared.delivery.webhook_feed``).

A route counts only while its node's card exists, so a killed node stops being routed to when its
card expires, while a heartbeat costs one SET per node, not one write per user.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, astuple, dataclass, replace
from typing import cast

import orjson
from redis.asyncio import Redis

from shared.cluster.topic_holders import TopicWriter
from shared.delivery.webhook_feed import stage_presence
from shared.infra.clients import text
from shared.infra.metrics import NODE_CARDS_REFUSED
from shared.infra.scripts import Scripts, SlotScript
from shared.infra.slots import user_tag
from shared.wire.signing import CARD, proof, proven

log = logging.getLogger(__name__)
NODES_KEY = "{nodes}"  # the hash tag puts the cards and their index on one slot (``shared.infra.slots``, rule 3)

# KEYS: route hashes; ARGV: node id, ttl, then per hash this node's count of the user's sockets. A count > 0 sets the
# node's field and renews the TTL; 0 drops the field. One call per slot instead of two pipelined commands per user,
# whose replies redis-py reads for ~7 µs each (Redis spends a little more on a script call: loadtest/README.md,
# "A connect's cost").
WRITE_ROUTES = """
local node, ttl = ARGV[1], ARGV[2]
for i, key in ipairs(KEYS) do
  local count = ARGV[i + 2]
  if count == '0' then
    redis.call('HDEL', key, node)
  else
    redis.call('HSET', key, node, count)
    redis.call('EXPIRE', key, ttl)
  end
end
return #KEYS
"""


def route_key(user_id: str) -> str:
    return f"route:{user_tag(user_id)}:{user_id}"


def node_key(node_id: str) -> str:
    return f"node:{NODES_KEY}:{node_id}"


@dataclass(frozen=True, slots=True)
class NodeCard:
    """What a push node publishes about itself on each heartbeat."""

    id: str
    link_url: str
    public_url: str
    connections: int = 0
    users: int = 0
    updated_ms: int = 0
    sig: str = ""  # proof(internal key, "card", every field above)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes | str) -> NodeCard:
        return cls(**orjson.loads(data))

    def sealed(self, key: str) -> NodeCard:
        return replace(self, sig=proof(key, CARD, *astuple(self)[:-1]))

    def genuine(self, key: str) -> bool:
        return isinstance(self.sig, str) and proven(key, self.sig, CARD, *astuple(self)[:-1])


class RouteWriter:
    """A push node's side: add and drop its routes and topic counts, renew its card, withdraw on shutdown."""

    def __init__(self, redis: Redis, node_id: str, route_ttl: int, node_ttl: int) -> None:
        self.redis = redis
        self.node_id = node_id
        self.route_ttl = route_ttl
        self.node_ttl = node_ttl
        self.topics = TopicWriter(redis, node_id, route_ttl)
        self.routes = SlotScript(redis, WRITE_ROUTES)

    async def apply(self, present: Mapping[str, int], gone: Iterable[str], topics: Mapping[str, int] = {}) -> None:
        """Write this node's socket count into the routes of ``present`` users (renewing their TTL), remove it from
        ``gone`` ones and write its ``topics`` counts (0: none left here), in one pipeline; the users go on the
        presence feed too."""
        counts = {**present, **dict.fromkeys(gone, 0)}
        async with self.redis.pipeline(transaction=False) as pipe:
            if counts:
                self.routes.stage(pipe, [route_key(u) for u in counts], [[c] for c in counts.values()],
                                  head=[self.node_id, self.route_ttl])
            stage_presence(pipe, list(counts))
            self.topics.stage(pipe, topics)
            await pipe.execute()

    async def heartbeat(self, card: NodeCard) -> bool:
        """Renew the card (liveness); route TTLs are renewed by the flusher, which writes each count as it reads it.

        Returns False when the card was gone (Redis lost its data, or this node was unreachable past
        its TTL): the node must then write all its routes again.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(node_key(self.node_id), card.encode(), ex=self.node_ttl, get=True)
            pipe.sadd(NODES_KEY, self.node_id)
            replies = await pipe.execute()
        return replies[0] is not None

    async def withdraw(self, users: Iterable[str], topics: Iterable[str] = ()) -> None:
        """Clean shutdown: drop every route, topic count and the card at once, so nothing is routed here."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hdel(route_key(user), self.node_id)
            self.topics.stage(pipe, dict.fromkeys(topics, 0))
            pipe.delete(node_key(self.node_id))
            pipe.srem(NODES_KEY, self.node_id)
            await pipe.execute()


class RouteReader:
    """Dispatch's side: live nodes and, for a batch of users, the live nodes holding each."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self.scripts = Scripts(redis)
        self._refused: set[bytes] = set()  # cards already reported, so one is logged and counted once

    async def live_nodes(self) -> dict[str, NodeCard]:
        """The cards of live nodes that verify under the internal key (and name the id they are stored under)."""
        ids = sorted(text(m) for m in await self.redis.smembers(NODES_KEY))
        if not ids:
            return {}
        cards = cast(list[bytes | None], await self.redis.mget([node_key(i) for i in ids]))
        live = {}
        for node_id, data in zip(ids, cards):
            if data is not None:
                card = self._verified(node_id, data)
                if card is not None:
                    live[node_id] = card
        return live

    def _verified(self, node_id: str, data: bytes) -> NodeCard | None:
        try:
            card = NodeCard.decode(data)
            if card.id == node_id and card.genuine(self.key):
                return card
            reason = "signature does not verify" if card.id == node_id else f"card names {card.id!r}"
        except (ValueError, TypeError) as exc:  # not JSON, not an object, unknown or missing fields
            reason = f"unreadable: {exc}"
        if data not in self._refused:
            if len(self._refused) >= 1024:
                self._refused.clear()
            self._refused.add(data)
            NODE_CARDS_REFUSED.inc()
            log.warning("node card refused", extra={"node": node_id, "error": reason})
        return None

    async def forget_dead_nodes(self) -> list[str]:
        """Drop from ``nodes`` the ids whose card is gone (a live node adds itself back on its next beat)."""
        ids = [text(m) for m in await self.redis.smembers(NODES_KEY)]
        if not ids:
            return []
        cards = cast(list[bytes | None], await self.redis.mget([node_key(i) for i in ids]))
        dead = [i for i, card in zip(ids, cards) if card is None]
        if dead:
            await self.redis.srem(NODES_KEY, *dead)
        return dead

    async def lookup(self, users: list[str], live: Iterable[str]) -> dict[str, list[str]]:
        """Each user's live node ids, read in one script call; users with none are left out."""
        return {user: list(nodes) for user, nodes in (await self.sockets(users, live)).items()}

    async def sockets(self, users: list[str], live: Iterable[str]) -> dict[str, dict[str, int]]:
        """Each user's live nodes and the user's sockets on each, read in one script call; users with none are
        left out."""
        if not users:
            return {}
        alive = set(live)
        replies = await self.scripts.hgetall_each.each([route_key(u) for u in users])
        found = {}
        for user, flat in zip(users, replies):
            nodes = {n.decode(): int(c) for n, c in zip(flat[::2], flat[1::2]) if n.decode() in alive and int(c) > 0}
            if nodes:
                found[user] = nodes
        return found


async def directory(reader: RouteReader) -> list[NodeCard]:
    """Live push nodes, least loaded first: what a browser picks from."""
    cards = await reader.live_nodes()
    return sorted(cards.values(), key=lambda c: (c.connections, c.id))
