"""Acks taken around a Redis loss (SIGKILLed, back empty, rebuilt from MongoDB): whenever the ack reaches Redis, or
even if it never does before the rebuild, the acked message is not sent again on any node and its status says acked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection

from services.dispatch.rebuild import close_held_acks
from shared.cluster.routes import NODES_KEY
from shared.delivery.inbox import Acked, Inbox, held_key
from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.webhook_feed import EVENTS_KEY, TYPES_KEY, WebhookFeed
from shared.infra.clients import redis_client
from shared.infra.clock import now_ms
from shared.infra.slots import all_user_tags
from shared.model.message import Message, Pair, message_id
from shared.model.webhook_events import Fact, decode_facts
from tests.client import receive_ids
from tests.conftest import RunningStack, Servers
from tests.integration.test_delivery_guarantees import FAST, wait_for_state
from tests.integration.test_delivery_state import connect_until_welcomed
from tests.waits import stopped, until
from tools.cluster import Cluster, Proc, free_port


@dataclass
class Delivered:
    """A stack on a Redis of its own, and one message its user ``acker`` holds unacked on node 0 (and other tabs)."""

    stack: RunningStack
    cluster: Cluster
    redis: Proc
    redis_port: int
    ws: ClientConnection
    message_id: str
    tabs: list[ClientConnection]  # the user's sockets, on nodes 0, 1, ... (``ws`` first)

    def restart_redis_empty(self) -> None:
        self.redis = self.cluster.start_redis(self.redis_port)

    async def ack(self) -> None:
        await self.ws.send(orjson.dumps({"type": "ack", "ids": [self.message_id]}).decode())

    async def acks_pending(self) -> float:
        """The acks node 0 holds for a flush it has not managed yet."""
        return await self.stack.client.metric(self.stack.stack.push_url(self.stack.stack.push_ports[0]), "push_acks_pending")

    async def rebuilt(self, cards: int = 2) -> None:
        """Wait until dispatch rebuilt the emptied Redis (every bucket's epoch marker back) and ``cards`` push nodes
        wrote their cards there again (a live message goes only to nodes with a card)."""
        redis = Redis.from_url(self.cluster.redis_url(self.redis_port))
        try:
            await until(lambda: Inbox(redis).epoch(), lambda epoch: epoch is not None, what="the rebuild to complete", timeout=30)
            await until(lambda: redis.scard(NODES_KEY), lambda n: n >= cards, what=f"{cards} node cards back", timeout=20)
        finally:
            await redis.aclose()

    async def not_sent_again(self, nodes: tuple[int, ...] = (0, 1)) -> None:
        """The user reconnects on each of ``nodes`` and is sent a new message: the acked one does not come before it
        (a replay sends the oldest first), and the status says acked."""
        for node in nodes:
            again = await connect_until_welcomed(self.stack, "acker", node)
            marker = await self.stack.client.post_until_accepted({"user_id": "acker", "payload": f"after, node {node}"})
            arrived: list[str] = []
            try:
                while marker["id"] not in arrived:
                    arrived.append(await next_message_id(again))
            except TimeoutError:
                raise AssertionError(f"node {node}: {arrived} arrived, not {marker['id']} (acked: {self.message_id})") from None
            assert self.message_id not in arrived, f"the acked message came back on node {node}"
            await again.close()
        await wait_for_state(self.stack, self.message_id, "acked")


async def next_message_id(ws: ClientConnection) -> str:
    return (await receive_ids(ws, 1))[0]


@asynccontextmanager
async def delivered(start_stack, cluster: Cluster, tabs: int = 1) -> AsyncIterator[Delivered]:
    """A message delivered to ``acker`` on node 0 (and, with ``tabs=2``, to a second socket on node 1) and not acked
    yet, on a stack whose Redis the test may kill."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    sockets = [await stack.client.connect("acker", node=node) for node in range(tabs)]
    message = await stack.client.post_until_accepted({"user_id": "acker", "payload": "to be acked"})
    for ws in sockets:
        assert await receive_ids(ws, 1) == [message["id"]]
    await wait_for_state(stack, message["id"], "delivered")
    yield Delivered(stack, cluster, redis, redis_port, sockets[0], message["id"], sockets)
    for ws in sockets:
        await ws.close()


async def test_an_ack_taken_while_redis_is_down_stays_acked_after_it_comes_back_empty(start_stack, cluster: Cluster) -> None:
    """The client acks while Redis is SIGKILLed; the node's retry reaches the emptied Redis before the rebuild: after
    the rebuild the message is sent on no node and its status says acked."""
    async with delivered(start_stack, cluster) as d, stopped(d.stack.procs["dispatch"]):
        d.redis.kill()
        await d.ack()
        await until(d.acks_pending, lambda n: n == 1, what="node 0 to hold the ack Redis refused")
        d.restart_redis_empty()
        await until(d.acks_pending, lambda n: n == 0, what="node 0's retry to reach the emptied Redis", timeout=20)
    await d.rebuilt()
    await d.not_sent_again()


async def test_an_ack_reaching_the_emptied_redis_before_the_rebuild_stays_acked(start_stack, cluster: Cluster) -> None:
    """Redis SIGKILLed and back empty, the client acks before dispatch rebuilds: after the rebuild the message is sent
    on no node and its status says acked."""
    async with delivered(start_stack, cluster) as d, stopped(d.stack.procs["dispatch"]):
        d.redis.kill()
        d.restart_redis_empty()
        await d.ack()
        await until(d.acks_pending, lambda n: n == 0, what="node 0 to flush the ack into the emptied Redis", timeout=20)
    await d.rebuilt()
    await d.not_sent_again()


async def test_an_ack_stuck_in_a_node_while_redis_is_down_is_on_record_before_redis_returns(start_stack,
                                                                                             cluster: Cluster) -> None:
    """The client acks a message its node wrote to it while Redis is SIGKILLed: its status says acked before Redis
    returns, so a rebuild the node's retry never reaches (the node hung) still leaves it acked on the other node."""
    async with delivered(start_stack, cluster) as d:
        d.redis.kill()
        await d.ack()
        await wait_for_state(d.stack, d.message_id, "acked")
        async with stopped(d.stack.push(0)):
            d.restart_redis_empty()
            await d.rebuilt(cards=1)
            await d.not_sent_again(nodes=(1,))
        await until(d.acks_pending, lambda n: n == 0, what="node 0's retry once it resumes", timeout=20)


async def test_a_message_acked_in_two_tabs_stays_acked_when_the_node_whose_ack_closed_it_dies(start_stack,
                                                                                              cluster: Cluster) -> None:
    """The user's tabs on nodes 0 and 1 both ack; node 1's ack closes the delivery and node 1 is SIGKILLed at once,
    before its lifecycle flush: node 0's ack, which found nothing to close, keeps it on record, so after Redis comes
    back empty the message is sent on no node."""
    async with delivered(start_stack, cluster, tabs=2) as d:
        redis = redis_client(d.cluster.redis_url(d.redis_port))
        try:
            await d.tabs[1].send(orjson.dumps({"type": "ack", "ids": [d.message_id]}).decode())
            pair = (d.message_id, "acker")
            await until(lambda: Inbox(redis).still_open([pair]), lambda still: not still, what="node 1's ack to close it",
                        every=0.005)
        finally:
            await redis.aclose()
        d.stack.push(1).kill()
        await d.ack()
        await until(d.acks_pending, lambda n: n == 0, what="node 0 to flush its ack")
        await wait_for_state(d.stack, d.message_id, "acked")
        d.redis.kill()
        d.restart_redis_empty()
        await d.rebuilt(cards=1)
        await d.not_sent_again(nodes=(0,))


@dataclass
class Written:
    """A lifecycle that keeps what was written to it."""

    marks: dict[Pair, int] = field(default_factory=dict)

    async def write(self, stage: str, marks: Mapping[Pair, int], publish: bool = False) -> None:
        assert stage == "acked" and publish, "held acks' facts are appended before the held acks are forgotten"
        self.marks |= marks


@pytest.mark.parametrize("where", ["single", "cluster"])
async def test_acks_while_the_state_is_incomplete_are_held_and_the_rebuild_closes_only_the_ackers_own(
        servers: Servers, where: str) -> None:
    """With every epoch marker missing, 40 users' acks (in buckets across the masters) are held, found or not; once their
    deliveries are reopened, the rebuild's step closes and records exactly the acking users' own, and forgets them."""
    redis_url, _ = servers.redis_cluster() if where == "cluster" else (servers.fresh_database()[0], [])
    redis = redis_client(redis_url)
    inbox = Inbox(redis)
    now = now_ms()
    users = [f"held{n}" for n in range(40)]
    messages = [Message(message_id("heldpost00", n), (u,), b"F", now, now + 60_000) for n, u in enumerate(users)]
    try:
        await inbox.open(messages[:20])  # the first 20 are open already (live traffic), the rest not yet reopened
        acks = [((m.id, u), now - n) for n, (m, u) in enumerate(zip(messages, users))]
        forged = ((messages[0].id, users[1]), now)  # users[1] acks users[0]'s message
        frames = [Acked(u, at, (m,)) for (m, u), at in [*acks, forged]]
        assert sorted(await inbox.acknowledge(frames)) == sorted(pair for pair, _ in acks[:20])
        assert sorted(await inbox.held_acks()) == sorted([*acks, forged])
        await inbox.open(messages)  # the rebuild's first pass reopens all 40
        lifecycle = Written()
        assert await close_held_acks(inbox, cast(LifecycleWriter, lifecycle)) == 40
        assert lifecycle.marks == dict(acks), "each at its ack's time, the forged one not at all"
        assert await inbox.still_open([pair for pair, _ in acks]) == set()
        assert not any([await redis.exists(held_key(tag)) for tag in all_user_tags()])
        await inbox.complete()
        await inbox.open(messages[:1])
        assert await inbox.acknowledge(frames[:1]) == [acks[0][0]]
        assert await inbox.held_acks() == [], "a complete state holds nothing"
    finally:
        await redis.aclose()


async def test_held_acks_are_appended_for_webhooks_before_they_are_forgotten(servers: Servers) -> None:
    """The rebuild's step that closes held acks appends their ``acked`` facts to the webhooks stream before it returns
    (not at a later lifecycle flush, which a dispatch SIGKILLed after the held acks were forgotten would never make);
    when that append fails (the webhooks stream's Redis unreachable) the held acks are kept for the next rebuild."""
    async with servers.fresh_state() as (redis, store), redis_client(f"redis://127.0.0.1:{free_port()}/0") as unreachable:
        inbox = Inbox(redis)
        now = now_ms()
        messages = [Message(message_id("heldfacts0", n), (f"fact{n}",), b"F", now, now + 60_000) for n in range(3)]
        acks = [((m.id, m.users[0]), now - n) for n, m in enumerate(messages)]
        await store.accept(messages)
        await redis.sadd(TYPES_KEY, "message.acked")  # an endpoint wants acks
        assert await inbox.acknowledge([Acked(u, at, (m,)) for (m, u), at in acks]) == [], "no epoch: held"
        await inbox.open(messages)  # the rebuild's first pass reopens them
        with pytest.raises(RedisError):
            await close_held_acks(inbox, LifecycleWriter(store, feed=WebhookFeed(unreachable)))
        assert sorted(await inbox.held_acks()) == sorted(acks), "kept: their facts were not appended"
        await inbox.open(messages)  # the next rebuild reopens them again
        assert await close_held_acks(inbox, LifecycleWriter(store, feed=WebhookFeed(redis))) == 3
        facts = [f for _, fields in await redis.xrange(EVENTS_KEY) for f in decode_facts(fields[b"f"])]
        assert sorted(facts, key=lambda f: f.message_id) == [Fact("acked", m, u, at) for (m, u), at in acks]
        assert await inbox.held_acks() == []
