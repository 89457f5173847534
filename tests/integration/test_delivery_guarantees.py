"""At-least-once delivery: acks, the offline inbox, expiry, idempotency, and nothing lost when parts fail."""

from __future__ import annotations

import asyncio
import json
import re
import signal

import aiohttp
import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from shared.delivery.inbox import post_key
from shared.model.message import post_of
from tests.client import frames_within, next_frame, receive_ids
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled, until
from tools.cluster import Cluster, free_port

FAST = {"NODE_TTL_SECONDS": "3", "RECONCILE_INTERVAL_SECONDS": "0.5", "CLAIM_IDLE_MS": "2000"}


async def status(stack: RunningStack, message_id: str, api_key: str = "dev-api-key") -> tuple[int, dict]:
    async with stack.client.session.get(f"{stack.stack.collect_url}/v1/messages/{message_id}",
                                        headers={"Authorization": f"Bearer {api_key}"}) as r:
        return r.status, await r.json()


async def wait_for_state(stack: RunningStack, message_id: str, state: str, *stamps: str, timeout: float = 15) -> dict:
    """The status once the first recipient is in ``state`` and has every stage time in ``stamps``."""
    def reached(answer: tuple[int, dict]) -> bool:
        code, body = answer
        return code == 200 and body["recipients"][0]["state"] == state and set(stamps) <= set(body["recipients"][0])

    _, body = await until(lambda: status(stack, message_id), reached, what=f"{message_id} to be {state} with {stamps}",
                          timeout=timeout, every=0.2)
    return body


