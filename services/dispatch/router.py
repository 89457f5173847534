"""The dispatch loop: read the stream, find each user's live nodes, forward in batches, acknowledge.

An entry is acknowledged once every node holding its user accepted it, or at once if the user has
no live route (the message waits in MongoDB, the user's offline inbox, replayed when they connect),
or if it expired. Lifecycle stages (dispatched, delivered, expired) are marked for a bulk write. If a node fails, the entry stays pending in the
consumer group and is claimed again after ``claim_idle_ms``, by this or another instance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict

from redis.exceptions import RedisError

from services.dispatch.config import DispatchConfig
from services.dispatch.links import LinkDown, LinkPool
from services.dispatch.metrics import BATCH_SECONDS, FORWARDED, LIVE_NODES, RETRIED, UNROUTED
from shared import routing
from shared.breaker import CircuitBreaker
from shared.lifecycle import LifecycleWriter
from shared.metrics import MESSAGES_IN, MESSAGES_OUT
from shared.protocol import Delivery
from shared.retry import Backoff
from shared.routing import NodeCard, RouteReader
from shared.store import delivery_id
from shared.stream import DeliveryStream, StreamEntry

log = logging.getLogger(__name__)


def chunk_by_bytes(items: list[Delivery], max_bytes: int) -> list[list[Delivery]]:
    """Split so each batch stays under the node's frame limit (a single oversized item goes alone)."""
    chunks: list[list[Delivery]] = [[]]
    size = 0
    for item in items:
        cost = len(item.frame) + len(item.user_id) + len(item.message_id) + 32
        if chunks[-1] and size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += cost
    return [c for c in chunks if c]


class Router:
    def __init__(self, config: DispatchConfig, stream: DeliveryStream, routes: RouteReader, links: LinkPool,
                 lifecycle: LifecycleWriter) -> None:
        self.config = config
        self.stream = stream
        self.routes = routes
        self.links = links
        self.lifecycle = lifecycle
        self.breaker = CircuitBreaker("redis", failures=(RedisError,))
        self._nodes: dict[str, NodeCard] = {}
        self._nodes_at = 0.0
        self.last_cycle = time.time()
        self._group_ready = False
        self._next_claim = 0.0

    async def live_nodes(self) -> dict[str, NodeCard]:
        if time.monotonic() - self._nodes_at >= self.config.nodes_refresh:
            self._nodes = await self.routes.live_nodes()
            self._nodes_at = time.monotonic()
            LIVE_NODES.set(len(self._nodes))
            await self.links.retain(self._nodes)
        return self._nodes

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.breaker.call(self.cycle)
                backoff.succeeded()
                self.last_cycle = time.time()
            except Exception as exc:  # never die silently: log, back off, go on
                await backoff.failed(log, "dispatch cycle", exc)

    async def cycle(self) -> None:
        """One step: make sure the group exists, take stale or new entries, forward them."""
        if not self._group_ready:
            await self.stream.ensure_group()
            self._group_ready = True
        try:
            entries: list[StreamEntry] = []
            if time.monotonic() >= self._next_claim:
                entries = await self.stream.claim_stale(self.config.consumer, self.config.claim_idle_ms, self.config.batch_size)
                self._next_claim = time.monotonic() + self.config.claim_idle_ms / 2000
            if not entries:
                entries = await self.stream.read(self.config.consumer, self.config.batch_size, self.config.block_ms)
        except RedisError as exc:
            self._group_ready = "NOGROUP" not in str(exc)  # Redis lost its data: recreate the group
            raise
        if entries:
            await self.forward(entries)

    async def forward(self, entries: list[StreamEntry]) -> None:
        start, at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
        MESSAGES_IN.inc(len(entries))
        now = routing.now_ms()
        expired = [e for e in entries if e.expires_ms <= now]
        live = [e for e in entries if e.expires_ms > now]
        nodes = await self.live_nodes()
        routes = await self.routes.lookup(list({e.delivery.user_id for e in live}), nodes)
        per_node: defaultdict[str, list[StreamEntry]] = defaultdict(list)
        for entry in live:
            for node_id in routes.get(entry.delivery.user_id, ()):
                per_node[node_id].append(entry)
        results = await asyncio.gather(*(self.send(nodes[n], batch) for n, batch in per_node.items()))
        failed = {e.entry_id for ok, batch in zip(results, per_node.values()) if not ok for e in batch}
        dispatched = [e for e in live if e.entry_id not in failed]
        UNROUTED.inc(sum(1 for e in live if e.delivery.user_id not in routes))
        self.lifecycle.mark("dispatched", [delivery_id(e.delivery.message_id, e.delivery.user_id) for e in dispatched], at)
        self.lifecycle.mark("expired", [delivery_id(e.delivery.message_id, e.delivery.user_id) for e in expired], at)
        await self.stream.ack([e.entry_id for e in dispatched + expired])
        RETRIED.inc(len(failed))
        MESSAGES_OUT.inc(len(dispatched))
        BATCH_SECONDS.observe(time.perf_counter() - start)

    async def send(self, card: NodeCard, entries: list[StreamEntry]) -> bool:
        link = self.links.get(card)
        try:
            for chunk in chunk_by_bytes([e.delivery for e in entries], self.config.batch_bytes):
                await link.send(chunk)
                FORWARDED.inc(len(chunk))
        except LinkDown as exc:
            log.warning("node did not take the batch; will retry", extra={"node": card.id, "error": str(exc), "count": len(entries)})
            return False
        return True
