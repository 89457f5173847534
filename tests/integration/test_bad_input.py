"""Bad input gets a clear 4xx or close code, and every service keeps answering afterwards."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from shared.delivery.inbox import inbox_key
from shared.infra.config import DEV_JWT_KEY
from tests.client import frames_within, next_frame, receive_ids
from tests.conftest import RunningStack
from tests.waits import scaled


async def assert_all_healthy(stack: RunningStack) -> None:
    assert set((await stack.client.health()).values()) == {200}


async def closed_with(ws) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        await next_frame(ws)
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.mark.parametrize("token", ["", "not-a-jwt", jwt.encode({"sub": "x", "exp": 2**40}, "wrong-key-" * 4, "HS256"),
                                   jwt.encode({"sub": "x", "exp": 2**40}, None, "none")])
async def test_bad_token_is_closed_with_4001(shared_stack: RunningStack, token: str) -> None:
    """A missing, garbled, wrongly signed or unsigned (alg none) token gets close code 4001."""
    ws = await shared_stack.client.open(token)
    code, reason = await closed_with(ws)
    assert code == 4001 and reason
    await assert_all_healthy(shared_stack)


async def test_expired_token_is_closed_with_4001(shared_stack: RunningStack) -> None:
    """A correctly signed token whose exp has passed gets close code 4001 'token expired'."""
    token = jwt.encode({"sub": "old", "exp": int(time.time()) - 5}, DEV_JWT_KEY, "HS256")
    code, reason = await closed_with(await shared_stack.client.open(token))
    assert (code, reason) == (4001, "token expired")
    await assert_all_healthy(shared_stack)


async def test_token_expiring_during_session_closes_with_4001(shared_stack: RunningStack) -> None:
    """A connection is closed with 4001 when its token expires, so the client fetches a new one (told at once that it
    is expiring: it has less left than EXPIRING_NOTICE_SECONDS)."""
    c = shared_stack.client
    ws = await c.open(await c.token("short-lived", ttl_seconds=2))
    assert (await next_frame(ws))["type"] == "welcome"
    assert (await next_frame(ws))["type"] == "expiring"
    code, reason = await closed_with(ws)
    assert (code, reason) == (4001, "token expired")


async def test_garbage_frame_is_closed_with_4002(shared_stack: RunningStack) -> None:
    """A frame that is not JSON gets close code 4002 and the node keeps serving."""
    ws = await shared_stack.client.connect("garbler")
    await ws.send("{{{ not json")
    code, _ = await closed_with(ws)
    assert code == 4002
    await assert_all_healthy(shared_stack)


async def test_app_ping_gets_pong(shared_stack: RunningStack) -> None:
    """Browsers, which cannot send websocket pings, get a pong frame for a ping frame."""
    ws = await shared_stack.client.connect("pinger")
    await ws.send('{"type": "ping"}')
    assert await next_frame(ws) == {"type": "pong"}
    await ws.close()


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"body": {"user_id": "u1", "payload": 1}, "api_key": "wrong"}, 401, "unauthorized"),
        ({"raw": b'{"user_id": "u1", "payload": '}, 400, "malformed"),
        ({"body": {"user_id": "u1", "payload": "x" * 70_000}}, 413, "too_large"),
        ({"raw": b"[" + b"1," * 600_000 + b"1]"}, 413, "too_large"),
        ({"body": {"user_id": "has space", "payload": 1}}, 422, "invalid"),
        ({"body": {"payload": 1}}, 422, "invalid"),
        ({"body": [1, 2]}, 400, "malformed"),
        ({"body": {"messages": [{"user_id": "u", "payload": 1}] * 1001}}, 413, "too_large"),
    ],
    ids=["wrong-api-key", "malformed-json", "payload-over-limit", "body-over-limit", "bad-user-id", "no-user",
         "not-an-object", "batch-over-limit"],
)
async def test_bad_post_gets_clear_4xx(shared_stack: RunningStack, kwargs: dict, status: int, code: str) -> None:
    """collect answers each kind of bad post with its status and a JSON error code, then stays healthy."""
    got_status, body = await shared_stack.client.post(**kwargs)
    assert got_status == status
    assert body["error"]["code"] == code and body["error"]["message"]
    await assert_all_healthy(shared_stack)


async def test_internal_link_refuses_wrong_key(shared_stack: RunningStack) -> None:
    """The dispatch link on a push node refuses a client without the internal key (HTTP 401)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{shared_stack.stack.push_ports[0]}/internal",
                      additional_headers={"Authorization": "Bearer guess"})
    assert info.value.response.status_code == 401


async def test_auth_verifies_a_batch_of_tokens_one_result_each(shared_stack: RunningStack) -> None:
    """POST /v1/verify with a list answers each token on its own: an identity, or the reason it is refused."""
    c = shared_stack.client
    good = await c.token("batch-user")
    async with c.session.post(f"{shared_stack.stack.auth_url}/v1/verify", json={"tokens": [good, "garbage"]}) as r:
        assert r.status == 200
        first, second = (await r.json())["results"]
    assert first["user_id"] == "batch-user" and first["expires_at"] > 0
    assert second["error"]["code"] == "unauthorized"
    async with c.session.post(f"{shared_stack.stack.auth_url}/v1/verify", json={"tokens": [1, 2]}) as r:
        assert r.status == 422 and (await r.json())["error"]["code"] == "invalid"


