"""Guarantees a code read found broken (issue 17, part 5), each proven through the real processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from pathlib import Path

import bson
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from shared.cluster.routes import NODES_KEY
from shared.cluster.topic_holders import topic_key
from shared.delivery.schedule import PAUSED_KEY, SCHEDULE_KEY, Schedule, sched_key
from shared.delivery.store import event_documents
from shared.model.message import index_of, post_of
from tests.client import frames_within, subscribe
from tests.conftest import RunningStack
from tests.integration.test_delivery_guarantees import FAST
from tests.waits import scaled, until
from tools.cluster import Cluster, free_port

ROOT = Path(__file__).resolve().parents[2]
SKEWED_CLOCK = Path(__file__).resolve().parent / "skewed_clock"  # a sitecustomize shifting time.time by CLOCK_SKEW_MS


def clock_ms() -> int:
    return int(time.time() * 1000)


async def next_message(ws: ClientConnection, timeout: float) -> tuple[dict, int]:
    """The next message frame and when it arrived (ms since epoch)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "message":
                return frame, clock_ms()


def start_skewed_dispatch(stack: RunningStack, cluster: Cluster, skew_ms: int) -> None:
    """One more dispatch instance, on the same Redis and MongoDB, whose wall clock reads ``skew_ms`` ahead."""
    port = free_port()
    path = os.pathsep.join([str(SKEWED_CLOCK), str(ROOT), os.environ.get("PYTHONPATH", "")])
    stack.procs["dispatch-skewed"] = cluster.start_service("dispatch", stack.stack, port, DISPATCH_PORT=str(port),
                                                           PYTHONPATH=path, CLOCK_SKEW_MS=str(skew_ms))


async def test_a_dispatch_whose_clock_runs_ahead_does_not_fire_a_scheduled_message_early(start_stack, cluster: Cluster,
                                                                                        topology: str) -> None:
    """With a second dispatch instance whose clock reads 20 s ahead, a message due in a few seconds still arrives at
    its due time, not before: due times are compared on Redis's clock, not each instance's."""
    stack: RunningStack = start_stack()
    start_skewed_dispatch(stack, cluster, 20_000)
    ws = await stack.client.connect("punctual")
    deliver_at = clock_ms() + int(scaled(4000))
    code, answer = await stack.client.post({"user_id": "punctual", "payload": "on time", "deliver_at": deliver_at})
    assert code == 202, answer
    frame, at = await next_message(ws, timeout=15)
    assert frame["id"] == answer["id"]
    assert at >= deliver_at, f"arrived {deliver_at - at} ms before its due time"
    await ws.close()


