"""Topic positions and recovery over real processes: every topic message carries its offset and epoch, a
subscriber resumes from its position on any node with nothing lost, doubled or reordered, and is told honestly
when its position can no longer be recovered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection

from shared.cluster.topic_log import TopicLog, position_key
from shared.infra.clients import redis_client
from shared.infra.clock import now_ms
from shared.model.message import BROADCAST, Message, message_id
from shared.model.topics import Namespaces, TopicPolicy
from shared.wire.protocol import MessageFrame, new_post_id
from tests.client import API_KEY, ClusterClient, frames_within, next_frame
from tests.conftest import RunningStack
from tests.integration.test_acks_across_redis_loss import stopped
from tests.integration.test_delivery_state import connect_until_welcomed
from tests.integration.test_redis_cluster import until_role
from tests.waits import scaled, until
from tools.cluster import CLUSTER_SLOTS, Cluster, Proc, free_port

STACK_ENV = {"PUBLIC_TOPICS": "news, feed:*, short:*", "TOPIC_HISTORY_SIZE": "1000",
             "TOPIC_NAMESPACES": '{"short": {"history_size": 5}}'}


async def subscribe(ws: ClientConnection, topics: list[str], recover: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send a subscribe (recovering the positions in ``recover``) and return its ``subscribed`` answer, skipping any
    topic message that precedes it."""
    await ws.send(orjson.dumps({"type": "subscribe", "topics": topics, **({"recover": recover} if recover else {})}).decode())
    while (frame := await next_frame(ws))["type"] != "subscribed":
        assert frame["type"] == "message", frame
    return frame


class Publisher:
    """Posts one topic message every ``1/rate`` seconds until stopped, recording the ids collect accepted in order."""

    def __init__(self, client: ClusterClient, topic: str, rate: float) -> None:
        self.client, self.topic, self.rate = client, topic, rate
        self.ids: list[str] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            status, body = await self.client.post({"topic": self.topic, "payload": len(self.ids)})
            assert status == 202, body
            self.ids.append(body["id"])
            await asyncio.sleep(max(0.0, start + len(self.ids) / self.rate - loop.time()))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Publisher]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def published(self, count: int) -> None:
        """Wait until ``count`` messages have been accepted in all."""
        await until(lambda: len(self.ids), lambda n: n >= count, what=f"{count} topic messages accepted")