async def test_lifecycle_records_each_stage_with_its_time(start_stack) -> None:
    """A message acked by its client shows accepted, dispatched, delivered and acked, each with a time."""
    stack: RunningStack = start_stack()
    ws = await stack.client.connect("lena")
    _, posted = await stack.client.post({"user_id": "lena", "payload": "track me"})
    frame = await next_frame(ws)
    await ws.send(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
    body = await wait_for_state(stack, posted["id"], "acked", "dispatched_at", "delivered_at", "acked_at")
    stages = body["recipients"][0]
    assert stages["accepted_at"] <= stages["dispatched_at"] <= stages["acked_at"]
    assert stages["accepted_at"] <= stages["delivered_at"] <= stages["acked_at"]
    await ws.close()


async def test_unacked_messages_are_redelivered_on_reconnect_but_acked_ones_are_not(start_stack, topology: str) -> None:
    """After a reconnect, only the messages the client did not ack come again."""
    stack: RunningStack = start_stack()
    c = stack.client
    ws = await c.connect("mia")
    ids = [(await c.post({"user_id": "mia", "payload": n}))[1]["id"] for n in range(4)]
    got = await receive_ids(ws, 4)
    # with STREAM_SHARDS above 1 (the cluster's 3) posts on different shards may overtake each other live (README)
    assert got == ids if topology == "single" else sorted(got) == sorted(ids), got
    await ws.send(orjson.dumps({"type": "ack", "ids": ids[:2]}).decode())
    await wait_for_state(stack, ids[1], "acked")
    await ws.close()
    again = await c.connect("mia", node=1)
    assert await receive_ids(again, 2) == ids[2:]
    assert await frames_within(again, 1.0) == []
    await again.close()


async def test_killed_node_with_unacked_messages_loses_none(start_stack, topology: str) -> None:
    """A node SIGKILLed while holding delivered-but-unacked messages: the user reconnects to the other node and gets each."""
    stack: RunningStack = start_stack(**FAST)
    c = stack.client
    ws = await c.connect("nina", node=0)
    posted = [(await c.post({"user_id": "nina", "payload": n}))[1]["id"] for n in range(30)]
    first = await receive_ids(ws, 30)
    await ws.send(orjson.dumps({"type": "ack", "ids": first[:10]}).decode())
    await wait_for_state(stack, first[9], "acked")
    stack.push(0).kill()
    again = await c.connect("nina", node=1)
    second = await receive_ids(again, 20)
    assert await frames_within(again, 1.0) == []
    lost, twice = report_scenario("push node SIGKILLed: 30 delivered, 10 acked, 20 unacked", posted, first + second)
    assert lost == 0 and second == posted[10:] and twice == 20
    await again.close()


async def test_messages_posted_across_a_redis_restart_are_all_delivered(start_stack, cluster: Cluster) -> None:
    """Redis restarted without persistence while messages are posted: every 202 message is delivered once it is back."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    c = stack.client
    ws = await c.connect("oscar", node=0)
    accepted, refused, answers = [], 0, []

    async def post_batch(count: int) -> None:
        nonlocal refused
        for _ in range(count):
            code, body = await c.post({"user_id": "oscar", "payload": len(accepted) + refused})
            answers.append(code)
            if code == 202:
                accepted.append(body["id"])
            else:
                assert code == 503, body
                refused += 1
                answers.append(body["error"]["message"])
            await asyncio.sleep(0.02)  # paces the load: a post every 20 ms or so, across the outage

    await post_batch(20)
    redis.stop()
    await post_batch(20)
    redis = cluster.start_redis(redis_port)

    async def recovered() -> bool:
        """Post once more; whether collect is healthy again and accepted a post since Redis came back."""
        await post_batch(1)
        return (await stack.client.health())["collect"] == 200 and len(accepted) >= 21

    # collect's breaker half-opens, tries, closes
    await until(recovered, what="collect to accept posts again after Redis restarted", timeout=20, every=0)
    await post_batch(20)
    received = await receive_ids(ws, len(accepted), timeout=45)
    received += [f["id"] for f in await frames_within(ws, 2.0) if f["type"] == "message"]
    lost, twice = report_scenario(f"Redis restarted, no persistence: {len(accepted) + refused} posts, {refused} got 503",
                                  accepted, received)
    assert lost == 0
    assert twice == 0, "nothing was acked, and a socket is never written a message twice until it is acked (README)"
    assert refused >= 20, "Redis was down for 20 posts, so those must have been refused"
    assert len(accepted) >= 41, f"a post before the outage or after the recovery was refused; the last answers: {answers[-30:]}"
    await ws.close()


async def test_collect_answers_503_while_mongodb_is_down_and_recovers(start_stack, cluster: Cluster) -> None:
    """With FerretDB stopped collect answers 503 with a code and a short reason (the driver's text goes to its log
    only), never 202; only the first post, handed over while its insert ran, may reach a socket online then, and none
    reaches a recipient who connects later; once the store is back, posting works again."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/")
    c = stack.client
    ws = await c.connect("pia")
    _, before = await c.post({"user_id": "pia", "payload": "before"})
    mongo.stop()
    answers = [await c.post({"user_ids": ["pia", "pia-later"], "payload": f"down {n}"}) for n in range(8)]
    assert {code for code, _ in answers} == {503}
    assert {body["error"]["message"] for _, body in answers} <= {
        "mongodb is unavailable; retry later", "mongodb is unavailable (circuit open)",
        "MongoDB is unavailable (circuit open); nothing was stored"}, answers
    logged = [json.loads(line) for line in stack.procs["collect"].log_path.read_text().splitlines() if line.startswith("{")]
    refusals = [line for line in logged if line["event"] == "request refused" and line.get("status") == 503]
    # the driver's own exception, "Type: text" (AutoReconnect, ServerSelectionTimeoutError, ... as the outage met it)
    assert any(re.match(r"\w+: .", line.get("detail") or "") for line in refusals), refusals[-3:]
    withdrawn = [line for line in logged if line["event"] == "messages handed over while their store failed withdrawn"]
    assert [(line["posts"], line["deliveries"]) for line in withdrawn] == [(1, 2)], withdrawn  # the first post's, to both users
    mongo = cluster.start_ferretdb(mongo_port)
    after = await c.post_until_accepted({"user_ids": ["pia", "pia-later"], "payload": "after"})
    frames = [f for f in await frames_within(ws, 2) if f["type"] == "message"]
    report_scenario("FerretDB stopped: 8 posts refused with 503", [before["id"], after["id"]], [f["id"] for f in frames])
    payloads = [f["payload"] for f in frames]
    assert payloads in (["before", "after"], ["before", "down 0", "after"]), payloads
    later = await c.connect("pia-later")
    assert [f["payload"] for f in await frames_within(later, 2) if f["type"] == "message"] == ["after"]
    await later.close()
    await ws.close()


async def test_offline_user_gets_pending_messages_oldest_first_then_live_ones(start_stack) -> None:
    """A user connecting receives the stored messages in order, then live ones, with per-user order kept."""
    stack: RunningStack = start_stack()
    c = stack.client
    stored = [(await c.post({"user_id": "quinn", "payload": f"stored {n}"}))[1]["id"] for n in range(25)]
    await until(lambda: c.metric(stack.stack.dispatch_url, "push_messages_out_total"), lambda n: n >= 25,
                what="dispatch to pass on the 25 stored messages (to no node: quinn is offline)")
    token = await c.token("quinn")
    ws = await c.open(token, node=1)
    live_task = asyncio.ensure_future(asyncio.gather(*(c.post({"user_id": "quinn", "payload": f"live {n}"}) for n in range(5))))
    assert (await next_frame(ws))["type"] == "welcome"
    live = [body["id"] for _, body in await live_task]
    got = await receive_ids(ws, 30)
    assert got[:25] == stored
    assert sorted(got[25:]) == sorted(live)
    assert await frames_within(ws, 1.0) == []
    await ws.close()