def user_names(count: int) -> list[str]:
    """``count`` distinct user ids, as short as user ids get (so a message's cancel record is as large as can be)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    names: list[str] = []
    width = 1
    while len(names) < count:
        names += ["".join(alphabet[n // len(alphabet) ** k % len(alphabet)] for k in range(width))
                  for n in range(len(alphabet) ** width)]
        width += 1
    return names[:count]


async def test_a_cancel_the_store_refuses_answers_503_and_the_message_stays_scheduled(start_stack) -> None:
    """A cancel whose record MongoDB cannot take (a message to 360,000 recipients: a row each passes the 16 MiB
    document limit) answers 503, never 500, and the message is back in the schedule with its due time and
    recipients."""
    recipients = 360_000
    stack: RunningStack = start_stack(MAX_RECIPIENTS=str(recipients), MAX_DELIVERIES=str(recipients),
                                      MAX_BODY_BYTES=str(8 * 1024 * 1024))
    deliver_at = clock_ms() + 3_600_000
    users = user_names(recipients)
    code, answer = await stack.client.post({"user_ids": users, "payload": "to everyone", "deliver_at": deliver_at})
    assert code == 202, answer
    mid = answer["id"]
    record = event_documents({(mid, u): {"cancelled": deliver_at} for u in users}, dt.datetime.now(dt.UTC))[0]
    assert len(bson.encode(record)) > 16 * 1024 * 1024, "the premise: the cancel record passes MongoDB's limit"
    for _ in range(2):  # refused each time, and each time put back
        code, body = await stack.client.cancel(mid)
        assert code == 503 and body["error"]["code"] == "unavailable", (code, body)
        assert "still scheduled" in body["error"]["message"], body
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        assert await redis.zscore(SCHEDULE_KEY, mid) == deliver_at
        held = await redis.hget(sched_key(post_of(mid)), f"u{index_of(mid)}")
        assert held is not None and held.decode().split(",") == users
    finally:
        await redis.aclose()


async def test_a_cancel_undone_while_mongodb_is_down_keeps_the_message_whole_and_it_still_arrives(
        start_stack, cluster: Cluster) -> None:
    """With MongoDB down a cancel answers 503 and puts the message back as it was, its high priority included, and
    it still reaches its user at its due time."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/")
    ws = await stack.client.connect("kept")
    deliver_at = clock_ms() + int(scaled(6000))
    code, answer = await stack.client.post({"user_id": "kept", "payload": "urgent", "priority": "high",
                                            "deliver_at": deliver_at})
    assert code == 202, answer
    mid = answer["id"]
    mongo.stop()
    code, body = await stack.client.cancel(mid)
    assert code == 503, (code, body)
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        assert await redis.zscore(SCHEDULE_KEY, mid) == deliver_at
        assert await redis.hget(sched_key(post_of(mid)), f"r{index_of(mid)}") == b"high", "put back without its priority"
    finally:
        await redis.aclose()
    assert "still scheduled" in body["error"]["message"], body
    frame, at = await next_message(ws, timeout=20)
    assert frame["id"] == mid and at >= deliver_at
    await ws.close()


