"""A node's part of join and leave (``shared.cluster.topic_members``): its users' subscriptions to join/leave topics
written to Redis in batches, the marks of dead nodes swept, and every node's events written to local subscribers.

Like routes (``registrar.py``), a (un)subscribe only marks its (topic, user) pair dirty; the flusher decides at
flush time, from this node's own count of the user's sockets on the topic, whether the node holds the user or
not, and writes only a change. So a user's second tab costs nothing, and a page reload (a close and an open
within one flush) makes no leave and no join. Only namespaces with ``join_leave`` on are tracked at all.

A node that was SIGKILLed leaves its marks behind; every node looks every ``SWEEP_SECONDS`` for nodes holding
marks whose card is gone and unmarks them (one node wins each field), so their users leave within
``NODE_TTL_SECONDS`` and a sweep. A node starting sweeps the marks of its own earlier life first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from redis.asyncio import Redis

from services.push.hub import Hub
from shared.cluster.routes import RouteReader
from shared.cluster.topic_members import EVENTS_CHANNEL, Pair, TopicMembers
from shared.infra.clients import REDIS_FAILURES
from shared.infra.retry import Backoff
from shared.model.topics import Namespaces
from shared.wire.protocol import Op, PresenceFrame

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0


class Membership:
    def __init__(self, redis: Redis, node_id: str, hub: Hub, namespaces: Namespaces, routes: RouteReader) -> None:
        self.redis = redis
        self.members = TopicMembers(redis, node_id)
        self.node_id = node_id
        self.hub = hub
        self.namespaces = namespaces
        self.routes = routes
        self.enabled = any(fields.get("join_leave") for fields in namespaces.overrides.values())
        self._sockets: Counter[Pair] = Counter()  # this node's sockets of each user subscribed to each tracked topic
        self._marked: set[Pair] = set()  # the pairs this node's mark in Redis says it holds
        self._dirty: set[Pair] = set()
        self._wake = asyncio.Event()

    def subscribed(self, user_id: str, topics: Iterable[str]) -> None:
        self._count(user_id, topics, 1)

    def unsubscribed(self, user_id: str, topics: Iterable[str]) -> None:
        self._count(user_id, topics, -1)

    def _count(self, user_id: str, topics: Iterable[str], change: int) -> None:
        for topic in topics:
            if self.namespaces.policy(topic).join_leave:
                pair = (topic, user_id)
                self._sockets[pair] += change
                if self._sockets[pair] <= 0:
                    del self._sockets[pair]
                self._dirty.add(pair)
                self._wake.set()

    async def run(self) -> None:
        """Sweep this node's earlier life, then flush, sweep and listen until cancelled (nothing without join_leave)."""
        if not self.enabled:
            return
        backoff = Backoff()
        while True:
            try:
                await self._announce(await self.members.sweep(self.node_id), Op.LEAVE)
                break
            except REDIS_FAILURES as exc:  # Redis not reachable yet: the node serves meanwhile, marks wait
                await backoff.failed(log, "sweeping this node's earlier marks", exc)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._flush_loop())
            group.create_task(self._sweep_loop())
            group.create_task(self._listen())

    async def _flush_loop(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            joining = [p for p in dirty if p in self._sockets and p not in self._marked]
            leaving = [p for p in dirty if p not in self._sockets and p in self._marked]
            try:
                joined = await self.members.join(joining)
                self._marked.update(joining)
                left = await self.members.leave(leaving)
                self._marked.difference_update(leaving)
                await self._announce(joined, Op.JOIN)
                await self._announce(left, Op.LEAVE)
                backoff.succeeded()
            except REDIS_FAILURES as exc:  # Redis down: try the same pairs again (their counts decide at the next flush)
                self._dirty |= dirty
                self._wake.set()
                await backoff.failed(log, "writing topic members", exc)

    async def _sweep_loop(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                others = await self.members.joiners() - {self.node_id}
                if others:
                    for dead in others - set(await self.routes.live_nodes()):
                        left = await self.members.sweep(dead)
                        log.info("swept a dead node's topic members", extra={"node": dead, "count": len(left)})
                        await self._announce(left, Op.LEAVE)
                backoff.succeeded()
            except REDIS_FAILURES as exc:
                await backoff.failed(log, "sweeping dead nodes' topic members", exc)

    async def _announce(self, pairs: list[Pair], kind: Op) -> None:
        await self.members.announce(PresenceFrame(kind, topic, user) for topic, user in pairs)

    async def _listen(self) -> None:
        """Write every node's join and leave frames to this node's subscribers of their topics."""
        backoff = Backoff()
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(EVENTS_CHANNEL)
                    backoff.succeeded()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            for frame in PresenceFrame.decode_all(message["data"]):
                                self.hub.announce(frame.topic, frame.encode())
            except REDIS_FAILURES as exc:  # the connection dropped: events passing meanwhile are lost (notices, not messages)
                await backoff.failed(log, "listening for topic join/leave events", exc)
