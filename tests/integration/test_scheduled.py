"""Scheduled messages through the real processes: fired once by one of several dispatch instances, never early,
kept across a Redis restart, cancelled while waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from loadtest.report import percentile
from shared.delivery.schedule import FIRING_KEY, SCHEDULE_KEY, sched_key
from shared.model.message import post_of
from tests.client import Receiver, frames_within, subscribe
from tests.conftest import RunningStack, report_scenario
from tests.integration.test_delivery_guarantees import FAST, status
from tests.integration.test_delivery_state import connect_all, connect_until_welcomed
from tests.waits import scaled, until
from tools.cluster import Cluster, free_port

STACK_ENV = {"COLLECT_API_KEYS": "demo:dev-api-key,other:other-api-key"}


def clock_ms() -> int:
    return int(time.time() * 1000)


async def receive_timed(ws: ClientConnection, count: int, timeout: float) -> list[tuple[str, int]]:
    """The ids of the next ``count`` message frames, each with the time (ms since epoch) it arrived."""
    got: list[tuple[str, int]] = []
    async with asyncio.timeout(scaled(timeout)):
        while len(got) < count:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "message":
                got.append((frame["id"], clock_ms()))
    return got


async def post_scheduled(stack: RunningStack, users: list[str], per_user: int, due_at: int, spread_ms: int,
                         per_post: int = 1000) -> dict[str, int]:
    """Post ``per_user`` messages to every user, due from ``due_at`` over ``spread_ms``, in posts of ``per_post``;
    return each message's due time by id."""
    bodies = [{"user_id": u, "payload": n, "deliver_at": due_at + (n * len(users) + k) % spread_ms}
              for n in range(per_user) for k, u in enumerate(users)]
    due: dict[str, int] = {}
    for start in range(0, len(bodies), per_post):
        chunk = bodies[start:start + per_post]
        code, answer = await stack.client.post({"messages": chunk})
        assert code == 202, answer
        due.update((mid, body["deliver_at"]) for mid, body in zip(answer["ids"], chunk))
    return due


def lateness_ms(due: dict[str, int], received: list[tuple[str, int]]) -> list[int]:
    return sorted(at - due[mid] for mid, at in received)


async def fired_per_instance(stack: RunningStack, ports: list[int]) -> list[int]:
    """Each dispatch instance's ``dispatch_scheduled_fired_total`` (a page without it fails, never reads as 0)."""
    return [int(await stack.client.metric(f"http://127.0.0.1:{port}", "dispatch_scheduled_fired_total")) for port in ports]


async def test_three_dispatch_instances_fire_2000_messages_due_in_one_second_once_each_and_never_early(
        start_stack, cluster: Cluster, topology: str) -> None:
    """2,000 messages due within the same second, with 3 dispatch instances claiming: each message is fired by
    exactly one instance and reaches its connected user once, not before its due time."""
    stack: RunningStack = start_stack(FIRE_BATCH="200")
    ports = [stack.stack.dispatch_port]
    for n in (2, 3):
        ports.append(free_port())
        stack.procs[f"dispatch-{n}"] = cluster.start_service("dispatch", stack.stack, ports[-1], DISPATCH_PORT=str(ports[-1]))
    users = [f"sched{i}" for i in range(200)]
    sockets = await connect_all(stack, users)
    due = await post_scheduled(stack, users, 10, clock_ms() + 4000, 1000)
    received = await asyncio.gather(*(receive_timed(sockets[u], 10, timeout=30) for u in users))
    extra = await asyncio.gather(*(frames_within(sockets[u], 0.3) for u in users[:20]))
    got = [r for per_user in received for r in per_user]
    late = lateness_ms(due, got)
    fired = await fired_per_instance(stack, ports)
    lost, twice = report_scenario(
        f"3 dispatch on {topology} Redis, 2,000 due in 1 s: lateness p50/p99/max "
        f"{percentile(late, 0.5)}/{percentile(late, 0.99)}/{late[-1]} ms, fired per instance {fired}",
        list(due), [mid for mid, _ in got])
    assert lost == twice == 0 and not any(extra)
    assert late[0] >= 0, f"a message arrived {-late[0]} ms before its due time"
    assert sum(fired) == 2000, fired
    await asyncio.gather(*(ws.close() for ws in sockets.values()))


