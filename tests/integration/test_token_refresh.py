"""Token refresh over real processes: a socket swaps its token without reconnecting, loses the topics the new token no
longer grants, is refused (4001) a token that is not its user's or not valid, and is told once per token that it is
about to expire."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from shared.infra.clients import redis_client
from shared.infra.config import DEV_JWT_KEY
from tests.client import ClusterClient, frames_within, next_frame, subscribe
from tests.conftest import RunningStack
from tests.integration.test_bad_input import closed_with
from tests.integration.test_topics import field_becomes, node_id
from tests.waits import until

NOTICE = 5  # seconds: longer than the short tokens below, so their notice comes at once or within a few seconds
STACK_ENV = {"PUBLIC_TOPICS": "lobby", "EXPIRING_NOTICE_SECONDS": str(NOTICE)}


def expiry_of(token: str) -> int:
    """The token's ``exp`` claim (seconds since epoch), as auth signed it."""
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def refresh(ws: ClientConnection, token: str) -> None:
    """Send a refresh frame with ``token``."""
    await ws.send(orjson.dumps({"type": "refresh", "token": token}).decode())


async def connected(c: ClusterClient, token: str, node: int = 0) -> ClientConnection:
    """A socket with ``token`` on push node ``node``, its welcome read."""
    ws = await c.open(token, node)
    assert (await next_frame(ws))["type"] == "welcome"
    return ws


async def test_refresh_answers_with_the_new_expiry_and_the_socket_outlives_the_first_token(
        any_shared_stack: RunningStack) -> None:
    """A refreshed socket is answered with its new token's exp and stays open past its first token's expiry, and the
    first token's pending notice (due 1-2 s after the connect) is cancelled: the new, long token has none due."""
    c = any_shared_stack.client
    first, second = await c.token("fresh", ttl_seconds=7), await c.token("fresh", ttl_seconds=3600)
    ws = await connected(c, first)
    await refresh(ws, second)
    assert await next_frame(ws) == {"type": "refreshed", "expires_at": expiry_of(second)}
    await until(time.time, lambda now: now > expiry_of(first) + 1, what="the first token's expiry to pass", timeout=10)
    await ws.send('{"type": "ping"}')
    assert await next_frame(ws) == {"type": "pong"}
    await ws.close()


async def test_a_narrower_token_unsubscribes_what_it_no_longer_grants_before_answering(any_shared_stack: RunningStack) -> None:
    """A refresh whose token drops a subscribed topic sends unsubscribed for it, then refreshed; the node's count of that
    topic goes, its messages stop reaching the socket while a still-granted topic's arrive, and it is forbidden from
    then on."""
    c = any_shared_stack.client
    ws = await connected(c, await c.token("narrow", topics=["t:keep", "t:drop"]))
    assert [(r["type"], r["topics"]) for r in await subscribe(ws, ["t:keep", "t:drop", "lobby"])] == [
        ("subscribed", ["t:keep", "t:drop", "lobby"])]
    witness = await c.connect("narrow-witness", node=1, topics=["t:drop"])
    await subscribe(witness, ["t:drop"])
    redis = redis_client(any_shared_stack.stack.redis_url)
    try:
        narrower = await c.token("narrow", topics=["t:keep"])
        await refresh(ws, narrower)
        assert await next_frame(ws) == {"type": "unsubscribed", "topics": ["t:drop"]}
        assert await next_frame(ws) == {"type": "refreshed", "expires_at": expiry_of(narrower)}
        await field_becomes(redis, "t:drop", node_id(any_shared_stack, 0), None)
        status, body = await c.post({"messages": [{"topic": "t:drop", "payload": "gone"}, {"topic": "t:keep", "payload": "kept"},
                                                  {"topic": "lobby", "payload": "public"}]})
        assert status == 202
        dropped, kept, public = body["ids"]
        assert (await next_frame(witness))["id"] == dropped  # it was delivered, to the sockets still subscribed
        frames = [await next_frame(ws), await next_frame(ws), *await frames_within(ws, 0.5)]
        assert sorted(f["id"] for f in frames) == sorted([kept, public])
        assert await subscribe(ws, ["t:drop"]) == [{"type": "error", "code": "forbidden", "topics": ["t:drop"]}]
    finally:
        await ws.close()
        await witness.close()
        await redis.aclose()


async def refused_token(c: ClusterClient, kind: str) -> str:
    """A token that ``refuser``'s socket may not switch to: valid but another user's, garbled, or expired."""
    if kind == "another user's":
        return await c.token("someone-else")
    if kind == "garbled":
        return "not-a-jwt"
    return jwt.encode({"sub": "refuser", "exp": int(time.time()) - 5}, DEV_JWT_KEY, "HS256")


@pytest.mark.parametrize(("kind", "reason"), [("another user's", "refresh token is for another user"),
                                              ("garbled", "invalid token:"), ("expired", "token expired")])
async def test_a_refresh_with_another_users_or_an_invalid_token_closes_with_4001(any_shared_stack: RunningStack, kind: str,
                                                                                 reason: str) -> None:
    """Refreshing with a token for another user, or one auth refuses, closes the socket with 4001 saying why."""
    c = any_shared_stack.client
    ws = await c.connect("refuser")
    await refresh(ws, await refused_token(c, kind))
    code, said = await closed_with(ws)
    assert code == 4001 and said.startswith(reason), said


async def test_the_expiring_notice_comes_once_per_token_and_again_after_a_refresh(any_shared_stack: RunningStack) -> None:
    """With EXPIRING_NOTICE_SECONDS=5, a 6-second token is told once, within the last 5 s, and nothing more until its
    close (4001); a socket refreshed to another short token is told again, for that one."""
    c = any_shared_stack.client
    token = await c.token("warned", ttl_seconds=6)
    ws = await connected(c, token)
    notice = await next_frame(ws)
    assert notice["type"] == "expiring" and 0 < notice["expires_in_ms"] <= NOTICE * 1000, notice
    assert time.time() >= expiry_of(token) - NOTICE - 0.5  # not earlier than it was due
    code, _ = await closed_with(ws)  # no second notice before the close
    assert code == 4001

    ws = await connected(c, await c.token("warned", ttl_seconds=3600), node=1)
    renewed = await c.token("warned", ttl_seconds=7)
    await refresh(ws, renewed)
    assert await next_frame(ws) == {"type": "refreshed", "expires_at": expiry_of(renewed)}
    notice = await next_frame(ws)
    assert notice["type"] == "expiring" and 0 < notice["expires_in_ms"] <= NOTICE * 1000, notice
    await ws.close()


async def test_an_expiring_notice_of_0_seconds_sends_none(start_stack: Callable[..., RunningStack]) -> None:
    """EXPIRING_NOTICE_SECONDS=0 switches the notice off: a short token's socket gets nothing before its 4001 close."""
    running = start_stack(nodes=1, EXPIRING_NOTICE_SECONDS="0")
    c = running.client
    ws = await connected(c, await c.token("unwarned", ttl_seconds=2))
    code, _ = await closed_with(ws)
    assert code == 4001
