"""Topics and broadcast over real processes: who may subscribe, the Redis registry of topic -> nodes,
and one message reaching every subscribed socket, on every node, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from shared.cluster.routes import RouteReader
from shared.cluster.topic_holders import TOPICS_KEY, TopicReader, topic_key
from shared.delivery.inbox import expiry_key, inbox_key, post_key
from shared.infra.clients import redis_client
from shared.infra.config import DEV_INTERNAL_KEY
from shared.infra.slots import post_tag
from shared.model.message import post_of
from tests.client import frames_within, next_frame, receive_ids, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled, until
from tools.cluster import Cluster

STACK_ENV = {"PUBLIC_TOPICS": "lobby, public:*", "MAX_CONNECTION_TOPICS": "5"}


def node_id(stack: RunningStack, index: int) -> str:
    return f"127.0.0.1:{stack.stack.push_ports[index]}"


async def field_becomes(redis: Redis, topic: str, node: str, value: bytes | None) -> None:
    """Wait until ``node``'s field of ``topic:{topic}`` holds ``value`` (None: gone)."""
    await until(lambda: redis.hget(topic_key(topic), node), lambda field: field == value,
                what=f"{node}'s field of {topic_key(topic)} to be {value!r}")


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


async def test_topics_past_the_per_connection_cap_are_refused_as_limit(shared_stack: RunningStack) -> None:
    """With MAX_CONNECTION_TOPICS=5, a socket holding 4 topics is granted one more (and those it holds again),
    the rest come back in an error with code limit, and the connection stays open."""
    ws = await shared_stack.client.connect("cap")
    await subscribe(ws, [f"public:c{i}" for i in range(4)])
    assert await subscribe(ws, ["public:c0", "public:c4", "public:c5", "public:c6"]) == [
        {"type": "subscribed", "topics": ["public:c0", "public:c4"]},
        {"type": "error", "code": "limit", "topics": ["public:c5", "public:c6"]}]
    await ws.send('{"type": "ping"}')
    assert await next_frame(ws) == {"type": "pong"}
    await ws.close()


async def test_malformed_subscribe_closes_with_4002(shared_stack: RunningStack) -> None:
    """A subscribe frame without a list of valid topic names is a protocol error: the node closes with 4002."""
    ws = await shared_stack.client.connect("perm-bad", topics=["room:*"])
    await ws.send(orjson.dumps({"type": "subscribe", "topics": ["room:*"]}).decode())
    try:
        await next_frame(ws)
        raise AssertionError("the node answered a malformed subscribe")
    except ConnectionClosed:
        assert ws.close_code == 4002


