"""The dispatch link trusts the internal key, not Redis: forged node cards, impostor listeners, replayed
handshakes; and Redis AUTH (every stack in this suite runs on a Redis that requires a password)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request

from shared.cluster.routes import NODES_KEY, NodeCard, node_key, route_key
from shared.delivery.inbox import inbox_key
from shared.infra.clock import now_ms
from shared.infra.config import DEV_INTERNAL_KEY
from shared.wire.signing import PROOF_HEADER, LinkRequest
from tests.client import API_KEY, next_frame, receive_ids, subscribe
from tests.conftest import RunningStack
from tests.waits import scaled, until
from tools.cluster import ROOT, free_port


class Impostor:
    """A websocket listener standing for an attacker's server: records each handshake's headers and every frame."""

    def __init__(self) -> None:
        self.handshakes: list[Headers] = []
        self.frames: list[Any] = []
        self.closed = asyncio.Event()
        self.server: Server | None = None

    def record(self, _: ServerConnection, request: Request) -> None:
        self.handshakes.append(request.headers)

    async def handle(self, ws: ServerConnection) -> None:
        async for frame in ws:
            self.frames.append(frame)
        self.closed.set()

    async def __aenter__(self) -> Impostor:
        self.server = await serve(self.handle, "127.0.0.1", 0, process_request=self.record)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def link_url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/internal"


async def plant(redis: Redis, card: NodeCard, *users: str) -> None:
    """What anyone with write access to Redis can do: a node card, its id in ``nodes``, and routes to it."""
    await redis.set(node_key(card.id), card.encode(), ex=300)
    await redis.sadd(NODES_KEY, card.id)
    for user in users:
        await redis.hset(route_key(user), card.id, 1)


async def post_until(stack: RunningStack, victim: str, seen: Callable[[], Awaitable[bool]], timeout: float = 20) -> list[str]:
    """Post messages, each to ``victim`` and to a new bystander connected to node 0, until ``seen()`` (dispatch reads
    cards when it forwards, from a cache up to 1 s old); return their ids. Each post is waited for until its
    bystander has it and dispatch has finished forwarding it to every node it routed to."""
    ids: list[str] = []
    c, dispatch = stack.client, stack.stack.dispatch_url

    async def post_one() -> bool:
        """Post once, wait until its bystander has it and dispatch is done with it; whether ``seen()`` then holds."""
        bystander_id = f"bystander-of-{victim}-{len(ids)}"
        bystander = await c.connect(bystander_id, node=0)
        out = await c.metric(dispatch, "push_messages_out_total")
        status, body = await c.post({"user_ids": [victim, bystander_id], "payload": "secret"})
        assert status == 202
        assert (await next_frame(bystander))["id"] == body["id"]
        await until(lambda: c.metric(dispatch, "push_messages_out_total"), lambda n: n > out,
                    what="dispatch to finish forwarding the post", timeout=15, every=0.1)
        await bystander.close()
        ids.append(body["id"])
        return await seen()

    await until(post_one, what="dispatch to have read the planted cards", timeout=timeout, every=0)
    return ids


async def test_unsigned_and_badly_signed_cards_are_ignored_and_their_users_messages_wait(shared_stack: RunningStack) -> None:
    """Cards without a signature, or signed with another key, draw no connection from dispatch and are not listed
    to browsers; the message to their user stays in its inbox while the real node's user gets it."""
    redis = Redis.from_url(shared_stack.stack.redis_url)
    async with Impostor() as impostor:
        dispatch = shared_stack.stack.dispatch_url
        refused = await shared_stack.client.metric(dispatch, "push_node_cards_refused_total")
        await plant(redis, NodeCard("unsigned", impostor.link_url, "ws://evil/ws", updated_ms=now_ms()), "victim")
        await plant(redis, NodeCard("badly-signed", impostor.link_url, "ws://evil/ws", updated_ms=now_ms()).sealed("guess"), "victim")

        async def both_refused() -> bool:
            return await shared_stack.client.metric(dispatch, "push_node_cards_refused_total") >= refused + 2

        ids = await post_until(shared_stack, "victim", both_refused)
        assert impostor.handshakes == [] and impostor.frames == []
    assert [await redis.zscore(inbox_key("victim"), i) is not None for i in ids] == [True] * len(ids)
    async with shared_stack.client.session.get(f"{shared_stack.stack.collect_url}/v1/nodes") as r:
        listed = {n["id"] for n in (await r.json())["nodes"]}
    assert listed == {f"127.0.0.1:{p}" for p in shared_stack.stack.push_ports}
    await redis.delete(node_key("unsigned"), node_key("badly-signed"), route_key("victim"))
    await redis.aclose()


