"""Draining a push node: its clients move to another node over the window, and no message is lost.

At least once: a message written to a client on the drained node whose ack had not closed it in Redis when the client
left is replayed by the node it moves to, so a client that moved may get a message twice, once on each side of its
move; a client that did not move, never."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.client import Roamer, frames_within, next_frame
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled, until

CLIENTS = 1000
RATE = 200  # messages a second, to the drained node's users, before, during and after the drain
DRAIN_SECONDS = 5


async def post_steadily(stack: RunningStack, users: list[str], posted: list[str], stop: asyncio.Event) -> None:
    """Post ``RATE`` messages a second (a post of ``RATE / 10`` users every 100 ms, round-robin) until ``stop``."""
    loop = asyncio.get_running_loop()
    turn = itertools.cycle(users)
    tick = loop.time()
    while not stop.is_set():
        chunk = [next(turn) for _ in range(RATE // 10)]
        status, answer = await stack.client.post({"messages": [{"user_id": u, "payload": len(posted)} for u in chunk]})
        assert status == 202, answer
        posted.extend(f"{u}/{m}" for u, m in zip(chunk, answer["ids"]))
        tick += 0.1
        await asyncio.sleep(max(0.0, tick - loop.time()))


def duplicates_outside_a_move(roamers: list[Roamer], drained: str) -> dict[str, list[tuple[str, str]]]:
    """Per client, the second copies that do not fit the drain's at-least-once: a message arriving more than twice, or
    twice otherwise than first from the drained node and then, after the move, from another."""
    odd: dict[str, list[tuple[str, str]]] = {}
    for r in roamers:
        moved_at = next((at for at, node in r.welcomes if node != drained), None) if r.welcomes[0][1] == drained else None
        by_id: dict[str, list[tuple[float, str]]] = {}
        for at, node, mid in r.arrivals:
            by_id.setdefault(mid, []).append((at, node))
        for mid, copies in by_id.items():
            if len(copies) == 1:
                continue
            (first_at, first_node), *rest = copies
            fits = (len(rest) == 1 and moved_at is not None and first_node == drained and first_at < moved_at
                    and rest[0][1] != drained and rest[0][0] >= moved_at)
            if not fits:
                odd.setdefault(r.user_id, []).extend((mid, node) for _, node in copies)
    return odd


async def test_a_drained_node_moves_every_client_to_the_other_node_over_the_window_losing_nothing(start_stack) -> None:
    """1,000 clients on node A under 200 msgs/s: after POST /v1/drain each ends on B, reconnecting spread over
    DRAIN_SECONDS, and every message posted arrives."""
    stack: RunningStack = start_stack(DRAIN_SECONDS=str(DRAIN_SECONDS), MAX_ADDRESS_CONNECTIONS="0")
    a, b = (f"127.0.0.1:{p}" for p in stack.stack.push_ports)
    roamers = [Roamer(stack.client, f"drain{i}") for i in range(CLIENTS)]
    tasks = [asyncio.create_task(r.run(f"ws://{a}/ws")) for r in roamers]
    try:
        async with asyncio.timeout(scaled(40)):
            await asyncio.gather(*(r.welcomed.wait() for r in roamers))
        posted: list[str] = []
        stop = asyncio.Event()
        poster = asyncio.create_task(post_steadily(stack, [r.user_id for r in roamers], posted, stop))
        await asyncio.sleep(1)  # the scenario: steady load before the drain, and through its window
        started = asyncio.get_running_loop().time()
        status, body = await stack.client.drain(0)
        assert status == 202 and body["draining"] and body["connections"] == CLIENTS, body
        await until(lambda: sum(r.welcomes[-1][1] != b for r in roamers), lambda left: left == 0,
                    what="every client to move to B", timeout=DRAIN_SECONDS + 10, every=0.2)
        await asyncio.sleep(1)  # the scenario: steady load after the move too
        stop.set()
        await poster
        expected = Counter(p.partition("/")[0] for p in posted)
        await until(lambda: sum(len(set(r.received)) < expected[r.user_id] for r in roamers), lambda short: short == 0,
                    what="every client to receive all its messages", timeout=20)
        for task in tasks:
            assert not task.done(), task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    received = [f"{r.user_id}/{m}" for r in roamers for m in r.received]
    lost, twice = report_scenario(f"push node drained: {CLIENTS} clients at {RATE} msgs/s", posted, received)
    moved = [r.welcomes[-1][0] - started for r in roamers]
    histogram = Counter(int(t) for t in moved)
    share = CLIENTS / DRAIN_SECONDS
    print(f"\nreconnections per second after POST /v1/drain (DRAIN_SECONDS={DRAIN_SECONDS}): "
          + " ".join(f"{s}-{s + 1}s:{histogram[s]}" for s in range(max(histogram) + 1))
          + f"; closed by the node at the end: {sum(r.node_closed for r in roamers)}; posted {len(posted)}, "
          + f"lost {lost}, twice {twice}")
    assert lost == 0
    assert not (odd_copies := duplicates_outside_a_move(roamers, a)), f"{twice} duplicates, these not across a move: {odd_copies}"
    odd = [(r.user_id, [node for _, node in r.welcomes]) for r in roamers if [node for _, node in r.welcomes] != [a, b]]
    assert not odd, f"every client moved once, from A to B; {len(odd)} did not, e.g. {odd[:5]}"
    assert max(moved) < DRAIN_SECONDS + scaled(1), "the moves spread over the window, plus a (scaled) second to connect"
    assert max(histogram.values()) <= 2 * share, histogram


async def test_a_draining_node_refuses_upgrades_and_only_the_internal_key_starts_a_drain(start_stack) -> None:
    """POST /v1/drain is 401 without the internal credential; once draining, an upgrade gets 503, /healthz says so,
    an open client is told to reconnect to the other node and is closed with 1001 at the window's end."""
    stack: RunningStack = start_stack(DRAIN_SECONDS="1")
    c = stack.client
    ws = await c.connect("dora", node=0)
    assert (await c.drain(0, key=None))[0] == 401
    assert (await c.drain(0, key="not-the-internal-key"))[0] == 401
    assert await frames_within(ws, 0.3) == [], "a refused drain changes nothing"
    status, body = await c.drain(0)
    assert status == 202 and body == {"draining": True, "connections": 1, "drain_seconds": 1.0}
    assert await next_frame(ws) == {"type": "reconnect", "after_ms": 0, "url": f"ws://127.0.0.1:{stack.stack.push_ports[1]}/ws"}
    token = await c.token("dora")
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{stack.stack.push_ports[0]}/ws?token={token}", open_timeout=scaled(5))
    assert refused.value.response.status_code == 503
    async with c.session.get(f"{stack.stack.push_url(stack.stack.push_ports[0])}/healthz") as r:
        assert r.status == 503 and (await r.json())["draining"] is True
    await ws.wait_closed()
    assert ws.close_code == 1001
    assert (await c.drain(0))[0] == 202, "asking again is harmless"


