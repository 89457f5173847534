"""A cancel answered 200 wins over every path that puts a scheduled message back: the reconciler finishing a hand-over
a refused Idempotency-Key retry left behind (found by the chaos soak, seed 1705), and the rebuild after Redis came
back empty reading the message from MongoDB after the cancel took it out of the schedule. An ack wins the same way: a
message fired, delivered and acked is not fired again by that reconciler (a cluster soak, seed 20261207)."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from shared.delivery.handover import HANDOVER_KEY
from shared.delivery.schedule import FIRING_KEY, SCHEDULE_KEY
from tests.client import ClusterClient, next_frame, subscribe
from tests.conftest import RunningStack
from tests.integration.test_delivery_guarantees import FAST
from tests.waits import scaled, until
from tools.cluster import Cluster, free_port


def clock_ms() -> int:
    return int(time.time() * 1000)


async def cancel_until_answered(c: ClusterClient, message_id: str) -> tuple[int, Any]:
    """DELETE until an answer other than 503 (the store's breaker closing again after an outage)."""
    return await until(lambda: c.cancel(message_id), lambda answer: answer[0] != 503,
                       what=f"DELETE {message_id} answered other than 503", timeout=30)


async def messages_until(ws: ClientConnection, sentinel: str) -> list[str]:
    """The ids of the message frames ``ws`` reads up to and including ``sentinel``."""
    seen: list[str] = []
    while sentinel not in seen:
        frame = await next_frame(ws, timeout=20)
        if frame["type"] == "message":
            seen.append(frame["id"])
    return seen


async def test_a_cancelled_message_is_not_sent_by_the_hand_over_a_refused_retry_left_behind(start_stack,
                                                                                            cluster: Cluster) -> None:
    """A scheduled topic message posted with an Idempotency-Key (202), retried while FerretDB is down (503: its intent
    stays in Redis), then cancelled (200): the reconciler finishing that intent's hand-over never sends it."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/", HANDOVER_GRACE_SECONDS="1", **FAST)
    c = stack.client
    ws = await c.connect("revenant", topics=["revenant-news"])
    assert (await subscribe(ws, ["revenant-news"]))[0]["topics"] == ["revenant-news"]
    delay = int(scaled(12))
    body = {"topic": "revenant-news", "payload": "cancelled", "delay_seconds": delay}
    key = {"Idempotency-Key": f"revenant-{clock_ms()}"}
    due = clock_ms() + delay * 1000 + 500
    code, answer = await c.post(body, headers=key)
    assert code == 202, answer
    cancelled = answer["id"]
    mongo.stop()
    assert (await c.post(body, headers=key))[0] == 503
    mongo = cluster.start_ferretdb(mongo_port)
    assert await cancel_until_answered(c, cancelled) == (200, {"id": cancelled, "state": "cancelled"})
    redis = Redis.from_url(stack.stack.redis_url)
    await until(lambda: redis.zcard(HANDOVER_KEY), lambda n: n == 0, what="the reconciler to finish the left hand-over",
                timeout=30)
    await redis.aclose()
    await until(clock_ms, lambda now: now > due + 1000, what="the cancelled message's due time to pass", timeout=30)
    code, sentinel = await c.post({"topic": "revenant-news", "payload": "after"})
    assert code == 202, sentinel
    assert await messages_until(ws, sentinel["id"]) == [sentinel["id"]], "a message cancelled with 200 was sent"
    await ws.close()


async def test_an_acked_scheduled_message_is_not_fired_again_by_the_hand_over_a_refused_retry_left_behind(
        start_stack, cluster: Cluster) -> None:
    """A scheduled message posted with an Idempotency-Key (202) fires and is acked; a retry of the post while FerretDB
    is down (503) leaves its intent in Redis: the reconciler finishing that hand-over sends it to no later socket."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/", HANDOVER_GRACE_SECONDS="1", **FAST)
    c = stack.client
    ws = await c.connect("acked-once")
    body, key = {"user_id": "acked-once", "payload": "once", "delay_seconds": 1}, {"Idempotency-Key": f"once-{clock_ms()}"}
    code, answer = await c.post(body, headers=key)
    assert code == 202, answer
    fired = answer["id"]
    assert (await next_frame(ws, timeout=20))["id"] == fired
    await ws.send(f'{{"type": "ack", "id": "{fired}"}}')
    await until(lambda: c.status(fired), lambda s: s[1]["recipients"][0]["state"] == "acked", what="the ack on record")
    await ws.close()  # a socket of its own remembers what it was sent: a later one (a reload) is what the soak saw
    mongo.stop()
    assert (await c.post(body, headers=key))[0] == 503
    mongo = cluster.start_ferretdb(mongo_port)
    redis = Redis.from_url(stack.stack.redis_url)
    await until(lambda: redis.zcard(HANDOVER_KEY), lambda n: n == 0, what="the reconciler to finish the left hand-over",
                timeout=30)
    await until(lambda: redis.zcard(SCHEDULE_KEY), lambda n: n == 0, what="nothing waiting in the schedule")
    await until(lambda: redis.zcard(FIRING_KEY), lambda n: n == 0, what="nothing being fired")
    await redis.aclose()
    ws = await c.connect("acked-once")
    code, sentinel = await until(lambda: c.post({"user_id": "acked-once", "payload": "after"}),
                                 lambda answer: answer[0] == 202, what="a post accepted after the outage", timeout=30)
    assert await messages_until(ws, sentinel["id"]) == [sentinel["id"]], "a message acked was fired again"
    await ws.close()