async def test_expired_message_is_not_delivered_and_shows_expired(start_stack) -> None:
    """A message whose TTL passes while its user is offline is never delivered and its status says expired."""
    stack: RunningStack = start_stack(RECONCILE_INTERVAL_SECONDS="0.5")
    c = stack.client
    _, doomed = await c.post({"user_id": "rosa", "payload": "too late", "ttl_seconds": 1})
    _, kept = await c.post({"user_id": "rosa", "payload": "in time"})
    await wait_for_state(stack, doomed["id"], "expired")
    ws = await c.connect("rosa")
    assert [f["id"] for f in await frames_within(ws, 1.5)] == [kept["id"]]
    await ws.close()


async def test_same_idempotency_key_twice_stores_one_message(start_stack) -> None:
    """A retried post with the same Idempotency-Key returns the same ids and is delivered once."""
    stack: RunningStack = start_stack()
    c = stack.client
    ws = await c.connect("sam")
    headers = {"Idempotency-Key": "order-42-shipped"}
    first = await c.post({"user_id": "sam", "payload": "shipped"}, headers=headers)
    second = await c.post({"user_id": "sam", "payload": "shipped"}, headers=headers)
    assert first[0] == second[0] == 202 and first[1]["ids"] == second[1]["ids"]
    assert [f["id"] for f in await frames_within(ws, 1.5)] == first[1]["ids"]
    _, other = await c.post({"user_id": "sam", "payload": "shipped"}, headers={"Idempotency-Key": "order-43"})
    assert other["id"] != first[1]["id"]
    await ws.close()


async def test_copies_of_a_post_sent_at_once_with_one_idempotency_key_are_one_whole_post(start_stack) -> None:
    """Three copies of a two-message post sent at once with one key, sharing group commits with other posts, are one
    post: stored with its two messages (not the copies merged), two deliveries open, each message delivered once."""
    stack: RunningStack = start_stack()
    c = stack.client
    body = {"messages": [{"user_id": "rita", "payload": n} for n in range(2)]}
    ids: list[str] = []
    for order in range(5):
        answers = await asyncio.gather(*(c.post({"user_id": "filler", "payload": n}) for n in range(5)),
                                       *(c.post(body, headers={"Idempotency-Key": f"order-{order}"}) for _ in range(3)))
        assert {status for status, _ in answers} == {202}
        (copy,) = {tuple(answer["ids"]) for _, answer in answers[5:]}
        ids += copy
    posts = sorted({post_of(i) for i in ids})
    mongo = AsyncMongoClient(stack.stack.mongo_url)
    docs = await mongo[stack.stack.mongo_db].posts.find({"_id": {"$in": posts}}, {"frames": 1}).to_list(None)
    assert sorted(len(d["frames"]) for d in docs) == [2] * 5
    await mongo.close()
    redis = Redis.from_url(stack.stack.redis_url)
    counts = [await redis.hmget(post_key(p), ["n0", "n1"]) for p in posts]
    await redis.aclose()
    assert counts == [[b"1", b"1"]] * 5, "open deliveries per message"
    ws = await c.connect("rita")
    assert sorted(await receive_ids(ws, 10)) == sorted(ids) and await frames_within(ws, 1.0) == []
    await ws.close()


async def test_status_is_visible_only_to_the_api_key_that_posted(start_stack) -> None:
    """GET /v1/messages/{id} answers the poster and 404s another business system's key."""
    stack: RunningStack = start_stack(COLLECT_API_KEYS="demo:dev-api-key,billing:billing-key")
    _, posted = await stack.client.post({"user_ids": ["tom", "uma"], "payload": "x"})
    code, body = await status(stack, posted["id"])
    assert code == 200 and [r["user_id"] for r in body["recipients"]] == ["tom", "uma"]
    code, body = await status(stack, posted["id"], api_key="billing-key")
    assert code == 404 and body["error"]["code"] == "not_found"