async def test_a_drain_under_load_loses_no_delivery_to_either_nodes_users(start_stack) -> None:
    """Posts each to one user on the drained node and one on the other flow before, during and after POST /v1/drain:
    every (message, recipient) arrives, duplicates only across a client's move."""
    stack: RunningStack = start_stack(DRAIN_SECONDS="2", MAX_ADDRESS_CONNECTIONS="0")
    a, b = (f"127.0.0.1:{p}" for p in stack.stack.push_ports)
    movers, stayers = [Roamer(stack.client, f"dl-a{i}") for i in range(50)], [Roamer(stack.client, f"dl-b{i}") for i in range(50)]
    tasks = [asyncio.create_task(r.run(f"ws://{a}/ws")) for r in movers] + [asyncio.create_task(r.run(f"ws://{b}/ws")) for r in stayers]
    posted: list[str] = []
    stop = asyncio.Event()

    async def post_pairs() -> None:
        n = 0
        while not stop.is_set():
            pair = [movers[n % len(movers)].user_id, stayers[n % len(stayers)].user_id]
            status, answer = await stack.client.post({"user_ids": pair, "payload": n})
            assert status == 202, answer
            posted.extend(f"{u}/{answer['id']}" for u in pair)
            n += 1
            await asyncio.sleep(0.01)  # paces the load: ~100 posts a second, 2 deliveries each

    try:
        await until(lambda: sum(not r.welcomed.is_set() for r in movers + stayers), lambda left: left == 0,
                    what="every client to be welcomed", timeout=30, every=0.1)
        poster = asyncio.create_task(post_pairs())
        await asyncio.sleep(0.5)  # the scenario: load before the drain
        status, body = await stack.client.drain(0)
        assert status == 202 and body["connections"] == len(movers), body
        await until(lambda: sum(r.welcomes[-1][1] != b for r in movers), lambda left: left == 0,
                    what="every client of A to move to B", timeout=15, every=0.1)
        await asyncio.sleep(0.5)  # the scenario: load after the move
        stop.set()
        await poster

        def missing() -> set[str]:
            return set(posted) - {f"{r.user_id}/{m}" for r in movers + stayers for m in r.received}

        await until(missing, lambda left: not left, what="every posted delivery to arrive", timeout=20, every=0.2)
        await asyncio.sleep(scaled(1.0))  # a window: a late duplicate would arrive within it
        for task in tasks:
            assert not task.done(), task.exception()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    received = [f"{r.user_id}/{m}" for r in movers + stayers for m in r.received]
    lost, twice = report_scenario("push node drained under load, deliveries to both nodes' users", posted, received)
    assert lost == 0
    assert not [r.user_id for r in stayers if len(r.received) != len(set(r.received))], "a client that did not move got a duplicate"
    assert not (odd := duplicates_outside_a_move(movers, a)), f"{twice} duplicates, these not across a move: {odd}"
