"""The dispatch loop: read the streams, find each recipient's live nodes, forward one frame per node, acknowledge.

The streams are read high tier first (``shared.delivery.stream``): behind a backlog a batch takes normal or low
entries only where high ones leave room, and stale entries are claimed in the same order.

An entry (one post: its messages and their recipients) is acknowledged once every node holding
one of its recipients accepted it, in the round trip of the next read (a cycle costs Redis two round trips, that
read and the routes, and two more with topic messages: their positions, then their topics' holders). Recipients
with no live route are left to their inbox in Redis, which their node replays when they connect; an expired
message is not forwarded (the expiry loop closes its inboxes). A topic message goes once to each live node holding subscribers of its topic
(``topic:{name}``), a broadcast once to every live node; the node writes it to its sockets. The
push node records the lifecycle stages.

Each node's batch is sent as its own task. A cycle waits for them at most ``send_wait_ms`` (and not
at all for a node still owing answers from earlier cycles) and acknowledges what every node took by
then; later answers are acknowledged in the background, so a hung node (alive in Redis, not reading)
delays nobody else. A node with ``link_window`` batches unanswered is skipped. A node that fails or is
skipped leaves the entry pending in the consumer group: it is claimed again after ``claim_idle_ms``,
by this or another instance, and this instance sends it only to the nodes that did not take it yet
(``ledger.py``). Once the hung node answers it gets its part; once its card expires its users are
no longer routed there and wait in their inboxes. A retried entry goes only to the recipients
whose delivery is still open in their inbox, so a user who acked the first try is not written it
again. An entry tried ``max_attempts`` times (a node that keeps closing the link on it) is
acknowledged and left to its users' inboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from services.dispatch.config import DispatchConfig
from services.dispatch.ledger import Ledger
from services.dispatch.link_pool import LinkPool, NodeLink
from services.dispatch.metrics import BATCH_SECONDS, FORWARDED, GIVEN_UP, LIVE_NODES, RETRIED, UNROUTED
from services.dispatch.placing import Placing
from shared.cluster.routes import NodeCard, RouteReader
from shared.cluster.topic_holders import TopicReader
from shared.delivery.inbox import Inbox
from shared.delivery.stream import DeliveryStream, StreamEntry
from shared.infra import tracing
from shared.infra.background import Background
from shared.infra.breaker import CircuitBreaker
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.metrics import MESSAGES_IN, MESSAGES_OUT
from shared.infra.retry import Backoff
from shared.model.message import BROADCAST
from shared.model.topics import Position
from shared.wire.errors import LinkDown
from shared.wire.protocol import Delivery

log = logging.getLogger(__name__)
def chunk_by_bytes(items: list[Delivery], max_bytes: int) -> list[list[Delivery]]:
    """Split so each batch stays under the node's frame limit (a single oversized item goes alone)."""
    chunks: list[list[Delivery]] = [[]]
    size = 0
    for item in items:
        cost = item.encoded_size()
        if chunks[-1] and size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += cost
    return [c for c in chunks if c]


def per_node(entries: list[StreamEntry], routes: dict[str, list[str]], now_ms: int,
             topics: Mapping[str, Iterable[str]] = {}, live: Iterable[str] = (),
             positions: Mapping[str, Position] = {}) -> dict[str, dict[str, list[Delivery]]]:
    """For each node, the unexpired messages it must take, by stream entry, each naming only that node's recipients;
    a topic message goes, with its position, to the nodes ``topics`` names for it, a broadcast to every ``live`` node."""
    work: defaultdict[str, defaultdict[str, list[Delivery]]] = defaultdict(lambda: defaultdict(list))
    everyone = list(live)
    for entry in entries:
        for m in entry.messages:
            if m.expires_ms <= now_ms:
                continue
            if m.topic is not None:
                delivery = Delivery.of(m, position=positions.get(m.id))
                for node in everyone if m.topic == BROADCAST else topics.get(m.topic, ()):
                    work[node][entry.entry_id].append(delivery)
                continue
            users_on: defaultdict[str, list[str]] = defaultdict(list)
            for user in m.users:
                for node in routes.get(user, ()):
                    users_on[node].append(user)
            for node, users in users_on.items():
                work[node][entry.entry_id].append(Delivery.of(m, users))
    return {node: dict(by_entry) for node, by_entry in work.items()}