async def raw_status(port: int, request: bytes) -> int:
    """The status code a server answers to raw request bytes (headers with any bytes at all)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), scaled(10))
    writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize("service", ["auth", "collect", "push"])
async def test_a_non_ascii_bearer_key_is_refused_with_401_not_a_500(shared_stack: RunningStack, service: str) -> None:
    """A key of non-ASCII bytes is just a wrong key: 401 from auth, collect and a push node's dispatch link."""
    stack = shared_stack.stack
    key = "Bearer ключ".encode()
    requests = {
        "auth": (stack.auth_port, b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nAuthorization: " + key + b"\r\n\r\n{}"),
        "collect": (stack.collect_port,
                    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nAuthorization: " + key + b"\r\n\r\n{}"),
        "push": (stack.push_ports[0], b"GET /internal HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: " + key + b"\r\n\r\n"),
    }
    port, request = requests[service]
    assert await raw_status(port, request) == 401
    await assert_all_healthy(shared_stack)


async def test_a_post_over_the_delivery_cap_is_refused_whole_and_stores_nothing(start_stack) -> None:
    """Messages x recipients past MAX_DELIVERIES is a 413 naming the count, and not one delivery is opened."""
    stack: RunningStack = start_stack(MAX_DELIVERIES="10")
    body = {"messages": [{"user_ids": [f"fan{i}" for i in range(4)], "payload": n} for n in range(3)]}
    status, answer = await stack.client.post(body)
    assert status == 413 and answer["error"]["code"] == "too_large" and "12 deliveries" in answer["error"]["message"]
    redis = Redis.from_url(stack.stack.redis_url)
    assert await redis.exists(*(inbox_key(f"fan{i}") for i in range(4))) == 0
    await redis.aclose()
    status, _ = await stack.client.post({"messages": body["messages"][:2]})
    assert status == 202


async def test_posts_too_big_for_one_stored_document_are_413s_that_never_open_the_store_breaker(start_stack) -> None:
    """With body and payload limits raised to 24 MB, six 17 MB posts (past the breaker's five) sent together with valid
    posts each get a 413 naming the store's limit and store nothing; the valid posts, and one sent after, are stored
    whole and delivered, and MongoDB's breaker stays closed (FerretDB stored such posts, but could not read them back)."""
    stack: RunningStack = start_stack(MAX_BODY_BYTES=str(24 * 2**20), MAX_PAYLOAD_BYTES=str(24 * 2**20))
    c = stack.client
    ws = await c.connect("bystander")
    big = {"user_id": "bystander", "payload": "x" * (17 * 2**20)}
    good = [{"messages": [{"user_id": "bystander", "payload": f"{n}.{i}"} for i in range(2)]} for n in range(6)]
    answers = await asyncio.gather(*(c.post(body) for pair in zip([big] * 6, good) for body in pair))
    for status, answer in answers[0::2]:
        assert status == 413 and "the store's limit is 16777216" in answer["error"]["message"]
    assert {status for status, _ in answers[1::2]} == {202}
    status, last = await c.post({"user_id": "bystander", "payload": "after"})
    assert status == 202
    ids = [i for _, answer in answers[1::2] for i in answer["ids"]] + last["ids"]
    assert sorted(await receive_ids(ws, 13)) == sorted(ids) and await frames_within(ws, 1.0) == []
    mongo = AsyncMongoClient(stack.stack.mongo_url)
    docs = await mongo[stack.stack.mongo_db].posts.find({}, {"frames": 1}).to_list(None)
    assert sorted(len(d["frames"]) for d in docs) == [1] + [2] * 6, "the valid posts whole, nothing of the big ones"
    await mongo.close()
    async with c.session.get(f"{stack.stack.collect_url}/healthz") as r:
        assert r.status == 200 and (await r.json())["breakers"]["mongodb"] == "closed"
    await ws.close()


async def test_payloads_mongodb_could_not_hold_as_fields_are_accepted_and_delivered_unchanged(shared_stack: RunningStack) -> None:
    """Keys with '.', '$' or NUL, nested arrays and a 64-bit unsigned integer, posted six times (past the breaker's
    five), are each stored as frame text (202) and delivered as posted, and collect stays healthy."""
    c = shared_stack.client
    ws = await c.connect("odd-keys")
    payload = {"a.b": 1, "$set": {"k\u0000": [[1, [2]], []]}, "max": 2**64 - 1}
    ids = []
    for _ in range(6):
        status, answer = await c.post({"user_id": "odd-keys", "payload": payload})
        assert status == 202
        ids.append(answer["id"])
    frames = [await next_frame(ws) for _ in ids]
    assert [f["id"] for f in frames] == ids and all(f["payload"] == payload for f in frames)
    await assert_all_healthy(shared_stack)
    await ws.close()