async def test_consuming_loops_survive_a_redis_outage_and_health_reports_it(start_stack, cluster: Cluster) -> None:
    """While Redis is down dispatch's /healthz says so (breaker open); once Redis returns it delivers again."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    redis.stop()

    async def health() -> tuple[int, dict]:
        async with stack.client.session.get(f"{stack.stack.dispatch_url}/healthz") as r:
            return r.status, await r.json()

    code, body = await until(health, lambda answer: answer[1]["breakers"]["redis"] != "closed",
                             what="dispatch's Redis breaker to open", timeout=30, every=0.3)
    assert code == 503 and body["redis"] is False
    cluster.start_redis(redis_port)
    ws = await stack.client.connect("vera")
    posted = await stack.client.post_until_accepted({"user_id": "vera", "payload": "back"})
    # Attempts refused with 503 after their MongoDB write may arrive too (after a rebuild): at least once.
    async with asyncio.timeout(scaled(20)):
        while (await next_frame(ws))["id"] != posted["id"]:
            pass
    await ws.close()


async def test_an_ack_for_someone_elses_message_changes_nothing(start_stack) -> None:
    """mallory acks the id of a message for victim: victim still gets it on connect, and the status never lists mallory."""
    stack: RunningStack = start_stack()
    c = stack.client
    _, posted = await c.post({"user_id": "victim", "payload": "private"})
    mallory = await c.connect("mallory")
    await mallory.send(orjson.dumps({"type": "ack", "ids": [posted["id"]]}).decode())
    await mallory.send(orjson.dumps({"type": "ping"}).decode())
    assert (await next_frame(mallory))["type"] == "pong"  # the ack was read and flushed meanwhile
    await asyncio.sleep(scaled(1.5))  # proves an absence: a lifecycle flush window, a phantom row would be written by now
    code, body = await status(stack, posted["id"])
    assert code == 200 and [r["user_id"] for r in body["recipients"]] == ["victim"]
    assert body["recipients"][0]["state"] == "accepted"
    victim = await c.connect("victim")
    assert await receive_ids(victim, 1) == [posted["id"]]
    await mallory.close()
    await victim.close()


async def test_a_post_collect_died_before_handing_over_still_arrives_once(start_stack, cluster: Cluster) -> None:
    """collect SIGKILLed after its insert, while its hand-over waits on a paused Redis: the stored post arrives through
    the reconciler, and the business system's retry with the same Idempotency-Key is answered 202 and stores or
    delivers nothing twice."""
    mongo_port, redis_port = free_port(), free_port()
    mongo, redis_server = cluster.start_ferretdb(mongo_port), cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/", redis_url=cluster.redis_url(redis_port),
                                      HANDOVER_GRACE_SECONDS="1", **FAST)
    c = stack.client
    ws = await c.connect("quinn")
    redis = Redis.from_url(stack.stack.redis_url)
    posts = AsyncMongoClient(stack.stack.mongo_url)[stack.stack.mongo_db]["posts"]
    body, key = {"user_id": "quinn", "payload": "across a crash"}, {"Idempotency-Key": "order-7"}
    mongo.popen.send_signal(signal.SIGSTOP)  # hold collect inside its insert...
    try:
        first_try = asyncio.create_task(c.post(body, headers=key))
        await until(lambda: redis.zcard("handover"), what="collect to record its hand-over intent")  # ...once it did
        [(post, _)] = await redis.zrange("handover", 0, -1, withscores=True)
        redis_server.popen.send_signal(signal.SIGSTOP)  # then hold it before its hand-over
        mongo.popen.send_signal(signal.SIGCONT)
        await until(lambda: posts.find_one({"_id": post.decode()}), lambda doc: doc is not None, what="collect's insert to be done")
        stack.procs["collect"].kill()
        with pytest.raises(aiohttp.ClientError):
            await first_try
    finally:
        mongo.popen.send_signal(signal.SIGCONT)
        redis_server.popen.send_signal(signal.SIGCONT)
    received = await receive_ids(ws, 1, timeout=30)
    assert received[0].startswith(post.decode())
    assert await redis.zcard("handover") == 0

    cluster.procs.remove(stack.procs["collect"])
    stack.procs["collect"] = cluster.start_service("collect", stack.stack)
    code, answer = await c.post(body, headers=key)
    assert (code, answer["id"]) == (202, received[0])
    received += [f["id"] for f in await frames_within(ws, 3.0) if f["type"] == "message"]
    lost, twice = report_scenario("collect SIGKILLed between its insert and its hand-over, then retried", [answer["id"]], received)
    assert (lost, twice) == (0, 0)
    await redis.aclose()
    await posts.database.client.close()
    await ws.close()
