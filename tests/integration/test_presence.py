"""Presence: who is online and who listens to a topic, right after connects and disconnects and after a node dies."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.client import API_KEY, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled, until

FAST = {"NODE_TTL_SECONDS": "3"}


async def get(stack: RunningStack, path: str, api_key: str = API_KEY) -> tuple[int, Any]:
    async with stack.client.session.get(f"{stack.stack.collect_url}{path}", headers={"Authorization": f"Bearer {api_key}"}) as r:
        return r.status, await r.json()


async def post(stack: RunningStack, path: str, body: Any) -> tuple[int, Any]:
    async with stack.client.session.post(f"{stack.stack.collect_url}{path}", json=body,
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        return r.status, await r.json()


async def answers(stack: RunningStack, path: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """GET ``path`` until its body has every field of ``wanted``; that body."""
    async def body() -> dict[str, Any]:
        status, answer = await get(stack, path)
        assert status == 200, answer
        return answer

    return await until(body, lambda b: all(b.get(k) == v for k, v in wanted.items()), what=f"GET {path} to say {wanted}",
                       every=0.1)


def node_id(stack: RunningStack, index: int) -> str:
    return f"127.0.0.1:{stack.stack.push_ports[index]}"


async def test_presence_counts_each_users_sockets_right_after_connect_and_disconnect(start_stack, topology: str) -> None:
    """Two sockets of one user on two nodes count 2 on both nodes at once; after one closes 1, after both 0."""
    stack: RunningStack = start_stack(**FAST)
    c = stack.client
    first, second = await c.connect("pia", node=0), await c.connect("pia", node=1)
    status, body = await get(stack, "/v1/presence/pia")  # no wait: the welcome comes once the route is written
    assert status == 200
    assert body == {"user_id": "pia", "online": True, "connections": 2, "nodes": sorted([node_id(stack, 0), node_id(stack, 1)])}
    status, batch = await post(stack, "/v1/presence", {"user_ids": ["pia", "nobody"]})
    assert (status, batch) == (200, {"online": {"pia": 2, "nobody": 0}})
    await first.close()
    await answers(stack, "/v1/presence/pia", {"connections": 1, "nodes": [node_id(stack, 1)]})
    await second.close()
    await answers(stack, "/v1/presence/pia", {"online": False, "connections": 0, "nodes": []})


async def test_a_topic_counts_its_subscribers_and_lists_their_users(start_stack) -> None:
    """Subscribers on both nodes count once each; ?users=1 lists their user ids; an unsubscribe counts at once."""
    stack: RunningStack = start_stack(**FAST)
    c = stack.client
    sockets = [await c.connect(u, node=i % 2, topics=["room:*"]) for i, u in enumerate(["ann", "bob", "cy"])]
    for ws in sockets:
        await subscribe(ws, ["room:7"])
    body = await answers(stack, "/v1/topics/room:7?users=1", {"subscribers": 3})
    assert body == {"topic": "room:7", "subscribers": 3, "nodes": 2, "users": ["ann", "bob", "cy"], "truncated": False}
    await subscribe(sockets[1], ["room:7"], kind="unsubscribe")
    await answers(stack, "/v1/topics/room:7?users=1", {"subscribers": 2, "users": ["ann", "cy"]})
    assert (await get(stack, "/v1/topics/empty-room"))[1] == {"topic": "empty-room", "subscribers": 0, "nodes": 0}
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_a_killed_nodes_users_and_subscribers_stop_counting_within_the_node_ttl(start_stack) -> None:
    """After SIGKILL of a node (NODE_TTL_SECONDS=3), its users and topic subscribers drop out of presence within the TTL."""
    stack: RunningStack = start_stack(**FAST)
    c = stack.client
    doomed, survivor = await c.connect("dora", node=0, topics=["news"]), await c.connect("sam", node=1, topics=["news"])
    await subscribe(doomed, ["news"])
    await subscribe(survivor, ["news"])
    await answers(stack, "/v1/topics/news", {"subscribers": 2, "nodes": 2})
    stack.push(0).kill()
    loop = asyncio.get_running_loop()
    killed = loop.time()
    await answers(stack, "/v1/presence/dora", {"online": False})
    await answers(stack, "/v1/topics/news", {"subscribers": 1, "nodes": 1})
    assert loop.time() - killed <= 3 + scaled(1), "within the node TTL (and one heartbeat's slack)"
    assert (await get(stack, "/v1/presence/sam"))[1]["connections"] == 1
    await survivor.close()


async def test_presence_refuses_bad_input_with_clear_4xx(shared_stack: RunningStack) -> None:
    """A wrong key is 401, a bad user id or topic 422, more than 1,000 ids 413, in the error shape."""
    assert (await get(shared_stack, "/v1/presence/pia", api_key="wrong"))[0] == 401
    for path in ("/v1/presence/has%20space", "/v1/topics/bad%20topic"):
        status, body = await get(shared_stack, path)
        assert (status, body["error"]["code"]) == (422, "invalid")
    status, body = await post(shared_stack, "/v1/presence", {"user_ids": [f"u{i}" for i in range(1001)]})
    assert (status, body["error"]["code"]) == (413, "too_large")
    status, body = await post(shared_stack, "/v1/presence", {"user_ids": "pia"})
    assert (status, body["error"]["code"]) == (422, "invalid")
