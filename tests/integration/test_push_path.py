"""The push path end to end, over real processes, Redis and FerretDB."""

from __future__ import annotations

import asyncio

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from shared.cluster.routes import node_key, route_key
from shared.delivery.inbox import inbox_key
from shared.delivery.stream import tier_keys
from shared.infra.clients import redis_client
from shared.model.message import post_of
from shared.model.priority import Priority
from tests.client import frames_within, next_frame, receive_ids
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled, until


async def stored(stack: RunningStack, message_id: str) -> list[dict]:
    client = AsyncMongoClient(stack.stack.mongo_url)
    try:
        return [d async for d in client[stack.stack.mongo_db]["posts"].find({"_id": post_of(message_id)})]
    finally:
        await client.close()


async def test_user_on_node_receives_posted_message(any_shared_stack: RunningStack) -> None:
    """A user connected to a push node receives a message posted to collect, with its id, payload and time."""
    c = any_shared_stack.client
    ws = await c.connect("alice", node=0)
    status, body = await c.post({"user_id": "alice", "payload": {"text": "hi", "n": 1}})
    assert status == 202
    frame = await next_frame(ws)
    assert frame["type"] == "message" and frame["id"] == body["id"] and frame["payload"] == {"text": "hi", "n": 1}
    assert isinstance(frame["ts"], int)
    await ws.close()