async def test_a_listener_without_the_key_gets_no_batch_and_never_sees_the_key(shared_stack: RunningStack) -> None:
    """Even a validly signed card naming an impostor's URL gets it only a signed handshake (no key in any header):
    the impostor cannot answer with the node's proof, so dispatch closes the link without sending a batch."""
    redis = Redis.from_url(shared_stack.stack.redis_url)
    async with Impostor() as impostor:
        await plant(redis, NodeCard("impostor", impostor.link_url, "ws://evil/ws", updated_ms=now_ms()).sealed(DEV_INTERNAL_KEY),
                    "victim-2")

        async def contacted() -> bool:
            return bool(impostor.handshakes)

        ids = await post_until(shared_stack, "victim-2", contacted)
        await asyncio.wait_for(impostor.closed.wait(), scaled(10))
        assert impostor.frames == []
        headers = impostor.handshakes[0]
        assert headers["X-Link-Node"] == "impostor" and headers["X-Link-Signature"]
        assert "Authorization" not in headers
        assert not [v for _, v in headers.raw_items() if DEV_INTERNAL_KEY in v]
    await redis.delete(node_key("impostor"), route_key("victim-2"))
    assert [await redis.zscore(inbox_key("victim-2"), i) is not None for i in ids] == [True] * len(ids)
    await redis.aclose()


async def test_the_node_refuses_a_link_with_a_wrong_signature_another_node_id_or_a_replayed_nonce(
        shared_stack: RunningStack) -> None:
    """The push node admits a signed handshake once and answers with its proof; a replay of it, a signature made
    with another key, a request meant for another node or one 31 s old is refused with 401."""
    port = shared_stack.stack.push_ports[0]
    url, node_id = f"ws://127.0.0.1:{port}/internal", f"127.0.0.1:{port}"
    request = LinkRequest.make(DEV_INTERNAL_KEY, node_id, now_ms(), "GET", "/internal")
    async with connect(url, additional_headers=request.headers()) as ws:
        assert ws.response is not None and request.answered(DEV_INTERNAL_KEY, ws.response.headers[PROOF_HEADER])
    refused = [request, LinkRequest.make("guess", node_id, now_ms(), "GET", "/internal"),
               LinkRequest.make(DEV_INTERNAL_KEY, f"127.0.0.1:{shared_stack.stack.push_ports[1]}", now_ms(), "GET", "/internal"),
               LinkRequest.make(DEV_INTERNAL_KEY, node_id, now_ms() - 31_000, "GET", "/internal"),
               LinkRequest.make(DEV_INTERNAL_KEY, node_id, now_ms(), "GET", "/internal/topics/news")]
    for bad in refused:
        with pytest.raises(InvalidStatus) as info:
            await connect(url, additional_headers=bad.headers())
        assert info.value.response.status_code == 401