class LiveNodes:
    """The live push nodes, read at most every ``refresh`` seconds and shared by this instance's read loops (one per
    stream shard), with the links kept to exactly those. Shared, so that once a link to a node opens (which has the
    node replay its open sessions' inboxes) no loop still takes that node for dead and leaves messages in inboxes."""

    def __init__(self, routes: RouteReader, links: LinkPool, refresh: float) -> None:
        self.routes = routes
        self.links = links
        self.refresh = refresh
        self._nodes: dict[str, NodeCard] = {}
        self._at = 0.0

    async def get(self) -> dict[str, NodeCard]:
        if time.monotonic() - self._at >= self.refresh:
            self._nodes = await self.routes.live_nodes()
            self._at = time.monotonic()
            LIVE_NODES.set(len(self._nodes))
            self.links.retain(self._nodes)
        return self._nodes


class Forwarder:
    def __init__(self, config: DispatchConfig, stream: DeliveryStream, routes: RouteReader, links: LinkPool,
                 live: LiveNodes, inbox: Inbox, placing: Placing) -> None:
        self.config = config
        self.stream = stream
        self.inbox = inbox
        self.routes = routes
        self.topics = TopicReader(routes.redis)
        self.placing = placing
        self.links = links
        self.live = live
        self.breaker = CircuitBreaker("redis", failures=REDIS_FAILURES)
        self.ledger = Ledger()
        self.last_cycle = time.time()
        self._group_ready = False
        self._next_claim = 0.0
        self._sends = Background()  # sends to nodes, answered or not
        self._settled: list[str] = []  # entries every node took in the last cycle, to acknowledge with the next read

    async def run(self) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    await self.breaker.call(self.cycle)
                    backoff.succeeded()
                    self.last_cycle = time.time()
                except Exception as exc:  # never die silently: log, back off, go on
                    await backoff.failed(log, "dispatch cycle", exc)
        finally:
            for task in self._sends.tasks:
                task.cancel()
            await asyncio.gather(*self._sends.tasks, return_exceptions=True)
            try:
                await self.stream.ack(self._settled)
            except REDIS_FAILURES as exc:  # still pending: claimed and sent again later (at least once)
                log.warning("acknowledgements lost at shutdown", extra={"count": len(self._settled), "error": repr(exc)})

    async def cycle(self) -> None:
        """One step: make sure the group exists, take stale or new entries, forward them."""
        if not self._group_ready:
            await self.stream.ensure_group()
            self._group_ready = True
        try:
            entries: list[StreamEntry] = []
            if time.monotonic() >= self._next_claim:
                entries = await self.stream.claim_stale(self.config.consumer, self.config.claim_idle_ms, self.config.batch_size)
                # A full page means more are waiting (a node came back): claim again next cycle.
                full = len(entries) == self.config.batch_size
                self._next_claim = time.monotonic() + (0 if full else self.config.claim_idle_ms / 2000)
                entries = await self.give_up(entries)
            if entries:
                await self.stream.ack(self._settled)
            else:
                entries = await self.stream.read(self.config.consumer, self.config.batch_size, self.config.block_ms,
                                                 ack=self._settled)
            self._settled = []
        except REDIS_FAILURES as exc:
            self._group_ready = "NOGROUP" not in str(exc)  # Redis lost its data: recreate the group
            raise
        if entries:
            await self.forward(entries)

    async def give_up(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """Acknowledge the entries tried ``max_attempts`` times (their deliveries wait in the inboxes); return the rest."""
        spent = [e.entry_id for e in entries if e.attempts > self.config.max_attempts]
        if spent:
            await self.stream.ack(spent)
            GIVEN_UP.inc(len(spent))
            log.error("entries tried too often: left to the users' inboxes", extra={
                "count": len(spent), "attempts": self.config.max_attempts, "entries": spent[:10]})
        return [e for e in entries if e.attempts <= self.config.max_attempts]

    async def unacked(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """Retried entries (handed out before) keep only the recipients whose delivery is still open: one who acked it
        meanwhile (a node took the first try but answered late) is not written it again."""
        retried = [e for e in entries if e.attempts > 1]
        if not retried:
            return entries
        open_ = await self.inbox.still_open([(m.id, u) for e in retried for m in e.messages for u in m.users])
        kept = {e.entry_id: replace(e, messages=[replace(m, users=tuple(u for u in m.users if (m.id, u) in open_))
                                                  if m.topic is None else m for m in e.messages]) for e in retried}
        return [kept.get(e.entry_id, e) for e in entries]

    async def forward(self, entries: list[StreamEntry]) -> None:
        """Route and send the entries, each in a span of its own when it was traced (``shared.infra.tracing``)."""
        if not tracing.enabled():
            await self._forward(entries, {})
            return
        with contextlib.ExitStack() as spans:
            traces: dict[str, str] = {}
            for e in entries:
                if e.trace and (tp := spans.enter_context(tracing.span("dispatch.entry", [e.trace], entry=e.entry_id))):
                    traces[e.entry_id] = tp
            await self._forward(entries, traces)

    async def _forward(self, entries: list[StreamEntry], traces: dict[str, str]) -> None:
        start = time.perf_counter()
        entries = await self.unacked(entries)
        messages = sum(len(e.messages) for e in entries)
        MESSAGES_IN.inc(messages)
        now = now_ms()
        nodes = await self.live.get()
        routes = await self.routes.lookup(list({u for e in entries for m in e.messages for u in m.users}), nodes)
        ids = [e.entry_id for e in entries]
        late = asyncio.Event()  # set once this cycle stops waiting: sends ending after it acknowledge for themselves
        placed = [m for e in entries for m in e.messages if m.topic is not None and m.expires_ms > now]
        async with self.placing.place(placed, now) as positions:
            topics = {m.topic for m in placed if m.topic is not None and m.topic != BROADCAST}
            holders = await self.topics.counts(list(topics), nodes)
            work = self.ledger.plan(ids, per_node(entries, routes, now, holders, nodes, positions))
            awaited = self.start_sends(work, nodes, now, late, traces)
        if awaited:
            await asyncio.wait(awaited, timeout=self.config.send_wait_ms / 1000)
        late.set()
        self._settled += self.ledger.settled(ids)  # acknowledged with the next read, in its round trip
        UNROUTED.inc(sum(1 for e in entries for m in e.messages for u in m.users if u not in routes))
        MESSAGES_OUT.inc(messages)
        BATCH_SECONDS.observe(time.perf_counter() - start)

    def start_sends(self, work: dict[str, dict[str, list[Delivery]]], nodes: dict[str, NodeCard], now: int,
                    late: asyncio.Event, traces: dict[str, str]) -> list[asyncio.Task[None]]:
        """Start sending each node its part (one task per node, each writing its batch as it first runs, in the order
        started); return the sends this cycle waits for. A node with ``link_window`` batches unanswered is skipped."""
        sends: list[asyncio.Task[None]] = []
        awaited: list[asyncio.Task[None]] = []
        stalled: list[str] = []
        waiting: set[str] = set()
        for node, by_entry in work.items():
            link = self.links.get(nodes[node])
            if link.in_flight >= self.config.link_window:
                stalled.append(node)
                waiting.update(by_entry)
                continue
            self.ledger.sending(node, by_entry)
            sends.append(self._sends.start(self.send(link, by_entry, now, late, tuple(traces[e] for e in by_entry if e in traces))))
            if not link.in_flight:  # a node still owing answers from earlier cycles is not waited for again
                awaited.append(sends[-1])
        if stalled:
            RETRIED.inc(len(waiting))
            log.warning("nodes not answering: their part waits for a retry", extra={"nodes": stalled, "count": len(waiting)})
        return awaited

    async def send(self, link: NodeLink, by_entry: dict[str, list[Delivery]], at: int, late: asyncio.Event,
                   trace: tuple[str, ...] = ()) -> None:
        """Send a node its part of the entries; record whether it took it; acknowledge what that settles if late."""
        ok = False
        items = [d for ds in by_entry.values() for d in ds]
        try:
            for chunk in chunk_by_bytes(items, self.config.batch_bytes):
                result = await link.send(chunk, at, trace)
                FORWARDED.inc(result.delivered)
            ok = True
        except LinkDown as exc:
            RETRIED.inc(len(by_entry))
            log.warning("node did not take the batch; will retry", extra={"node": link.card.id, "error": str(exc), "count": len(items)})
        finally:
            self.ledger.finished(link.card.id, by_entry, ok)
        if late.is_set():
            try:
                await self.stream.ack(self.ledger.settled(by_entry))
            except REDIS_FAILURES as exc:  # still pending: claimed and sent again later (at least once)
                log.warning("late acknowledgement failed", extra={"node": link.card.id, "error": repr(exc)})