async def test_registry_counts_each_nodes_subscribed_sockets_and_drops_the_last(any_shared_stack: RunningStack) -> None:
    """``topic:{name}`` holds each node's number of subscribed sockets, follows unsubscribes and closes, and loses
    a node's field (and the name its ``topics`` entry) with the last subscriber."""
    c = any_shared_stack.client
    redis = redis_client(any_shared_stack.stack.redis_url)
    reader, routes = TopicReader(redis), RouteReader(redis, DEV_INTERNAL_KEY)
    first, second, third = [await c.connect(f"reg-{i}", node=i // 2, topics=["public:reg"]) for i in range(3)]
    for ws in (first, second, third):
        await subscribe(ws, ["public:reg"])
    a, b = node_id(any_shared_stack, 0), node_id(any_shared_stack, 1)
    try:
        assert await redis.hgetall(topic_key("public:reg")) == {a.encode(): b"2", b.encode(): b"1"}
        assert await reader.counts(["public:reg", "public:none"], await routes.live_nodes()) == {"public:reg": {a: 2, b: 1}}
        assert "public:reg" in await reader.names()
        await subscribe(first, ["public:reg"], "unsubscribe")
        await field_becomes(redis, "public:reg", a, b"1")
        await second.close()
        await field_becomes(redis, "public:reg", a, None)
        await third.close()
        await field_becomes(redis, "public:reg", b, None)
        assert not await redis.exists(topic_key("public:reg"))
        assert not await redis.sismember(TOPICS_KEY, "public:reg")
    finally:
        await first.close()
        await redis.aclose()


async def subscribed(c: Any, user: str, node: int, topics: list[str]) -> Any:
    """A socket of ``user`` on ``node``, subscribed to ``topics`` (public ones)."""
    ws = await c.connect(user, node=node)
    assert (await subscribe(ws, topics))[0] == {"type": "subscribed", "topics": topics}
    return ws


async def test_topic_message_reaches_each_subscriber_on_both_nodes_exactly_once(any_shared_stack: RunningStack) -> None:
    """Every subscribed socket, on either node (two of one user among them), gets a topic message once; an
    unsubscribed socket and a socket that never subscribed get nothing."""
    c = any_shared_stack.client
    subscribers = [await subscribed(c, user, node, ["public:once"]) for user, node in
                   [("once-a", 0), ("once-b", 1), ("once-c", 0), ("once-c", 1)]]
    left = await subscribed(c, "once-left", 1, ["public:once"])
    await subscribe(left, ["public:once"], "unsubscribe")
    bystander = await c.connect("once-none", node=0)
    status, body = await c.post({"topic": "public:once", "payload": {"n": 1}})
    assert status == 202
    for ws in subscribers:
        frames = await frames_within(ws, 1.5)
        assert [(f["id"], f["topic"], f["payload"]) for f in frames] == [(body["id"], "public:once", {"n": 1})]
        assert set(frames[0]) == {"type", "id", "topic", "payload", "ts", "offset", "epoch"}
    assert await frames_within(left, 0.3) == [] and await frames_within(bystander, 0.3) == []
    for ws in [*subscribers, left, bystander]:
        await ws.close()


async def test_a_batch_mixes_user_and_topic_messages(shared_stack: RunningStack) -> None:
    """In one post, a user message reaches its user and a topic message its subscribers, each once."""
    c = shared_stack.client
    user = await subscribed(c, "mix-user", 0, ["public:mix"])
    other = await subscribed(c, "mix-other", 1, ["public:mix"])
    status, body = await c.post({"messages": [{"user_id": "mix-user", "payload": "direct"},
                                              {"topic": "public:mix", "payload": "all"}]})
    assert status == 202
    direct, topic = body["ids"]
    assert sorted((f["id"], f["payload"]) for f in await frames_within(user, 1.5)) == sorted([(direct, "direct"), (topic, "all")])
    assert [(f["id"], f["payload"]) for f in await frames_within(other, 0.5)] == [(topic, "all")]
    await user.close()
    await other.close()


async def test_broadcast_reaches_every_socket_of_both_nodes(any_shared_stack: RunningStack) -> None:
    """A broadcast reaches every open socket, subscribed to anything or not, on both nodes, once each."""
    c = any_shared_stack.client
    sockets = [await c.connect(f"all-{i}", node=i % 2) for i in range(4)] + [await subscribed(c, "all-sub", 1, ["lobby"])]
    status, body = await c.post({"broadcast": True, "payload": "everyone"})
    assert status == 202
    for ws in sockets:
        frames = await frames_within(ws, 1.5)
        assert frames == [{"type": "message", "id": body["id"], "broadcast": True, "payload": "everyone", "ts": frames[0]["ts"],
                           "offset": frames[0]["offset"], "epoch": frames[0]["epoch"]}]
        await ws.close()


async def test_status_of_topic_and_broadcast_messages_counts_nodes_and_sockets(shared_stack: RunningStack) -> None:
    """GET /v1/messages/{id} of a topic message answers its stage times, the nodes that took it and the sockets
    written (two on one node, one on the other), and says broadcast for a broadcast."""
    c = shared_stack.client
    sockets = [await subscribed(c, f"count-{i}", i // 2, ["public:count"]) for i in range(3)]
    _, topic = await c.post({"topic": "public:count", "payload": 1})
    _, everyone = await c.post({"broadcast": True, "payload": 2})
    for ws in sockets:
        assert len(await receive_ids(ws, 2)) == 2

    def counted(at_least: bool = False) -> Callable[[tuple[int, Any]], bool]:
        """Whether a status says both nodes counted the three sockets (at least, for a broadcast: others may be open)."""
        def done(answer: tuple[int, Any]) -> bool:
            code, body = answer
            assert code == 200, body
            return body["nodes"] == 2 and (body["sockets"] >= 3 if at_least else body["sockets"] == 3)
        return done

    _, body = await until(lambda: c.status(topic["id"]), counted(), what="both nodes to count the topic's 3 sockets")
    assert body["id"] == topic["id"] and body["topic"] == "public:count" and "recipients" not in body
    assert body["stages"]["accepted"] <= body["stages"]["dispatched"] <= body["stages"]["delivered"]
    _, body = await until(lambda: c.status(everyone["id"]), counted(at_least=True), what="both nodes to count the broadcast")
    assert body["broadcast"] is True
    for ws in sockets:
        await ws.close()


async def test_topic_message_opens_no_inbox_and_is_not_replayed(shared_stack: RunningStack) -> None:
    """A topic message leaves no post hash, expiry entry or inbox entry in Redis, so a reconnecting subscriber
    is not sent it again."""
    c = shared_stack.client
    redis = Redis.from_url(shared_stack.stack.redis_url)
    ws = await subscribed(c, "replay-sub", 0, ["public:replay"])
    status, body = await c.post({"topic": "public:replay", "payload": "once"})
    assert status == 202 and (await next_frame(ws))["id"] == body["id"]
    await ws.close()
    try:
        post = post_of(body["id"])
        assert not await redis.exists(post_key(post), inbox_key("replay-sub"))
        assert await redis.zscore(expiry_key(post_tag(post)), post) is None
    finally:
        await redis.aclose()
    again = await c.connect("replay-sub", node=0)
    assert await frames_within(again, 1.0) == []
    await again.close()


async def test_a_killed_nodes_subscribers_stop_counting_within_the_node_ttl(start_stack: Callable[..., RunningStack]) -> None:
    """After a node is SIGKILLed, readers stop counting its subscribers once its card expires (NODE_TTL_SECONDS=3),
    and topic messages still reach the live node's subscribers."""
    stack = start_stack(NODE_TTL_SECONDS="3", **STACK_ENV)
    c = stack.client
    redis = Redis.from_url(stack.stack.redis_url)
    reader, routes = TopicReader(redis), RouteReader(redis, DEV_INTERNAL_KEY)
    alive, doomed = await subscribed(c, "ttl-a", 0, ["public:ttl"]), await subscribed(c, "ttl-b", 1, ["public:ttl"])
    a, b = node_id(stack, 0), node_id(stack, 1)

    async def counted() -> dict[str, dict[str, int]]:
        return await reader.counts(["public:ttl"], await routes.live_nodes())

    try:
        assert await counted() == {"public:ttl": {a: 1, b: 1}}
        stack.push(1).kill()
        killed = asyncio.get_running_loop().time()
        await until(counted, lambda counts: counts == {"public:ttl": {a: 1}}, what="the killed node's subscriber to stop counting")
        assert asyncio.get_running_loop().time() - killed <= 3 + scaled(1.5), "within the node TTL, and some slack"
        assert await redis.hget(topic_key("public:ttl"), b) == b"1"  # the dead node's field stays; it just does not count
        status, body = await c.post({"topic": "public:ttl", "payload": "still"})
        assert status == 202 and (await next_frame(alive))["id"] == body["id"]
    finally:
        await alive.close()
        await doomed.close()
        await redis.aclose()


async def test_a_node_restarted_under_its_id_drops_the_counts_of_its_earlier_life(
        start_stack: Callable[..., RunningStack], cluster: Cluster) -> None:
    """A node SIGKILLed and restarted before its card expired no longer counts the subscribers of its earlier process;
    a clean shutdown (SIGTERM) removes its counts at once."""
    stack = start_stack(**STACK_ENV)
    redis = Redis.from_url(stack.stack.redis_url)
    ws = await subscribed(stack.client, "life", 1, ["public:life"])
    b = node_id(stack, 1)
    try:
        assert await redis.hget(topic_key("public:life"), b) == b"1"
        old = stack.push(1)
        old.kill()
        stack.procs[old.name] = fresh = cluster.respawn(old)
        cluster.wait_http(fresh, f"{stack.stack.push_url(stack.stack.push_ports[1])}/healthz")
        await field_becomes(redis, "public:life", b, None)
        assert not await redis.sismember(TOPICS_KEY, "public:life")
        again = await subscribed(stack.client, "life", 1, ["public:life"])
        assert await redis.hget(topic_key("public:life"), b) == b"1"
        assert fresh.stop() == 0
        assert not await redis.exists(topic_key("public:life")), "a clean shutdown withdraws the node's counts"
        await again.close()
    finally:
        await ws.close()
        await redis.aclose()


async def test_a_broadcast_never_reaches_a_socket_before_its_welcome(shared_stack: RunningStack) -> None:
    """Sockets connecting while broadcasts flow get their welcome frame first, whatever arrives after it."""
    c = shared_stack.client
    tokens = [await c.token(f"storm-{i}") for i in range(60)]
    stop = asyncio.Event()
    answers: list[tuple[int, Any]] = []

    async def broadcasting() -> None:
        while not stop.is_set():
            answers.append(await c.post({"broadcast": True, "payload": "storm"}))

    sender = asyncio.create_task(broadcasting())
    try:
        sockets = await asyncio.gather(*(c.open(t, node=i % 2) for i, t in enumerate(tokens)))
        firsts = [await next_frame(ws) for ws in sockets]
    finally:
        stop.set()
        await sender
    assert answers, "broadcasts were posted while the sockets connected"
    refused = [(code, body) for code, body in answers if code != 202 or body.get("ids") != [body.get("id")]]
    assert not refused, f"each broadcast answered 202 with its id: {refused[:3]}"
    assert [f["type"] for f in firsts] == ["welcome"] * len(tokens)
    for ws in sockets:
        await ws.close()