async def test_a_signed_topic_query_replayed_as_a_drain_is_refused_and_the_node_keeps_serving(
        shared_stack: RunningStack) -> None:
    """A topic query's proof, captured and replayed as ``POST /v1/drain``, is refused with 401: proofs are bound to the
    method and path, so the node does not drain."""
    c, port = shared_stack.client, shared_stack.stack.push_ports[0]
    query = LinkRequest.make(DEV_INTERNAL_KEY, f"127.0.0.1:{port}", now_ms(), "GET", "/internal/topics/news").headers()
    async with c.session.get(f"{shared_stack.stack.push_url(port)}/internal/topics/news", headers=query) as answer:
        assert answer.status == 200
    async with c.session.post(f"{shared_stack.stack.push_url(port)}/v1/drain", headers=query) as answer:
        assert answer.status == 401, await answer.text()
        assert "another method or path" in (await answer.json())["error"]["message"]
    assert (await c.health())[f"push-{port}"] == 200


async def test_a_flood_of_topic_user_queries_leaves_the_dispatch_link_and_a_drain_working(start_stack) -> None:
    """1,000 ``GET /v1/topics/{t}?users=1`` calls cost the node a signed request per second at most (collect reuses
    the answer), and afterwards a message still reaches a user over dispatch's link and a signed drain is accepted."""
    stack: RunningStack = start_stack(nodes=1)
    c = stack.client
    listener = await c.connect("listener", topics=["room:*"])
    await subscribe(listener, ["room:1"])
    push_url = stack.stack.push_url(stack.stack.push_ports[0])

    async def query() -> tuple[int, Any]:
        async with c.session.get(f"{stack.stack.collect_url}/v1/topics/room:1?users=1",
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            return r.status, await r.json()

    await until(query, lambda answer: answer == (200, {"topic": "room:1", "subscribers": 1, "nodes": 1, "users": ["listener"],
                                                        "truncated": False}), what="the node to count its subscriber")
    started = time.monotonic()
    answers = []
    for _ in range(20):
        answers += await asyncio.gather(*(query() for _ in range(50)))
    seconds = time.monotonic() - started
    unexpected = [answer for answer in answers if answer[0] != 200 or answer[1].get("users") != ["listener"]]
    assert not unexpected, f"{len(unexpected)} of 1,000 answers were not the listener, e.g. {unexpected[:3]}"
    signed = await c.metric(push_url, "push_signed_requests_total", purpose="topic_users")
    assert 1 <= signed <= math.ceil(seconds) + 1, f"{signed:.0f} signed requests for 1,000 calls in {seconds:.1f} s"
    _, posted = await c.post({"user_id": "listener", "payload": "after the flood"})
    assert await receive_ids(listener, 1) == [posted["id"]]
    assert (await c.drain())[0] == 202
    await listener.close()


async def test_redis_requires_the_password_and_a_wrong_one_stops_each_service_at_start(shared_stack: RunningStack) -> None:
    """The suite's Redis refuses a client without the password, and collect, dispatch and a push node given a wrong
    one exit at start naming REDIS_URL, without printing the password."""
    stack = shared_stack.stack
    url = urlsplit(stack.redis_url)
    assert url.password
    without = Redis.from_url(url._replace(netloc=f"{url.hostname}:{url.port}").geturl())
    with pytest.raises(AuthenticationError):
        await without.ping()
    await without.aclose()
    wrong = url._replace(netloc=f":not-the-password@{url.hostname}:{url.port}").geturl()
    env = {**os.environ, **stack.service_env(), "REDIS_URL": wrong, "PUSH_PORT": str(free_port()), "DISPATCH_PORT": str(free_port()),
           "COLLECT_PORT": str(free_port())}
    procs = {s: subprocess.Popen([sys.executable, "-m", f"services.{s}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for s in ("collect", "dispatch", "push")}
    for service, proc in procs.items():
        output, _ = await asyncio.to_thread(proc.communicate, timeout=scaled(30))
        assert proc.returncode != 0, service
        assert f"{service}: Redis at 127.0.0.1:" in output and "refused the credentials in REDIS_URL" in output, output
        assert "not-the-password" not in output