async def test_scheduled_messages_survive_redis_restarted_empty_and_still_fire_on_time(start_stack, cluster: Cluster) -> None:
    """500 messages scheduled, then Redis restarted empty: the rebuild puts them back in the schedule from MongoDB
    and every one reaches its user once, none before its due time."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    users = [f"resched{i}" for i in range(50)]
    due = await post_scheduled(stack, users, 10, clock_ms() + 12_000, 1000)
    redis.stop()
    redis = cluster.start_redis(redis_port)
    sockets = await asyncio.gather(*(connect_until_welcomed(stack, u, i % 2) for i, u in enumerate(users)))
    fresh = Redis.from_url(cluster.redis_url(redis_port))
    await until(lambda: fresh.zcard(SCHEDULE_KEY), lambda n: n >= 500, what="the rebuilt schedule to hold all 500", timeout=20)
    await fresh.aclose()
    received = await asyncio.gather(*(receive_timed(ws, 10, timeout=40) for ws in sockets))
    got = [r for per_user in received for r in per_user]
    late = lateness_ms(due, got)
    lost, twice = report_scenario(
        f"Redis restarted empty, 500 scheduled: lateness p50/p99 {percentile(late, 0.5)}/{percentile(late, 0.99)} ms",
        list(due), [mid for mid, _ in got])
    assert lost == twice == 0
    assert late[0] >= 0, f"a message arrived {-late[0]} ms before its due time"
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_a_cancelled_message_never_arrives_and_its_status_says_cancelled(any_shared_stack: RunningStack) -> None:
    """Cancelled before its due time, a message reaches nobody and its status shows scheduled then cancelled; the
    message posted beside it arrives, and cancelling it after it fired, twice, or with another key is 404."""
    c = any_shared_stack.client
    ws = await c.connect("later")
    deliver_at = clock_ms() + 2500
    _, answer = await c.post({"messages": [{"user_id": "later", "payload": n, "deliver_at": deliver_at} for n in range(2)]})
    dropped, kept = answer["ids"]
    code, before = await status(any_shared_stack, dropped)
    assert code == 200 and before["recipients"][0]["state"] == "scheduled"
    assert before["recipients"][0]["scheduled_at"] == deliver_at
    assert (await c.cancel(dropped, api_key="other-api-key"))[0] == 404
    assert await c.cancel(dropped) == (200, {"id": dropped, "state": "cancelled"})
    assert (await c.cancel(dropped))[0] == 404
    ((mid, at),) = await receive_timed(ws, 1, timeout=10)
    assert mid == kept and at >= deliver_at
    assert [f for f in await frames_within(ws, 1.0) if f["type"] == "message"] == []
    code, after = await status(any_shared_stack, dropped)
    assert after["recipients"][0]["state"] == "cancelled" and "dispatched_at" not in after["recipients"][0]
    assert (await c.cancel(kept))[0] == 404, "a message that fired cannot be cancelled"
    assert (await c.cancel("0123456789abcdef0000"))[0] == 404
    await ws.close()


async def test_a_fired_message_for_an_offline_user_shows_due_with_the_time_it_fired(any_shared_stack: RunningStack) -> None:
    """Once fired, a scheduled message whose recipient is offline shows ``due`` (handed over, no node holds the
    user), with ``due_at`` at or after its due time; when the user connects it moves on to delivered."""
    c = any_shared_stack.client
    deliver_at = clock_ms() + 1000
    code, answer = await c.post({"user_id": "due-offline", "payload": "due", "deliver_at": deliver_at})
    assert code == 202, answer

    async def row() -> dict[str, Any]:
        return dict((await status(any_shared_stack, answer["id"]))[1]["recipients"][0])

    due = await until(row, lambda r: r["state"] == "due", what="the status to show due", timeout=15, every=0.3)
    assert due["scheduled_at"] == deliver_at <= due["due_at"] and "dispatched_at" not in due
    ws = await c.connect("due-offline")
    await until(row, lambda r: r["state"] == "delivered", what="the status to show delivered", timeout=15, every=0.3)
    await ws.close()


async def test_a_scheduled_broadcast_waits_for_its_due_time_and_a_cancelled_one_never_goes(shared_stack: RunningStack) -> None:
    """A broadcast scheduled 2 s out reaches a connected socket only then, once; a cancelled one never, and its
    status shows cancelled."""
    c = shared_stack.client
    ws = await c.connect("everyone")
    earliest = clock_ms() + 2000  # collect's clock reads later than this before it adds the delay
    _, answer = await c.post({"messages": [{"broadcast": True, "payload": n, "delay_seconds": 2} for n in range(2)]})
    kept, dropped = answer["ids"]
    assert (await c.cancel(dropped))[0] == 200
    ((mid, at),) = await receive_timed(ws, 1, timeout=10)
    assert mid == kept and at >= earliest
    assert [f for f in await frames_within(ws, 1.0) if f["type"] == "message"] == []
    code, after = await status(shared_stack, dropped)
    assert code == 200 and "cancelled" in after["stages"] and after["nodes"] == 0
    await ws.close()


async def test_a_user_connecting_before_the_due_time_is_not_replayed_the_message_early(shared_stack: RunningStack) -> None:
    """A scheduled message is in no inbox before it is due: a user welcomed (so replayed) before the due time gets
    nothing on connect, then the message live once due."""
    c = shared_stack.client
    deliver_at = clock_ms() + int(scaled(2500))  # the connect below has to finish before it for the test to prove anything
    code, answer = await c.post({"user_id": "early", "payload": "wait", "deliver_at": deliver_at})
    assert code == 202, answer
    ws = await c.connect("early")
    welcomed = clock_ms()  # the welcome came before this, and the replay runs right after the welcome
    assert welcomed < deliver_at, f"welcomed {welcomed - deliver_at} ms after the due time: the replay could not be early"
    ((mid, at),) = await receive_timed(ws, 1, timeout=10)
    assert mid == answer["id"] and welcomed < deliver_at <= at
    await ws.close()


async def test_a_claim_left_by_a_dead_instance_is_fired_after_the_grace(start_stack) -> None:
    """A message an instance claimed and never fired (it died between its claim and its MULTI: the id sits in
    schedule:firing) is claimed again once FIRE_GRACE_MS passed, and arrives once."""
    stack: RunningStack = start_stack(FIRE_GRACE_MS="1500")
    ws = await stack.client.connect("orphan")
    _, answer = await stack.client.post({"user_id": "orphan", "payload": 1, "delay_seconds": 30})
    redis = Redis.from_url(stack.stack.redis_url)
    claimed_at = clock_ms()
    async with redis.pipeline(transaction=True) as pipe:  # what the dead instance's claim script did
        pipe.zrem(SCHEDULE_KEY, answer["id"])
        pipe.zadd(FIRING_KEY, {answer["id"]: claimed_at})
        assert await pipe.execute() == [1, 1]
    ((mid, at),) = await receive_timed(ws, 1, timeout=10)
    assert mid == answer["id"] and at >= claimed_at + 1500
    assert [f for f in await frames_within(ws, 1.0) if f["type"] == "message"] == []
    assert await redis.zcard(FIRING_KEY) == 0 and not await redis.exists(sched_key(post_of(mid)))
    await redis.aclose()
    await ws.close()


async def test_the_rebuild_after_redis_came_back_empty_does_not_resurrect_cancelled_messages(start_stack,
                                                                                             cluster: Cluster) -> None:
    """Messages cancelled before Redis restarted empty stay cancelled through the rebuild, whether they fell due during
    the outage or after it, while their uncancelled siblings still arrive."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    c = stack.client
    soon, later = clock_ms() + int(scaled(3000)), clock_ms() + int(scaled(10_000))
    code, answer = await c.post({"messages": [{"user_id": "lazarus", "payload": n, "deliver_at": due}
                                              for n, due in enumerate([soon, soon, later, later])]})
    assert code == 202, answer
    cancelled_soon, kept_soon, cancelled_later, kept_later = answer["ids"]
    for mid in (cancelled_soon, cancelled_later):
        assert await c.cancel(mid) == (200, {"id": mid, "state": "cancelled"})
    rebuilds = await c.metric(stack.stack.dispatch_url, "dispatch_rebuilds_total")
    redis.stop()
    await until(clock_ms, lambda now: now > soon + 200, what="the first pair to fall due while Redis is down", timeout=10)
    redis = cluster.start_redis(redis_port)
    await until(lambda: c.metric(stack.stack.dispatch_url, "dispatch_rebuilds_total"), lambda n: n > rebuilds,
                what="dispatch to rebuild the emptied Redis", timeout=30)
    fresh = Redis.from_url(cluster.redis_url(redis_port))
    scores = [await fresh.zscore(SCHEDULE_KEY, mid) for mid in (cancelled_later, kept_later)]
    await fresh.aclose()
    assert scores[0] is None and scores[1] == later, f"the rebuilt schedule: cancelled={scores[0]}, kept={scores[1]}"
    ws = await connect_until_welcomed(stack, "lazarus", 0)
    assert clock_ms() < later, "connected before the second pair fell due, so it arrives live"
    got = await receive_timed(ws, 2, timeout=30)
    assert [mid for mid, _ in got] == [kept_soon, kept_later] and got[1][1] >= later, got
    assert [f for f in await frames_within(ws, 1.5) if f["type"] == "message"] == [], "a cancelled message came back"
    for mid in (cancelled_soon, cancelled_later):
        code, body = await c.status(mid)
        assert code == 200 and body["recipients"][0]["state"] == "cancelled", body
    await ws.close()