async def test_scheduled_topic_and_broadcast_messages_due_while_redis_was_down_fire_after_the_rebuild(
        start_stack, cluster: Cluster) -> None:
    """A scheduled topic message and a broadcast that fell due while Redis was down (and empty after) are fired once
    the rebuild is done and reach the subscribed socket; a scheduled topic message that fired before the outage is
    not fired again."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    c, dispatch_url = stack.client, stack.stack.dispatch_url
    ws = await c.connect("listener", topics=["rebuilt-news"])
    assert (await subscribe(ws, ["rebuilt-news"]))[0]["topics"] == ["rebuilt-news"]
    code, early = await c.post({"topic": "rebuilt-news", "payload": "before the outage", "delay_seconds": 1})
    assert code == 202, early
    frame, _ = await next_message(ws, timeout=10)
    assert frame["id"] == early["id"]
    soon = clock_ms() + int(scaled(2000))
    code, answer = await c.post({"messages": [{"topic": "rebuilt-news", "payload": "topic", "deliver_at": soon},
                                              {"broadcast": True, "payload": "everyone", "deliver_at": soon}]})
    assert code == 202, answer
    await asyncio.sleep(scaled(1.2))  # a window for the early message's node row to be flushed to MongoDB (once a second)
    fired = await c.metric(dispatch_url, "dispatch_scheduled_fired_total")
    rebuilds = await c.metric(dispatch_url, "dispatch_rebuilds_total")
    dispatch = stack.procs["dispatch"]
    redis.stop()
    dispatch.popen.send_signal(signal.SIGSTOP)  # no rebuild until the nodes have registered again (below)
    try:
        await until(clock_ms, lambda now: now > soon + 200, what="both messages to fall due while Redis is down", timeout=10)
        redis = cluster.start_redis(redis_port)
        fresh = Redis.from_url(cluster.redis_url(redis_port))
        try:
            await until(lambda: fresh.scard(NODES_KEY), lambda n: n >= 2, what="both push nodes' cards back", timeout=20)
            await until(lambda: fresh.hlen(topic_key("rebuilt-news")), what="the node to count its subscriber again", timeout=20)
        finally:
            await fresh.aclose()
    finally:
        dispatch.popen.send_signal(signal.SIGCONT)
    await until(lambda: c.metric(dispatch_url, "dispatch_rebuilds_total"), lambda n: n > rebuilds,
                what="dispatch to rebuild the emptied Redis", timeout=30)
    got = [(await next_message(ws, timeout=20))[0]["id"] for _ in range(2)]
    assert sorted(got) == sorted(answer["ids"]), got
    assert [f for f in await frames_within(ws, 1.5) if f["type"] == "message"] == [], "a message came twice"
    assert await c.metric(dispatch_url, "dispatch_scheduled_fired_total") == fired + 2, "fired again: the early one too"
    await ws.close()


async def test_a_cancel_retried_after_its_reply_was_lost_gets_the_same_answer_not_a_404(start_stack) -> None:
    """The cancel script run twice under one token, as the Redis client's retry does after a dropped reply, answers
    the cancelled message both times (whole, priority included), so collect records the cancel instead of answering
    404 for a message it had just taken out; a new cancel finds nothing waiting."""
    stack: RunningStack = start_stack()
    code, answer = await stack.client.post({"user_id": "twice", "payload": 1, "priority": "low", "delay_seconds": 3600})
    assert code == 202, answer
    mid = answer["id"]
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        sender = await redis.hget(sched_key(post_of(mid)), "s")
        assert sender is not None
        schedule = Schedule(redis)
        first = await schedule.cancel(mid, sender.decode(), token="one-request")
        again = await schedule.cancel(mid, sender.decode(), token="one-request")
        assert first is not None and again == first and first.message.priority.value == "low", (first, again)
        assert await schedule.cancel(mid, sender.decode()) is None
        assert await redis.zscore(SCHEDULE_KEY, mid) is None
    finally:
        await redis.aclose()


async def test_a_scheduled_message_due_during_a_rebuild_that_the_schedule_still_holds_is_delivered_once(start_stack) -> None:
    """When the delivery state is lost but the schedule is not (a Redis Cluster master with the inbox buckets restarted
    empty, the schedule's master did not), a message that fell due meanwhile is opened by the rebuild and taken out of
    the schedule: acked once, it never fires again (cluster soak seed 1714: four acked deliveries came back)."""
    stack: RunningStack = start_stack(**FAST)
    c, dispatch_url = stack.client, stack.stack.dispatch_url
    ws = await c.connect("patient")
    deliver_at = clock_ms() + int(scaled(1500))
    code, answer = await c.post({"user_id": "patient", "payload": "due while the state is rebuilt", "deliver_at": deliver_at})
    assert code == 202, answer
    mid, rebuilds = answer["id"], await c.metric(dispatch_url, "dispatch_rebuilds_total")
    fired = await c.metric(dispatch_url, "dispatch_scheduled_fired_total")
    redis = Redis.from_url(stack.stack.redis_url)
    dispatch = stack.procs["dispatch"]
    dispatch.popen.send_signal(signal.SIGSTOP)  # nothing fires: the message falls due still in the schedule
    try:
        await until(clock_ms, lambda now: now > deliver_at + 200, what="the message to fall due", timeout=10)
        assert await redis.zscore(SCHEDULE_KEY, mid) == deliver_at
        await redis.set(PAUSED_KEY, 1, px=30_000)  # firing waits for the rebuild, as it would for a rebuild under way
        lost = [key async for key in redis.scan_iter("state:epoch:*")]
        assert lost and await redis.delete(*lost) == len(lost)  # the delivery state is incomplete: dispatch rebuilds
    finally:
        dispatch.popen.send_signal(signal.SIGCONT)
    try:
        await until(lambda: c.metric(dispatch_url, "dispatch_rebuilds_total"), lambda n: n > rebuilds,
                    what="dispatch to rebuild the state", timeout=30)
        frame, _ = await next_message(ws, timeout=20)
        assert frame["id"] == mid
        await ws.send(orjson.dumps({"type": "ack", "ids": [mid]}).decode())
        assert [f for f in await frames_within(ws, scaled(3)) if f["type"] == "message"] == [], "fired again after the ack"
        assert await redis.zscore(SCHEDULE_KEY, mid) is None
        assert await c.metric(dispatch_url, "dispatch_scheduled_fired_total") == fired, "fired besides being reopened"
    finally:
        await redis.aclose()
    await ws.close()