async def messages_until(ws: ClientConnection, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict[str, Any]]:
    """The message frames ``ws`` receives until ``done`` says they are enough."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(timeout)):
        while not done(frames):
            frame = await next_frame(ws)
            assert frame["type"] == "message", frame
            frames.append(frame)
    return frames


async def test_a_subscriber_resumes_on_another_node_with_every_missed_message_then_live_ones(any_shared_stack: RunningStack) -> None:
    """A subscriber on node A leaves, 50 messages are published, and it resubscribes on node B with its position
    while publishing goes on at 200 msgs/s: it is told recovered, then gets every message after its position in
    offset order, the missed ones and the live ones, with no gap and no duplicate. (Offset order is the order the
    topic's messages were dispatched, which with several stream shards may differ from their acceptance order.)"""
    c = any_shared_stack.client
    topic = f"feed:resume-{any_shared_stack.stack.push_ports[0]}"
    first = await c.connect("resumer", node=0)
    answer = await subscribe(first, [topic])
    epoch = answer["positions"][topic]["epoch"]
    async with Publisher(c, topic, 200).running() as publisher:
        seen = await messages_until(first, lambda frames: len(frames) >= 20)
        await first.close()
        last = seen[-1]
        assert last["epoch"] == epoch and [f["offset"] for f in seen] == list(range(seen[0]["offset"], last["offset"] + 1))
        # its frame can come before its 202: collect hands a post over while storing it (services/collect/acceptance.py)
        await until(lambda: last["id"] in publisher.ids, what="the last message seen to be answered 202")
        await publisher.published(publisher.ids.index(last["id"]) + 1 + 50)
        second = await c.connect("resumer", node=1)
        accepted = list(publisher.ids)
        answer = await subscribe(second, [topic], {topic: {"offset": last["offset"], "epoch": epoch}})
        assert answer["recovered"] == {topic: True} and answer["positions"][topic]["epoch"] == epoch
        after = await messages_until(second, lambda frames: len(frames) >= 150)
    offsets = [f["offset"] for f in after]
    assert offsets == list(range(last["offset"] + 1, last["offset"] + 1 + len(after))), "in order, no gap, no duplicate"
    received = [f["id"] for f in seen + after]
    assert len(set(received)) == len(received) and set(accepted) <= set(received), "every message accepted before it came back"
    assert all(f["epoch"] == epoch and f["topic"] == topic for f in after)
    await second.close()


async def test_every_topic_message_carries_an_offset_one_above_the_last_and_the_subscribed_position(shared_stack: RunningStack) -> None:
    """The subscribed answer gives the topic's position; the next messages carry offsets one above it, one each, with
    its epoch, and the history API returns them as subscribers received them."""
    c = shared_stack.client
    ws = await c.connect("positions")
    answer = await subscribe(ws, ["feed:positions"])
    position = answer["positions"]["feed:positions"]
    ids = []
    for n in range(3):
        status, body = await c.post({"topic": "feed:positions", "payload": n})
        assert status == 202, body
        ids.append(body["id"])
    frames = await messages_until(ws, lambda frames: len(frames) == 3)
    assert [(f["id"], f["offset"], f["epoch"]) for f in frames] == [
        (ids[n], position["offset"] + 1 + n, position["epoch"]) for n in range(3)]
    async with c.session.get(f"{c.stack.collect_url}/v1/topics/feed:positions/history?since={position['offset'] + 1}",
                             headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status == 200
        history = await r.json()
    assert history == {"topic": "feed:positions", "epoch": position["epoch"], "offset": position["offset"] + 3,
                       "complete": True, "messages": frames[1:]}
    await ws.close()


async def test_a_stale_epoch_or_a_position_past_the_history_is_not_recovered(any_shared_stack: RunningStack) -> None:
    """Recovering with another epoch, or from a position the history (5 messages in namespace short) no longer
    reaches, answers recovered false and replays nothing; only live messages follow."""
    c = any_shared_stack.client
    topic = f"short:stale-{any_shared_stack.stack.push_ports[0]}"
    for n in range(8):
        assert (await c.post({"topic": topic, "payload": n}))[0] == 202
    ws = await c.connect("stale")
    position = (await subscribe(ws, [topic]))["positions"][topic]
    await until(lambda: subscribe(ws, [topic]), lambda a: a["positions"][topic]["offset"] == 8, what="all 8 to be placed")
    other = await c.connect("stale-2", node=1)
    wrong_epoch = await subscribe(other, [topic], {topic: {"offset": 7, "epoch": "0" + position["epoch"]}})
    too_old = await subscribe(other, [topic], {topic: {"offset": 1, "epoch": position["epoch"]}})
    within = await subscribe(other, [topic], {topic: {"offset": 5, "epoch": position["epoch"]}})
    assert wrong_epoch["recovered"] == {topic: False} and too_old["recovered"] == {topic: False}
    assert within["recovered"] == {topic: True}
    replayed = await frames_within(other, 0.5)
    assert [f["offset"] for f in replayed] == [6, 7, 8], "only the recovered subscribe replays"
    await ws.close()
    await other.close()


async def test_broadcasts_carry_positions_of_their_own_and_recover_under_star(shared_stack: RunningStack) -> None:
    """Broadcasts are positioned in their own stream, ``*``: a socket that missed two recovers them by subscribing
    to ``*`` with its position."""
    c = shared_stack.client
    ws = await c.connect("star")
    position = (await subscribe(ws, ["*"]))["positions"]["*"]
    await ws.close()
    ids = [(await c.post({"broadcast": True, "payload": n}))[1]["id"] for n in range(2)]
    again = await c.connect("star", node=1)
    answer = await subscribe(again, ["*"], {"*": position})
    assert answer["recovered"] == {"*": True}
    frames = await messages_until(again, lambda frames: {f["id"] for f in frames} >= set(ids))
    recovered = [f for f in frames if f["id"] in ids]
    assert [(f["offset"], f["broadcast"]) for f in recovered] == [(position["offset"] + 1, True), (position["offset"] + 2, True)]
    await again.close()


async def test_a_recovery_of_star_after_live_broadcasts_writes_those_placed_but_not_yet_on_the_node(
        start_stack: Callable[..., RunningStack]) -> None:
    """A socket that got a broadcast live, then recovers ``*`` from before it while the history already holds two more
    that have not reached its node (placed by dispatch, still on their way), is written those two from the history and
    not the live one again; their live copies, arriving later, are dropped as written (seen in a chaos run, seed
    20261227 on a cluster: a node SIGSTOPped with its sockets' subscribes and dispatch's batches queued)."""
    stack = start_stack(**STACK_ENV)
    c = stack.client
    ws = await c.connect("star-live")
    before = (await subscribe(ws, ["*"]))["positions"]["*"]
    status, live = await c.post({"broadcast": True, "payload": "live"})
    assert status == 202, live
    assert (await next_frame(ws))["id"] == live["id"]
    post = new_post_id(now_ms())
    ids = [message_id(post, n) for n in range(2)]
    placed = [Message(i, (), MessageFrame(i, n, now_ms(), BROADCAST).encode(), now_ms(), now_ms() + 60_000, topic=BROADCAST)
              for n, i in enumerate(ids)]
    async with redis_client(stack.stack.redis_url) as redis:  # what dispatch does before it sends them to the nodes
        await TopicLog(redis, Namespaces(TopicPolicy(1000, 3600))).append(placed, now_ms())
    answer = await subscribe(ws, ["*"], {"*": before})
    assert answer["recovered"] == {"*": True} and answer["positions"]["*"]["offset"] == before["offset"] + 3
    frames = await messages_until(ws, lambda frames: len(frames) >= 2)
    assert [(f["id"], f["offset"]) for f in frames] == [(ids[0], before["offset"] + 2), (ids[1], before["offset"] + 3)]
    assert await frames_within(ws, 1.0) == [], "the live broadcast written again"
    await ws.close()


async def restart_empty(stack: RunningStack, cluster: Cluster, private: Proc | None, key: str) -> Proc | None:
    """SIGKILL and restart, empty, the Redis holding ``key``: the test's ``private`` Redis, or the cluster master
    owning its slot (slots split evenly over the 3 masters, as ``start_redis_cluster`` assigns them)."""
    if private is not None:
        private.kill()
        return cluster.respawn(private)
    master = stack.redis[min(key_slot(key.encode()) // (CLUSTER_SLOTS // 3), 2)]
    master.kill()
    stack.redis[stack.redis.index(master)] = cluster.respawn(master)
    await until_role(stack.stack.redis_url, int(master.argv[master.argv.index("--port") + 1]), "master")
    return None


async def test_redis_restarted_empty_gives_topics_a_new_epoch(start_stack: Callable[..., RunningStack], cluster: Cluster,
                                                              topology: str) -> None:
    """After the Redis holding a topic's history restarts empty (the single Redis, or the cluster master of its
    slot), the topic's position has a new epoch and offsets start again, so recovering from the old position answers
    recovered false."""
    private = cluster.start_redis(port := free_port()) if topology == "single" else None
    stack = start_stack(redis_url=cluster.redis_url(port) if private else None, PUBLIC_TOPICS="news")
    ws = await stack.client.connect("epoch")
    before = (await subscribe(ws, ["news"]))["positions"]["news"]
    assert (await stack.client.post({"topic": "news", "payload": "before"}))[0] == 202
    placed = await next_frame(ws)
    assert (placed["offset"], placed["epoch"]) == (before["offset"] + 1, before["epoch"])
    await ws.close()
    private = await restart_empty(stack, cluster, private, position_key("news"))
    again = await connect_until_welcomed(stack, "epoch", 0)
    answer = await until(lambda: subscribe(again, ["news"], {"news": {"offset": placed["offset"], "epoch": placed["epoch"]}}),
                         lambda a: a["positions"]["news"]["epoch"] != before["epoch"], what="the topic's new epoch")
    assert answer["recovered"] == {"news": False} and answer["positions"]["news"]["offset"] == 0
    await again.close()
    if private is not None:
        private.stop()


async def test_a_node_that_missed_topic_messages_while_stalled_fills_the_hole_before_the_next(
        start_stack: Callable[..., RunningStack]) -> None:
    """A node SIGSTOPped past its card's TTL misses the topic messages dispatch sent meanwhile to the live node only; once
    it resumes, the next message it receives makes it read the hole from the history and write it first: its
    connected subscriber gets every message in offset order, and the node counts the hole as filled."""
    stack = start_stack(NODE_TTL_SECONDS="3", LINK_TIMEOUT_SECONDS="2", CLAIM_IDLE_MS="1000", **STACK_ENV)
    c = stack.client
    ws = await c.connect("stalled", node=1)
    position = (await subscribe(ws, ["news"]))["positions"]["news"]
    async with stopped(stack.push(1)):
        for n in range(5):
            assert (await c.post({"topic": "news", "payload": n}))[0] == 202
            await asyncio.sleep(scaled(1))  # past the stalled node's card TTL, in all
    node_url = stack.stack.push_url(stack.stack.push_ports[1])
    await until(lambda: c.metric(node_url, "push_connections", absent=0), lambda n: n >= 1, what="the node to serve again")
    status, last = await c.post({"topic": "news", "payload": "after"})
    assert status == 202
    frames = await messages_until(ws, lambda frames: any(f["id"] == last["id"] for f in frames))
    assert [f["offset"] for f in frames] == list(range(position["offset"] + 1, position["offset"] + 7)), "in order, no hole"
    filled = await c.metric(node_url, "push_topic_gaps_total", absent=0, outcome="filled")
    assert filled >= 1, "the node filled a hole (else dispatch's retries covered every message, and this test proved nothing)"
    await ws.close()
