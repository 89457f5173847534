"""Priority tiers through the real processes: a backlog of low does not hold up high, and collect sheds new low
(then normal) posts with 429 under a backlog, never high, while every accepted message is still delivered."""

from __future__ import annotations

import asyncio
import socket
import zlib
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from pushcluster.client import AsyncPushClient, PushError, RetryPolicy
from shared.delivery.stream import DeliveryStream
from shared.model.message import post_of
from tests.client import API_KEY, Receiver, next_frame
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled, until
from tools.cluster import Cluster

LOW_BACKLOG = 1000
BATCH_SIZE = 50


async def post(stack: RunningStack, user: str, priority: str, payload: Any = 0) -> tuple[int, dict[str, Any], str | None]:
    """One message to ``user`` at ``priority``: the status, the body and the Retry-After header."""
    async with stack.client.session.post(f"{stack.stack.collect_url}/v1/messages",
                                         data=orjson.dumps({"user_id": user, "payload": payload, "priority": priority}),
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After")


async def post_many(stack: RunningStack, user: str, priority: str, count: int, payload: str = "") -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 50):
        answers = await asyncio.gather(*(post(stack, user, priority, [n, payload]) for n in range(start, min(count, start + 50))))
        assert all(status == 202 for status, _, _ in answers), answers[0]
        ids += [body["id"] for _, body, _ in answers]
    return ids


async def tiers(stack: RunningStack) -> dict[str, dict[str, Any]]:
    async with stack.client.session.get(f"{stack.stack.collect_url}/healthz") as r:
        return (await r.json())["tiers"]


async def until_tiers(stack: RunningStack, check: Any, timeout: float = 10) -> dict[str, dict[str, Any]]:
    """Wait until collect's ``/healthz`` tiers satisfy ``check``; return them."""
    return await until(lambda: tiers(stack), check, what="collect's tiers to reach the expected backlog", timeout=timeout)


def restart_dispatch(stack: RunningStack, cluster: Cluster) -> None:
    stack.procs["dispatch"] = cluster.start_service("dispatch", stack.stack)


async def test_a_backlog_of_low_does_not_delay_high(start_stack, cluster: Cluster, topology: str) -> None:
    """With dispatch stopped, 1,000 low posts then 5 high ones to one socket: once dispatch is back, each high message
    arrives in its stream shard's first batch, ahead of all but fewer than a batch of its shard's low ones (the shards'
    read loops run side by side, so another shard's batches may come first), and every low one still arrives."""
    stack: RunningStack = start_stack(nodes=1, BATCH_SIZE=str(BATCH_SIZE), SHED_LOW_ENTRIES="100000",
                                      SHED_LOW_AGE_MS="600000")  # posting the backlog may take seconds on a busy machine
    reader = Receiver("mixed", await stack.client.connect("mixed"))
    stack.procs["dispatch"].stop()
    low = await post_many(stack, "mixed", "low", LOW_BACKLOG)
    high = await post_many(stack, "mixed", "high", 5)
    report = await until_tiers(stack, lambda t: t["low"]["backlog"] == LOW_BACKLOG and t["high"]["backlog"] == 5)
    assert not report["low"]["shedding"]
    restart_dispatch(stack, cluster)
    await reader.received(low + high, timeout=60)
    positions = [reader.ids.index(i) for i in high]
    lost, twice = report_scenario(
        f"1,000 low queued ahead of 5 high ({topology} Redis): high arrived at positions {min(positions)}-{max(positions)}",
        low + high, reader.ids)
    shards = int(stack.stack.env.get("STREAM_SHARDS", "1"))  # each shard's read loop takes its high entries first

    def shard(message_id: str) -> int:  # as collect places a post (``ShardedStream``)
        return zlib.crc32(post_of(message_id).encode()) % shards

    earlier = [sum(shard(i) == shard(h) for i in reader.ids[:reader.ids.index(h)] if i not in high) for h in high]
    assert max(earlier) < BATCH_SIZE, f"low messages of its shard before each high one: {earlier}; positions {positions}"
    assert lost == twice == 0, "no fault here: dispatch was stopped cleanly, before it read any entry"
    await reader.close()