async def first_read_after_upgrade(stack: RunningStack, token: str) -> bytes:
    """What one read gets from a push node right after a raw upgrade request for ``token``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.stack.push_ports[0])
    try:
        writer.write(f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(65536), scaled(10))
    finally:
        writer.close()


async def test_the_upgrade_answer_comes_in_one_write_with_the_welcome_or_the_refusal(shared_stack: RunningStack) -> None:
    """A node writes its 101 together with the welcome frame once the token is checked and the route written (one
    write where there were two), and together with the close frame for a token auth refuses."""
    c = shared_stack.client
    welcomed = await first_read_after_upgrade(shared_stack, await c.token("one-write"))
    head, _, frames = welcomed.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames[0] == 0x81 and orjson.loads(frames[2:2 + frames[1]])["type"] == "welcome"
    refused = await first_read_after_upgrade(shared_stack, "not-a-token")
    head, _, frames = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and frames[0] == 0x88  # a close frame
    assert int.from_bytes(frames[2:4], "big") == 4001


async def test_user_on_two_nodes_receives_on_both(any_shared_stack: RunningStack) -> None:
    """A user with one connection on each node receives the message on both."""
    c = any_shared_stack.client
    on_a, on_b = await c.connect("bob", node=0), await c.connect("bob", node=1)
    status, body = await c.post({"user_id": "bob", "payload": "both"})
    assert status == 202
    assert (await next_frame(on_a))["id"] == body["id"]
    assert (await next_frame(on_b))["id"] == body["id"]
    await on_a.close()
    await on_b.close()


async def test_users_never_see_each_others_messages(any_shared_stack: RunningStack) -> None:
    """Messages for carol and dave, on the same node, reach only their own recipient."""
    c = any_shared_stack.client
    carol, dave = await c.connect("carol", node=1), await c.connect("dave", node=1)
    _, to_carol = await c.post({"user_id": "carol", "payload": "for carol"})
    _, to_dave = await c.post({"user_id": "dave", "payload": "for dave"})
    carol_frames = await frames_within(carol, 1.5)
    dave_frames = await frames_within(dave, 0.2)
    assert [f["id"] for f in carol_frames] == [to_carol["id"]]
    assert [f["id"] for f in dave_frames] == [to_dave["id"]]
    await carol.close()
    await dave.close()


async def test_batch_and_multi_recipient_posts_reach_every_recipient(any_shared_stack: RunningStack) -> None:
    """``user_ids`` fans one message out, and ``messages`` posts several at once, each to its user."""
    c = any_shared_stack.client
    erin, frank = await c.connect("erin"), await c.connect("frank", node=1)
    status, multi = await c.post({"user_ids": ["erin", "frank"], "payload": "to both"})
    assert status == 202
    status, batch = await c.post({"messages": [{"user_id": "erin", "payload": 1}, {"user_id": "frank", "payload": 2}]})
    assert status == 202 and len(batch["ids"]) == 2
    erin_got = [(await next_frame(erin))["payload"] for _ in range(2)]
    frank_got = [(await next_frame(frank))["payload"] for _ in range(2)]
    assert erin_got == ["to both", 1] and frank_got == ["to both", 2]
    await erin.close()
    await frank.close()


async def test_message_for_offline_user_is_stored_not_delivered(any_shared_stack: RunningStack) -> None:
    """A message for a user with no connection is stored in MongoDB, waits in their Redis inbox, and nobody receives it."""
    c = any_shared_stack.client
    bystander = await c.connect("grace")
    status, body = await c.post({"user_id": "nobody-online", "payload": "later"})
    assert status == 202
    docs = await stored(any_shared_stack, body["id"])
    assert [(d["users"], [orjson.loads(f)["payload"] for f in d["frames"]]) for d in docs] == [(["nobody-online"], ["later"])]
    r = redis_client(any_shared_stack.stack.redis_url)
    assert await r.zrange(inbox_key("nobody-online"), 0, -1) == [body["id"].encode()]
    await r.aclose()
    assert await frames_within(bystander, 1.0) == []
    await bystander.close()


async def test_killed_node_stops_being_routed_within_ttl(start_stack) -> None:
    """After SIGKILL, a node's routes stop counting once its card's TTL runs out; the other node still delivers."""
    stack: RunningStack = start_stack(NODE_TTL_SECONDS="3")
    c = stack.client
    on_a, on_b = await c.connect("heidi", node=0), await c.connect("heidi", node=1)
    loop = asyncio.get_running_loop()
    stack.push(0).kill()
    killed = loop.time()

    async def live_nodes() -> float:
        """dispatch's count of live nodes, refreshed by a post to a user with no route (it reads cards as it forwards)."""
        assert (await c.post({"user_id": "nobody-here", "payload": "tick"}))[0] == 202
        return await c.metric(stack.stack.dispatch_url, "dispatch_live_nodes")

    await until(live_nodes, lambda n: n == 1, what="dispatch to count one live node", every=0.2)
    assert loop.time() - killed <= 3 + 1 + scaled(0.5), "within the card's TTL and dispatch's 1 s cache of cards"
    status, body = await c.post({"user_id": "heidi", "payload": "after kill"})
    assert status == 202
    assert (await next_frame(on_b))["id"] == body["id"]
    await asyncio.sleep(scaled(1))  # proves an absence: a batch sent to the dead node would have failed by now
    # Had dispatch still routed to the dead node, the batch would have failed and been left for a retry.
    assert await c.metric(stack.stack.dispatch_url, "dispatch_retried_total") == 0
    await on_b.close()
    await on_a.close()


async def test_clean_shutdown_removes_routes_at_once(start_stack) -> None:
    """SIGTERM on a node drains it: its card and routes are withdrawn before it exits (nothing is routed there
    afterwards), and its client is told to reconnect to the other node before the close with 1001."""
    stack: RunningStack = start_stack()
    c = stack.client
    ws = await c.connect("ivan", node=0)
    r = Redis.from_url(stack.stack.redis_url)
    node_id = f"127.0.0.1:{stack.stack.push_ports[0]}"
    assert await r.hgetall(route_key("ivan")) == {node_id.encode(): b"1"}
    assert await r.exists(node_key(node_id)) == 1
    assert stack.push(0).stop() == 0
    assert await r.hgetall(route_key("ivan")) == {}
    assert await r.exists(node_key(node_id)) == 0
    assert await next_frame(ws) == {"type": "reconnect", "after_ms": 0, "url": f"ws://127.0.0.1:{stack.stack.push_ports[1]}/ws"}
    await ws.wait_closed()
    assert ws.close_code == 1001
    await r.aclose()


