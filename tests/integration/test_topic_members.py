"""Join and leave over real processes: a user joins a join/leave topic with their first socket on any node and leaves
with their last, a second tab changes nothing, and a killed node's users leave without leaving ghosts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.client import API_KEY, frames_within, next_frame, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled, until

NAMESPACES = '{"chat": {"join_leave": true}}'
STACK_ENV = {"PUBLIC_TOPICS": "chat:*, news", "TOPIC_NAMESPACES": NAMESPACES}


async def presence(ws: ClientConnection, seconds: float = 1.0) -> list[tuple[str, str]]:
    """The (type, user) of the join and leave frames ``ws`` receives within ``seconds``."""
    return [(f["type"], f["user_id"]) for f in await frames_within(ws, seconds) if f["type"] in ("join", "leave")]


async def next_presence(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    while (frame := await next_frame(ws, timeout))["type"] not in ("join", "leave"):
        pass
    return frame


async def test_a_user_joins_with_the_first_tab_and_leaves_with_the_last_on_either_node(any_shared_stack: RunningStack) -> None:
    """An observer sees one join when a user's first socket subscribes on node 0, nothing when their second tab on
    node 1 subscribes or the first closes, and one leave when the last unsubscribes; topics outside join/leave
    namespaces say nothing."""
    c = any_shared_stack.client
    topic = f"chat:tabs-{any_shared_stack.stack.push_ports[0]}"
    observer = await c.connect("watcher", node=1)
    await subscribe(observer, [topic, "news"])
    assert await next_presence(observer) == {"type": "join", "topic": topic, "user_id": "watcher"}
    first = await c.connect("tabby", node=0)
    await subscribe(first, [topic, "news"])
    assert await next_presence(observer) == {"type": "join", "topic": topic, "user_id": "tabby"}
    second = await c.connect("tabby", node=1)
    await subscribe(second, [topic])
    await first.close()
    assert await presence(observer) == [], "a second tab joins nobody, closing one of two leaves nobody"
    await subscribe(second, [topic], "unsubscribe")
    assert await next_presence(observer) == {"type": "leave", "topic": topic, "user_id": "tabby"}
    assert await presence(observer, 0.5) == []
    await second.close()
    await observer.close()


async def topic_users(stack: RunningStack, topic: str) -> list[str]:
    """The user ids ``GET /v1/topics/{topic}?users=1`` lists."""
    async with stack.client.session.get(f"{stack.stack.collect_url}/v1/topics/{topic}?users=1",
                                        headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status == 200, await r.text()
        return sorted((await r.json())["users"])


async def test_closing_a_users_last_socket_leaves_once_and_drops_them_from_the_user_list(any_shared_stack: RunningStack) -> None:
    """With a user's two sockets on two nodes, closing one makes no leave and closing the last (no unsubscribe) makes
    one leave and takes them off the topic's user list."""
    c = any_shared_stack.client
    topic = f"chat:closing-{any_shared_stack.stack.push_ports[0]}"
    observer = await c.connect("onlooker", node=0)
    await subscribe(observer, [topic])
    assert await next_presence(observer) == {"type": "join", "topic": topic, "user_id": "onlooker"}
    tabs = [await c.connect("closer", node=node) for node in (0, 1)]
    for ws in tabs:
        await subscribe(ws, [topic])
    assert await next_presence(observer) == {"type": "join", "topic": topic, "user_id": "closer"}
    assert await until(lambda: topic_users(any_shared_stack, topic), lambda users: users == ["closer", "onlooker"],
                       what="both users listed") == ["closer", "onlooker"]
    await tabs[0].close()
    assert await presence(observer) == [], "closing one of two tabs leaves nobody"
    assert await topic_users(any_shared_stack, topic) == ["closer", "onlooker"]
    await tabs[1].close()
    assert await next_presence(observer) == {"type": "leave", "topic": topic, "user_id": "closer"}
    assert await presence(observer, 0.5) == [], "the user left once"
    assert await until(lambda: topic_users(any_shared_stack, topic), lambda users: users == ["onlooker"],
                       what="the closed user gone from the list") == ["onlooker"]
    await observer.close()


async def test_a_killed_nodes_users_leave_within_the_node_ttl_and_leave_no_ghost(start_stack: Callable[..., RunningStack],
                                                                                topology: str) -> None:
    """With NODE_TTL_SECONDS=3, a node SIGKILLed makes its subscribers leave (once each, seen on the other node)
    within the TTL and a sweep, and the topic's user list then names only the live node's users."""
    stack = start_stack(NODE_TTL_SECONDS="3", **STACK_ENV)
    c = stack.client
    observer = await c.connect("survivor", node=0)
    await subscribe(observer, ["chat:kill"])
    doomed = [await c.connect(f"doomed-{i}", node=1) for i in range(2)]
    for ws in doomed:
        await subscribe(ws, ["chat:kill"])
    joins = [await next_presence(observer) for _ in range(3)]
    assert {(j["type"], j["user_id"]) for j in joins} == {("join", "survivor"), ("join", "doomed-0"), ("join", "doomed-1")}
    stack.push(1).kill()
    killed = asyncio.get_running_loop().time()
    leaves = [await next_presence(observer, timeout=15) for _ in range(2)]
    assert sorted((f["type"], f["user_id"]) for f in leaves) == [("leave", "doomed-0"), ("leave", "doomed-1")]
    assert asyncio.get_running_loop().time() - killed <= 3 + 1 + scaled(1.5), "within the node TTL, a sweep and some slack"

    async def users() -> Any:
        async with c.session.get(f"{stack.stack.collect_url}/v1/topics/chat:kill?users=1",
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            return (await r.json())["users"]

    assert await until(users, lambda found: found == ["survivor"], what="only the live node's user listed") == ["survivor"]
    assert await presence(observer, 0.5) == [], "each left once"
    await observer.close()
