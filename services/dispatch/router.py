"""The dispatch loop: read the stream, find each recipient's live nodes, forward one frame per node, acknowledge.

An entry (one post: its messages and their recipients) is acknowledged once every node holding
one of its recipients accepted it. Recipients with no live route are left to their inbox in Redis,
which their node replays when they connect; an expired message is not forwarded (the expiry loop
closes its inboxes). If a node fails, the entry stays pending in the consumer group and is claimed again after
``claim_idle_ms``, by this or another instance. The push node records the lifecycle stages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from redis.exceptions import RedisError

from services.dispatch.config import DispatchConfig
from services.dispatch.links import LinkDown, LinkPool
from services.dispatch.metrics import BATCH_SECONDS, FORWARDED, LIVE_NODES, RETRIED, UNROUTED
from shared import routing
from shared.breaker import CircuitBreaker
from shared.metrics import MESSAGES_IN, MESSAGES_OUT
from shared.protocol import Delivery
from shared.retry import Backoff
from shared.routing import NodeCard, RouteReader
from shared.stream import DeliveryStream, StreamEntry

log = logging.getLogger(__name__)
ITEM_OVERHEAD = 48  # brackets, quotes, the id and the ts around each frame in a deliver batch


def encoded_size(item: Delivery) -> int:
    """Bytes the item takes in a deliver batch: frames are text, counted as UTF-8, not as characters."""
    frame = item.frame if item.frame.isascii() else item.frame.encode()
    return len(frame) + sum(len(u) + 3 for u in item.users) + len(item.message_id) + ITEM_OVERHEAD


def chunk_by_bytes(items: list[Delivery], max_bytes: int) -> list[list[Delivery]]:
    """Split so each batch stays under the node's frame limit (a single oversized item goes alone)."""
    chunks: list[list[Delivery]] = [[]]
    size = 0
    for item in items:
        cost = encoded_size(item)
        if chunks[-1] and size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += cost
    return [c for c in chunks if c]


def per_node(entries: list[StreamEntry], routes: dict[str, list[str]], now_ms: int) -> dict[str, dict[str, list[Delivery]]]:
    """For each node, the unexpired messages it must take, by stream entry, each naming only that node's recipients."""
    work: defaultdict[str, defaultdict[str, list[Delivery]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        for m in entry.messages:
            if m.expires_ms <= now_ms:
                continue
            users_on: defaultdict[str, list[str]] = defaultdict(list)
            for user in m.users:
                for node in routes.get(user, ()):
                    users_on[node].append(user)
            for node, users in users_on.items():
                work[node][entry.entry_id].append(Delivery(m.id, m.frame, m.ts, tuple(users)))
    return work


class Router:
    def __init__(self, config: DispatchConfig, stream: DeliveryStream, routes: RouteReader, links: LinkPool) -> None:
        self.config = config
        self.stream = stream
        self.routes = routes
        self.links = links
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
        start = time.perf_counter()
        messages = sum(len(e.messages) for e in entries)
        MESSAGES_IN.inc(messages)
        now = routing.now_ms()
        nodes = await self.live_nodes()
        routes = await self.routes.lookup(list({u for e in entries for m in e.messages for u in m.users}), nodes)
        work = per_node(entries, routes, now)
        results = await asyncio.gather(*(self.send(nodes[n], [d for ds in by_entry.values() for d in ds], now)
                                         for n, by_entry in work.items()))
        failed = {entry_id for ok, by_entry in zip(results, work.values()) if not ok for entry_id in by_entry}
        await self.stream.ack([e.entry_id for e in entries if e.entry_id not in failed])
        UNROUTED.inc(sum(1 for e in entries for m in e.messages for u in m.users if u not in routes))
        RETRIED.inc(len(failed))
        MESSAGES_OUT.inc(messages)
        BATCH_SECONDS.observe(time.perf_counter() - start)

    async def send(self, card: NodeCard, items: list[Delivery], at: int) -> bool:
        link = self.links.get(card)
        try:
            for chunk in chunk_by_bytes(items, self.config.batch_bytes):
                result = await link.send(chunk, at)
                FORWARDED.inc(result.delivered)
        except LinkDown as exc:
            log.warning("node did not take the batch; will retry", extra={"node": card.id, "error": str(exc), "count": len(items)})
            return False
        return True
