"""Keeping this node's routes in Redis true: batched route writes, the heartbeat, and withdrawal.

Route changes are not written per connection. ``arrived``/``left`` mark a user dirty; one flusher
writes every dirty user in a single pipeline, deciding from the hub *at flush time* whether the
user is present (HSET of its socket count here, which presence reads) or gone (HDEL). A connect storm becomes a few pipelines, and a quick
close-then-reopen can never leave the writes in the wrong order. Topics go the same way: a
(un)subscribe marks the topic dirty and the flush writes this node's count of its subscribers
(``shared.cluster.topic_holders``), so a topic costs Redis a write only when its local count changes.

The heartbeat renews the node card (liveness) every ``node_ttl / 3`` seconds, and hands the flusher
a slice of user routes and topics to write again (renewing their TTL), so that each is renewed
about three times per ``route_ttl``: at 15k users, a 30 s node TTL and a 1 h route TTL that is
~40 more commands every 10 s. A connection or disconnection writes its user's count; a message
writes nothing. If the card was gone (Redis unreachable past ``node_ttl``, say in a Redis Cluster
failover), dispatch took the node for dead and left its users' messages in their inboxes: the
heartbeat writes every route again and, a beat later (once every dispatch instance has seen the
card), has the open sessions replayed; a dispatch link opening does the same (``server.py``).

``withdraw`` (a drain or a shutdown) drops every route, topic count and the card, and from then on
the flusher and the heartbeat write nothing more: the node stays withdrawn while its last sockets
leave. One lock orders these writes, so a flush in flight cannot land a route after the withdrawal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable

from services.push.hub import Hub
from shared.cluster.routes import NodeCard, RouteWriter
from shared.cluster.topic_holders import TopicReader
from shared.infra.retry import Backoff
from shared.wire.errors import Unavailable

log = logging.getLogger(__name__)


class Registrar:
    def __init__(self, writer: RouteWriter, hub: Hub, card: Callable[[], NodeCard], heartbeat_interval: float,
                 catch_up: Callable[[str], None]) -> None:
        self.writer = writer
        self.hub = hub
        self.card = card
        self.heartbeat_interval = heartbeat_interval
        self.catch_up = catch_up  # has the open sessions replayed
        self._catch_up_due = False
        self.card_lost_at = -math.inf  # when a heartbeat last found the card gone (monotonic)
        self._dirty: set[str] = set()
        self._dirty_topics: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._renew_cursor: list[str] = []
        self._renew_topics: list[str] = []
        self._writing = asyncio.Lock()
        self.withdrawn = False

    async def arrived(self, user_id: str, timeout: float = 5.0) -> None:
        """Return once this node is in the user's route, or raise ``Unavailable`` if Redis is not answering."""
        self._dirty.add(user_id)
        await self._flushed(timeout, "could not register the route in Redis")

    async def subscribed(self, topics: list[str], timeout: float = 5.0) -> None:
        """Return once Redis counts this node's new subscribers of ``topics`` (so dispatch sends them here)."""
        self._dirty_topics.update(topics)
        await self._flushed(timeout, "could not register the subscription in Redis")

    def unsubscribed(self, topics: list[str]) -> None:
        """Have the flusher write these topics' local counts (an unsubscribe, a close, or a TTL renewal)."""
        if topics:
            self._dirty_topics.update(topics)
            self._wake.set()

    async def _flushed(self, timeout: float, failure: str) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):  # not wait_for, which wraps the waiter in a future and a callback of its own
                await waiter
        except TimeoutError:
            raise Unavailable(failure) from None

    def left(self, user_id: str) -> None:
        self._dirty.add(user_id)
        self._wake.set()

    async def run_flusher(self) -> None:
        backoff = Backoff()
        await self._forget_earlier_life(backoff)
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            topics, self._dirty_topics = self._dirty_topics, set()
            waiters, self._waiters = self._waiters, []
            present = {u: self.hub.count(u) for u in dirty if self.hub.holds(u)}
            gone = [u for u in dirty if not self.hub.holds(u)]
            try:
                async with self._writing:
                    if not self.withdrawn:
                        await self.writer.apply(present, gone, {t: self.hub.subscribers(t) for t in topics})
            except Exception as exc:  # never die silently: log, back off, go on
                self._dirty |= dirty
                self._dirty_topics |= topics
                self._waiters[:0] = waiters
                self._wake.set()
                await backoff.failed(log, "route write", exc)
                continue
            backoff.succeeded()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _forget_earlier_life(self, backoff: Backoff) -> None:
        """Have the first flush write every known topic's local count (0 but for the first subscribers): a node
        restarted under the same id before its card expired drops the counts its earlier process left there."""
        while True:
            try:
                self._dirty_topics.update(await TopicReader(self.writer.redis).names())
                self._wake.set()
                return
            except Exception as exc:  # never die silently: log, back off, go on
                await backoff.failed(log, "reading topic names", exc)

    async def run_heartbeat(self) -> None:
        backoff = Backoff()
        while not self.withdrawn:
            # Route and topic TTLs are renewed by the flusher, which reads each count when it writes it (no stale
            # count can land after a newer one).
            self._renew_cursor, users = self._renewal_slice(self._renew_cursor, self.hub.users, len(self.hub))
            self._renew_topics, topics = self._renewal_slice(self._renew_topics, self.hub.topics, self.hub.topic_count())
            self._dirty.update(users)
            if users:
                self._wake.set()
            self.unsubscribed(topics)
            try:
                if self._catch_up_due:  # a beat after the card came back, every dispatch instance has seen it
                    self._catch_up_due = False
                    self.catch_up("node card was missing a beat ago")
                async with self._writing:
                    renewed = self.withdrawn or await self.writer.heartbeat(self.card())
                if not renewed and len(self.hub):
                    log.warning("node card was missing; writing every route again", extra={"count": len(self.hub)})
                    self._dirty.update(self.hub.users())
                    self._dirty_topics.update(self.hub.topics())
                    self._wake.set()
                    self._catch_up_due = True
                    self.card_lost_at = time.monotonic()
                backoff.succeeded()
            except Exception as exc:  # never die silently: log, back off, go on
                await backoff.failed(log, "heartbeat", exc)
                continue
            await asyncio.sleep(self.heartbeat_interval)

    def _renewal_slice(self, cursor: list[str], everything: Callable[[], Iterable[str]],
                       total: int) -> tuple[list[str], list[str]]:
        """(the rest of the cursor, this beat's slice of it), starting over from ``everything`` once it is used up,
        so each entry is renewed about three times per route TTL."""
        beats_per_cycle = max(1, int(self.writer.route_ttl / 3 / self.heartbeat_interval))
        cursor = cursor or list(everything())
        size = math.ceil(total / beats_per_cycle)
        return cursor[size:], cursor[:size]

    async def withdraw(self) -> None:
        """Drop every route, topic count and the node card, so dispatch stops routing here at once, and write none
        of them again."""
        async with self._writing:
            self.withdrawn = True
            users = list(self.hub.users())
            for start in range(0, max(len(users), 1), 5000):
                await self.writer.withdraw(itertools.islice(users, start, start + 5000), self.hub.topics() if not start else ())