async def test_shedding_refuses_low_then_normal_never_high_and_keeps_what_it_accepted(start_stack, cluster: Cluster) -> None:
    """With dispatch stopped and small thresholds, low posts get 429 + Retry-After first, then normal ones, while high is
    accepted (also through the client library); /healthz and /metrics show the backlog and the shedding; once dispatch
    is back every accepted message arrives and low is accepted again."""
    stack: RunningStack = start_stack(nodes=1, SHED_LOW_ENTRIES="20", SHED_NORMAL_ENTRIES="60", SHED_LOW_AGE_MS="600000",
                                      SHED_NORMAL_AGE_MS="600000", SHED_SAMPLE_MS="50")
    reader = Receiver("busy", await stack.client.connect("busy"))
    stack.procs["dispatch"].stop()
    accepted: list[str] = []
    refused: dict[str, tuple[dict[str, Any], str | None]] = {}
    for priority in ("low", "normal"):
        async with asyncio.timeout(scaled(20)):
            while priority not in refused:
                status, body, retry = await post(stack, "busy", priority)
                if status == 202:
                    accepted.append(body["id"])
                else:
                    assert status == 429, body
                    refused[priority] = (body, retry)
        status, body, _ = await post(stack, "busy", "high")
        assert status == 202, body
        accepted.append(body["id"])
    for body, retry in refused.values():
        assert body["error"]["code"] == "overloaded"
        assert retry is not None and int(retry) >= 1
    report = await until_tiers(stack, lambda t: sum(tier["backlog"] for tier in t.values()) == len(accepted))
    assert report["low"]["shedding"] and report["normal"]["shedding"] and not report["high"]["shedding"], report
    assert await stack.client.metric(stack.stack.collect_url, "collect_shedding", tier="low") == 1
    library = AsyncPushClient(stack.stack.collect_url, API_KEY, stack.client.session, retry=RetryPolicy(attempts=1))
    with pytest.raises(PushError) as shed:
        await library.send("busy", "later", priority="low")
    assert (shed.value.status, shed.value.code) == (429, "overloaded")
    accepted.append(await library.send("busy", "now", priority="high"))
    restart_dispatch(stack, cluster)
    await reader.received(accepted, timeout=30)
    lost, twice = report_scenario(f"shedding with dispatch stopped: {len(accepted)} accepted, low and normal refused (429)",
                                  accepted, reader.ids)
    assert lost == twice == 0, "no fault here: dispatch was stopped cleanly, before it read any entry"
    await until_tiers(stack, lambda t: not any(tier["shedding"] for tier in t.values()))
    status, body, _ = await post(stack, "busy", "low")
    assert status == 202, body
    await reader.close()


async def test_the_streams_serve_high_then_normal_then_low(start_stack) -> None:
    """A read keeping up takes what every tier holds in one round trip, high first; once a read was full (a backlog),
    high entries fill the batch first, then normal, then low where room is left; the backlog counts per tier the
    entries no consumer has read yet."""
    stack: RunningStack = start_stack(nodes=1)
    stack.procs["dispatch"].stop()
    redis = Redis.from_url(stack.stack.redis_url)
    stream = DeliveryStream(redis)

    async def backlog() -> list[int]:
        return [b.entries for b in (await stream.backlog()).values()]

    async def tiers_read(count: int) -> list[str]:
        entries = await stream.read("probe", count, 100)
        await stream.ack([e.entry_id for e in entries])
        return [e.entry_id.partition("/")[0] for e in entries]

    for priority in ("low", "normal", "high", "low", "high"):
        await post(stack, "nobody", priority)
    assert await backlog() == [2, 1, 2]
    assert await tiers_read(3) == ["high", "high", "normal", "low", "low"], "keeping up: every tier, up to 3 each"
    assert await backlog() == [0, 0, 0], "entries read are no longer backlog"
    for priority in ("low", "normal", "high", "low", "high"):
        await post(stack, "nobody", priority)
    assert await tiers_read(3) == ["high", "high", "normal"], "behind (the last read was full): high fills the batch first"
    assert await backlog() == [0, 0, 2]
    assert await tiers_read(10) == ["low", "low"]
    assert await tiers_read(10) == [], "caught up: the next read blocks over every tier"
    assert await backlog() == [0, 0, 0]
    await redis.aclose()


async def node_gauge(stack: RunningStack, name: str) -> float:
    return await stack.client.metric(stack.stack.push_url(stack.stack.push_ports[0]), name)


async def test_a_backed_up_socket_gets_high_frames_ahead_of_the_low_ones_waiting_for_it(start_stack) -> None:
    """A client that stops reading (small receive buffer, no recv): once its buffer at the node is backed up, new frames
    queue in the node, and high messages posted after the low ones reach it first when it reads again."""
    stack: RunningStack = start_stack(nodes=1, MAX_BUFFERED_BYTES=str(64 * 2**20), SHED_LOW_ENTRIES="100000")
    token = await stack.client.token("slow")
    port = stack.stack.push_ports[0]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token}", sock=sock, max_queue=1, open_timeout=scaled(10))
    assert (await next_frame(ws))["type"] == "welcome"
    low: list[str] = []
    async with asyncio.timeout(scaled(60)):
        while await node_gauge(stack, "push_frames_queued") < 20:
            low += await post_many(stack, "slow", "low", 10, payload="x" * 16_000)
    queued_low = await node_gauge(stack, "push_frames_queued")
    high = await post_many(stack, "slow", "high", 3)
    await until(lambda: node_gauge(stack, "push_frames_queued"), lambda n: n >= queued_low + 3,
                what="the 3 high frames to queue in the node", timeout=20)
    reader = Receiver("slow", ws)
    await reader.received(low + high, timeout=60)
    positions = [reader.ids.index(i) for i in high]
    lost, twice = report_scenario(f"backed-up socket: 3 high overtook {len(low) - min(positions)} of {len(low)} low queued ahead",
                                  low + high, reader.ids)
    assert max(positions) < len(low) - 15, (positions, len(low), queued_low)
    assert lost == twice == 0, "a socket is written each message once, however long it waits in the node"
    await reader.close()
