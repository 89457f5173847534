"""pushcluster.client against the real cluster: send, send_many, publish, broadcast, status, presence, errors, a retried 503."""

from __future__ import annotations

import asyncio
import time

import pytest

from pushcluster.client import AsyncPushClient, PushClient, PushError, RetryPolicy
from tests.client import API_KEY, frames_within, next_frame, receive_ids, subscribe
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled
from tools.cluster import Cluster, free_port


async def test_blocking_client_sends_and_reads_the_status(shared_stack: RunningStack) -> None:
    """PushClient.send and send_many return ids that arrive at the user's socket, and status lists the recipient."""
    ws = await shared_stack.client.connect("lib-user")
    client = PushClient(shared_stack.stack.collect_url, API_KEY)
    one = await asyncio.to_thread(client.send, "lib-user", {"n": 1}, 60)
    many = await asyncio.to_thread(client.send_many, [{"user_id": "lib-user", "payload": n} for n in (2, 3)])
    assert await receive_ids(ws, 3) == [one, *many]
    status = await asyncio.to_thread(client.status, one)
    assert status["id"] == one and status["recipients"][0]["user_id"] == "lib-user"
    await ws.close()


async def test_async_client_sends_and_refuses_bad_input_at_once(shared_stack: RunningStack) -> None:
    """AsyncPushClient delivers; a 422 and a wrong key raise PushError with collect's code, without retrying."""
    ws = await shared_stack.client.connect("lib-async")
    client = AsyncPushClient(shared_stack.stack.collect_url, API_KEY, retry=RetryPolicy(attempts=3, base=scaled(10)))
    try:
        sent = await client.send("lib-async", "hello")
        assert await receive_ids(ws, 1) == [sent]
        with pytest.raises(PushError) as bad:
            await asyncio.wait_for(client.send("has space", 1), scaled(5))  # a retry would wait about twice that
        assert (bad.value.status, bad.value.code) == (422, "invalid")
        with pytest.raises(PushError) as denied:
            await AsyncPushClient(shared_stack.stack.collect_url, "wrong", client.session).status(sent)
        assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    finally:
        await client.close()
    await ws.close()


async def test_a_send_during_a_store_outage_is_retried_until_stored_and_arrives_once(start_stack, cluster: Cluster) -> None:
    """With FerretDB stopped collect answers 503; the client retries with one Idempotency-Key until FerretDB is back,
    and the message arrives exactly once."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/")
    ws = await stack.client.connect("lib-retry")
    mongo.stop()
    assert (await stack.client.post({"user_id": "lib-retry", "payload": "probe"}))[0] == 503
    client = AsyncPushClient(stack.stack.collect_url, API_KEY, retry=RetryPolicy(attempts=40, base=0.2, cap=1.0))
    try:
        sending = asyncio.create_task(client.send("lib-retry", "through the outage"))
        await asyncio.sleep(scaled(2))  # proves an absence: the send does not end while the store is down
        assert not sending.done()
        cluster.start_ferretdb(mongo_port)
        sent = await asyncio.wait_for(sending, scaled(60))
    finally:
        await client.close()
    received = await receive_ids(ws, 1) + [f["id"] for f in await frames_within(ws, 2.0) if f["type"] == "message"]
    lost, twice = report_scenario("client library: send retried through a FerretDB outage", [sent], received)
    assert (lost, twice) == (0, 0)
    await ws.close()


async def test_client_publishes_broadcasts_and_reads_presence(shared_stack: RunningStack) -> None:
    """publish reaches a topic's subscriber, broadcast every socket, presence and topic() count them, and history()
    returns what the topic keeps after an offset."""
    c = shared_stack.client
    listener = await c.connect("lib-listener", node=0, topics=["lib:news"])
    bystander = await c.connect("lib-bystander", node=1)
    await subscribe(listener, ["lib:news"])
    client = AsyncPushClient(shared_stack.stack.collect_url, API_KEY)
    try:
        assert await client.presence(["lib-listener", "lib-bystander", "lib-away"]) == {
            "lib-listener": 1, "lib-bystander": 1, "lib-away": 0}
        assert await client.topic("lib:news", users=True) == {
            "topic": "lib:news", "subscribers": 1, "nodes": 1, "users": ["lib-listener"], "truncated": False}
        published = await client.publish("lib:news", "headline")
        assert (await next_frame(listener))["id"] == published
        everyone = await client.broadcast("to all")
        assert [(await next_frame(ws))["id"] for ws in (listener, bystander)] == [everyone, everyone]
        assert (await client.status(published))["topic"] == "lib:news"
        history = await client.history("lib:news")
        assert [m["id"] for m in history["messages"]] == [published] and history["complete"]
        assert history["offset"] == history["messages"][0]["offset"]
        blocking = PushClient(shared_stack.stack.collect_url, API_KEY)
        assert await asyncio.to_thread(blocking.history, "lib:news", history["offset"]) == {**history, "messages": []}
    finally:
        await client.close()
    await asyncio.gather(listener.close(), bystander.close())


async def test_clients_schedule_and_cancel_messages(shared_stack: RunningStack) -> None:
    """send with delay_seconds or deliver_at holds a message back until due; cancel takes one back before it fires,
    and raises not_found once it fired."""
    ws = await shared_stack.client.connect("lib-later")
    blocking = PushClient(shared_stack.stack.collect_url, API_KEY)
    client = AsyncPushClient(shared_stack.stack.collect_url, API_KEY)
    try:
        dropped = await asyncio.to_thread(blocking.send, "lib-later", "never", delay_seconds=1)
        await asyncio.to_thread(blocking.cancel, dropped)
        kept = await client.send("lib-later", "later", deliver_at=int(time.time() * 1000) + int(scaled(2000)))
        assert await frames_within(ws, 0.5) == []  # a scaled window, shorter than the scaled delay
        assert await receive_ids(ws, 1) == [kept]
        with pytest.raises(PushError) as fired:
            await client.cancel(kept)
        assert (fired.value.status, fired.value.code) == (404, "not_found")
        assert (await client.status(dropped))["recipients"][0]["state"] == "cancelled"
    finally:
        await client.close()
    await ws.close()
