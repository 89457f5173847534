"""Bundles over real processes: a socket that asks (``?bundle=1``) gets a busy topic's frames several to a websocket
frame, newline-separated and in offset order, at most one such frame per ``BUNDLE_MS``; one that does not ask gets a
frame per message as before."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.client import next_frame, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled


async def bundled_socket(stack: RunningStack, user: str, topic: str) -> ClientConnection:
    """A socket of ``user`` that asked for bundles, welcomed with the node's interval and subscribed to ``topic``."""
    ws = await stack.client.open(await stack.client.token(user, topics=[topic]), bundles=True)
    welcome = await next_frame(ws)
    assert welcome["type"] == "welcome" and welcome["bundle_ms"] == int(stack.stack.env.get("BUNDLE_MS", "100")), welcome
    assert await subscribe(ws, [topic]) == [{"type": "subscribed", "topics": [topic]}]
    return ws


async def lines_until(ws: ClientConnection, count: int, timeout: float = 10) -> list[list[dict[str, Any]]]:
    """The websocket frames that bring the next ``count`` protocol frames, each as the list of its lines."""
    frames: list[list[dict[str, Any]]] = []
    async with asyncio.timeout(scaled(timeout)):
        while sum(map(len, frames)) < count:
            frames.append([orjson.loads(line) for line in (await ws.recv()).split("\n")])
    return frames


async def test_a_socket_that_asked_for_bundles_gets_a_posts_topic_messages_in_fewer_frames_in_offset_order(
        shared_stack: RunningStack) -> None:
    """Six topic messages of one post reach a bundling socket in fewer than six websocket frames, one of them carrying
    several, in the same offset order as the six frames a socket that did not ask gets; its welcome names the
    interval."""
    topic = "bundled"
    bundled = await bundled_socket(shared_stack, "bundle-reader", topic)
    plain = await shared_stack.client.connect("plain-reader", topics=[topic])
    assert await subscribe(plain, [topic]) == [{"type": "subscribed", "topics": [topic]}]
    status, _ = await shared_stack.client.post({"messages": [{"topic": topic, "payload": n} for n in range(6)]})
    assert status == 202
    plain_frames, bundled_frames = await lines_until(plain, 6), await lines_until(bundled, 6)
    assert [len(f) for f in plain_frames] == [1] * 6
    assert len(bundled_frames) < 6 and max(map(len, bundled_frames)) > 1, [len(f) for f in bundled_frames]
    sequence = [(f["payload"], f["offset"]) for lines in bundled_frames for f in lines]
    assert sequence == [(f["payload"], f["offset"]) for (f,) in plain_frames]
    assert [offset for _, offset in sequence] == list(range(sequence[0][1], sequence[0][1] + 6))
    for ws in (bundled, plain):
        await ws.close()


async def test_a_bundle_waits_out_its_interval_and_goes_before_the_unsubscribed_answer(start_stack) -> None:
    """With BUNDLE_MS=3000, a second topic message within the interval is not written at once; an unsubscribe then
    gets it (and the third) in one frame before its ``unsubscribed`` answer, not after."""
    stack = start_stack(nodes=1, BUNDLE_MS="3000")
    topic = "slow"
    ws = await bundled_socket(stack, "waiting-reader", topic)
    await stack.client.post({"topic": topic, "payload": 0})
    assert [f["payload"] for (f,) in await lines_until(ws, 1)] == [0]
    await stack.client.post({"messages": [{"topic": topic, "payload": n} for n in (1, 2)]})
    try:
        early = await asyncio.wait_for(ws.recv(), 1)
        raise AssertionError(f"written before the interval ran out: {early!r}")
    except TimeoutError:
        pass
    await ws.send(orjson.dumps({"type": "unsubscribe", "topics": [topic]}).decode())
    frames = await lines_until(ws, 3)
    assert [[f.get("payload", f["type"]) for f in lines] for lines in frames] == [[1, 2], ["unsubscribed"]]
    await ws.close()


async def test_a_drain_writes_the_waiting_bundle_before_it_closes_the_socket(start_stack) -> None:
    """With BUNDLE_MS=3000 and DRAIN_SECONDS=0.5, a socket that stays on a draining node gets the bundle that waited
    for it, and then the drain's close (1001)."""
    stack = start_stack(nodes=2, BUNDLE_MS="3000", DRAIN_SECONDS="0.5")
    topic = "drained"
    ws = await bundled_socket(stack, "staying-reader", topic)
    await stack.client.post({"topic": topic, "payload": 0})
    assert [f["payload"] for (f,) in await lines_until(ws, 1)] == [0]
    await stack.client.post({"messages": [{"topic": topic, "payload": n} for n in (1, 2)]})
    await asyncio.sleep(0.5)  # the scenario: the two wait in the bundle (3 s) when the drain begins
    status, _ = await stack.client.drain(0)
    assert status == 202
    got: list[object] = []
    try:
        async with asyncio.timeout(scaled(10)):
            async for data in ws:
                got += [f.get("payload", f["type"]) for f in map(orjson.loads, data.split("\n"))]
    except ConnectionClosed:
        pass
    assert got == ["reconnect", 1, 2] and ws.close_code == 1001, (got, ws.close_code)
