"""Topics and broadcast over real processes: who may subscribe, the Redis registry of topic -> nodes,
and one message reaching every subscribed socket, on every node, once."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import orjson
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from shared.config import DEV_INTERNAL_KEY
from shared.routing import RouteReader
from shared.topicmap import TOPICS_KEY, TopicReader, topic_key
from tests.client import next_frame, subscribe
from tests.conftest import RunningStack

STACK_ENV = {"PUBLIC_TOPICS": "lobby, public:*"}


def node_id(stack: RunningStack, index: int) -> str:
    return f"127.0.0.1:{stack.stack.push_ports[index]}"


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    """Poll ``check`` until it returns something truthy; return that."""
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
        return value


async def field_is(redis: Redis, topic: str, node: str, value: bytes | None) -> bool:
    return await redis.hget(topic_key(topic), node) == value


async def test_subscribe_grants_claim_names_patterns_and_public_topics_and_refuses_the_rest(shared_stack: RunningStack) -> None:
    """Names and prefix patterns of the token's claim and the node's PUBLIC_TOPICS are granted; anything else is
    refused as forbidden and the connection stays open; unsubscribe answers with its topics."""
    ws = await shared_stack.client.connect("perm", topics=["news", "room:*"])
    replies = await subscribe(ws, ["news", "room:42", "lobby", "public:x", "secret", "room", "publicity"])
    assert replies == [{"type": "subscribed", "topics": ["news", "room:42", "lobby", "public:x"]},
                       {"type": "error", "code": "forbidden", "topics": ["secret", "room", "publicity"]}]
    await ws.send('{"type": "ping"}')
    assert await next_frame(ws) == {"type": "pong"}
    assert await subscribe(ws, ["news", "room:42"], "unsubscribe") == [{"type": "unsubscribed", "topics": ["news", "room:42"]}]
    plain = await shared_stack.client.connect("perm-plain")
    assert await subscribe(plain, ["news", "lobby"]) == [{"type": "subscribed", "topics": ["lobby"]},
                                                         {"type": "error", "code": "forbidden", "topics": ["news"]}]
    await ws.close()
    await plain.close()


async def test_malformed_subscribe_closes_with_4002(shared_stack: RunningStack) -> None:
    """A subscribe frame without a list of valid topic names is a protocol error: the node closes with 4002."""
    ws = await shared_stack.client.connect("perm-bad", topics=["room:*"])
    await ws.send(orjson.dumps({"type": "subscribe", "topics": ["room:*"]}).decode())
    try:
        await next_frame(ws)
        raise AssertionError("the node answered a malformed subscribe")
    except ConnectionClosed:
        assert ws.close_code == 4002


async def test_registry_counts_each_nodes_subscribed_sockets_and_drops_the_last(shared_stack: RunningStack) -> None:
    """``topic:{name}`` holds each node's number of subscribed sockets, follows unsubscribes and closes, and loses
    a node's field (and the name its ``topics`` entry) with the last subscriber."""
    c = shared_stack.client
    redis = Redis.from_url(shared_stack.stack.redis_url)
    reader, routes = TopicReader(redis), RouteReader(redis, DEV_INTERNAL_KEY)
    first, second, third = [await c.connect(f"reg-{i}", node=i // 2, topics=["public:reg"]) for i in range(3)]
    for ws in (first, second, third):
        await subscribe(ws, ["public:reg"])
    a, b = node_id(shared_stack, 0), node_id(shared_stack, 1)
    try:
        assert await redis.hgetall(topic_key("public:reg")) == {a.encode(): b"2", b.encode(): b"1"}
        assert await reader.counts(["public:reg", "public:none"], await routes.live_nodes()) == {"public:reg": {a: 2, b: 1}}
        assert "public:reg" in await reader.names()
        await subscribe(first, ["public:reg"], "unsubscribe")
        await until(lambda: field_is(redis, "public:reg", a, b"1"))
        await second.close()
        await until(lambda: field_is(redis, "public:reg", a, None))
        await third.close()
        await until(lambda: field_is(redis, "public:reg", b, None))
        assert not await redis.exists(topic_key("public:reg"))
        assert not await redis.sismember(TOPICS_KEY, "public:reg")
    finally:
        await first.close()
        await redis.aclose()