async def test_messages_posted_while_dispatch_is_down_arrive_when_it_returns(start_stack, cluster) -> None:
    """Messages accepted while dispatch is stopped wait in the stream and are delivered after it restarts."""
    stack: RunningStack = start_stack()
    c = stack.client
    ws = await c.connect("judy", node=1)
    stack.procs["dispatch"].stop()
    ids = []
    for n in range(20):
        status, body = await c.post({"user_id": "judy", "payload": n})
        assert status == 202
        ids.append(body["id"])
    assert await frames_within(ws, 0.5) == []
    stack.procs["dispatch"] = cluster.start_service("dispatch", stack.stack)
    got = [(await next_frame(ws))["id"] for _ in ids]
    got += [f["id"] for f in await frames_within(ws, 1.0)]
    lost, twice = report_scenario("dispatch stopped while 20 messages were posted", ids, got)
    assert got == ids and lost == twice == 0
    await ws.close()


async def test_non_ascii_messages_past_the_link_limit_in_bytes_all_arrive(start_stack) -> None:
    """30 messages of 60 KB of emoji (1.8 MB in UTF-8, 0.45 M characters) to one user: dispatch splits the node's
    batch by bytes under the 1 MiB link limit, so the link is never closed with 1009 and every message arrives."""
    stack: RunningStack = start_stack(nodes=1, MAX_BODY_BYTES=str(4 * 1024 * 1024))
    ws = await stack.client.connect("emoji")
    status, posted = await stack.client.post({"messages": [{"user_id": "emoji", "payload": "\U0001F600" * 15_000}] * 30})
    assert status == 202
    received = [(await next_frame(ws, 20))["id"] for _ in range(30)]
    assert received == posted["ids"]
    await ws.close()


async def test_a_stream_backlog_past_its_bound_is_trimmed_and_its_messages_still_arrive_on_connect(start_stack) -> None:
    """With dispatch stopped, 600 posts against STREAM_MAXLEN=100 leave the stream trimmed to about 100 entries;
    the trimmed posts lose only their live push: the user gets all 600 from the inbox on connect."""
    stack: RunningStack = start_stack(STREAM_MAXLEN="100")
    stack.procs["dispatch"].stop()
    ids = []
    for n in range(600):  # one stream entry per post
        status, body = await stack.client.post({"user_id": "backlog", "payload": n})
        assert status == 202
        ids.append(body["id"])
    r = Redis.from_url(stack.stack.redis_url)
    assert await r.xlen(tier_keys()[Priority.NORMAL]) <= 300, "approximate trimming keeps about MAXLEN, never all 600"
    await r.aclose()
    ws = await stack.client.connect("backlog")
    got = [(await next_frame(ws))["id"] for _ in ids]
    assert got == ids
    await ws.close()


async def test_a_connected_user_gets_what_waited_in_the_inbox_while_the_node_card_was_gone(start_stack) -> None:
    """A node whose card vanished (Redis unreachable past its TTL, say in a failover) is taken for dead and its
    connected user's messages wait in the inbox; once the card is back and dispatch links to the node again, the
    node replays them to the open socket."""
    stack: RunningStack = start_stack(nodes=1)
    c = stack.client
    ws = await c.connect("card-gone")
    r = Redis.from_url(stack.stack.redis_url)
    node_id = f"127.0.0.1:{stack.stack.push_ports[0]}"
    posted: list[str] = []
    async with asyncio.timeout(scaled(60)):
        while True:  # until a post went while dispatch had the node for dead (the heartbeat may restore the card first)
            await r.delete(node_key(node_id))
            await asyncio.sleep(1.2)  # dispatch's cached list of live nodes (1 s) is read again on the next post
            status, body = await c.post({"user_id": "card-gone", "payload": len(posted)})
            assert status == 202
            posted.append(body["id"])
            await asyncio.sleep(0.3)
            async with c.session.get(f"{stack.stack.dispatch_url}/healthz") as health:
                if node_id not in (await health.json())["links"]:
                    break
    await r.aclose()
    assert sorted(await receive_ids(ws, len(posted), timeout=30)) == sorted(posted)
    await ws.close()