async def test_a_cancel_racing_the_claim_either_wins_and_nothing_arrives_or_loses_with_404_and_it_arrives_once(
        start_stack) -> None:
    """60 messages each cancelled around its own due time (from 100 ms before to 300 ms after): a 200 means it never
    arrives and its status says cancelled, a 404 that it arrives exactly once; no other answer."""
    stack: RunningStack = start_stack()
    c = stack.client
    reader = Receiver("racer", await c.connect("racer"))
    start = clock_ms() + int(scaled(2000))
    dues = [start + 50 * n for n in range(60)]
    code, answer = await c.post({"messages": [{"user_id": "racer", "payload": n, "deliver_at": due} for n, due in enumerate(dues)]})
    assert code == 202, answer
    loop = asyncio.get_running_loop()
    offset = loop.time() * 1000 - clock_ms()  # loop time (ms) = epoch ms + offset

    async def cancel_at(mid: str, at_ms: int) -> tuple[str, int]:
        await asyncio.sleep(max(0.0, (at_ms + offset) / 1000 - loop.time()))  # a moment to act at, not a wait for a condition
        code, body = await c.cancel(mid)
        assert code in (200, 404), (code, body)
        return mid, code

    answers = dict(await asyncio.gather(*(cancel_at(mid, due - 100 + 400 * n // 60)
                                          for n, (mid, due) in enumerate(zip(answer["ids"], dues)))))
    won = [mid for mid, code in answers.items() if code == 200]
    lost_race = [mid for mid, code in answers.items() if code == 404]
    await reader.received(lost_race, timeout=20)
    await asyncio.sleep(scaled(1.5))  # a window: a cancelled message, or a second copy, would arrive within it
    _, twice = report_scenario(f"cancel racing the claim: {len(won)} cancelled (200), {len(lost_race)} fired (404)",
                               lost_race, reader.ids)
    assert not set(won) & set(reader.ids), f"cancelled with 200 yet delivered: {sorted(set(won) & set(reader.ids))}"
    assert twice == 0 and sorted(reader.ids) == sorted(lost_race), reader.ids
    for mid in won:
        code, body = await c.status(mid)
        assert code == 200 and body["recipients"][0]["state"] == "cancelled", body
    await reader.close()


async def test_scheduled_topic_and_user_ids_messages_reach_their_subscribers_and_recipients_at_the_due_time_not_before(
        shared_stack: RunningStack) -> None:
    """A topic message and a ``user_ids`` message due 2.5 s out reach each subscriber and each recipient, on both
    nodes, once, no earlier than their due time, and nobody else."""
    c = shared_stack.client
    subscribers = [await c.connect(f"sched-sub{i}", node=i % 2, topics=["sched-news"]) for i in range(2)]
    for ws in subscribers:
        assert (await subscribe(ws, ["sched-news"]))[0]["topics"] == ["sched-news"]
    recipients = [await c.connect(f"sched-to{i}", node=i % 2) for i in range(2)]
    deliver_at = clock_ms() + int(scaled(2500))
    code, answer = await c.post({"messages": [
        {"topic": "sched-news", "payload": "topic", "deliver_at": deliver_at},
        {"user_ids": ["sched-to0", "sched-to1"], "payload": "users", "deliver_at": deliver_at}]})
    assert code == 202, answer
    topic_id, users_id = answer["ids"]
    posted_before = clock_ms()
    assert posted_before < deliver_at, "posted before the due time, so an early delivery could be seen"
    for sockets, expected in ((subscribers, topic_id), (recipients, users_id)):
        for ws in sockets:
            ((mid, at),) = await receive_timed(ws, 1, timeout=10)
            assert mid == expected and at >= deliver_at, (mid, at - deliver_at)
    extra = await asyncio.gather(*(frames_within(ws, 1.0) for ws in subscribers + recipients))
    assert [f for frames in extra for f in frames if f["type"] == "message"] == [], "a second copy or a stray message"
    await asyncio.gather(*(ws.close() for ws in subscribers + recipients))
