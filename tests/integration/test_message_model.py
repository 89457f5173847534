"""A post's parts keep their own delivery state through the real processes: a part handed over later (scheduled)
neither closes nor shortens what the post's other parts still owe."""

from __future__ import annotations

from shared.message import post_of
from tests.client import Receiver, receive_ids
from tests.conftest import RunningStack
from tests.integration.test_delivery_guarantees import FAST, status
from tests.waits import until


def state_of(body: dict) -> str:
    return body["recipients"][0]["state"]


async def test_a_fired_part_acked_leaves_the_posts_due_part_owed(start_stack, topology: str) -> None:
    """Bob's delayed part of a post fires and is acked; alice, connecting afterwards, still gets the post's due part."""
    stack: RunningStack = start_stack(**FAST)
    bob = Receiver("bob", await stack.client.connect("bob"))
    code, answer = await stack.client.post({"messages": [
        {"user_id": "alice", "payload": "A", "ttl_seconds": 3600},
        {"user_id": "bob", "payload": "B", "delay_seconds": 1, "ttl_seconds": 10}]})
    assert code == 202, answer
    alice_id, bob_id = answer["ids"]
    await bob.received([bob_id], timeout=10)
    await until(lambda: status(stack, bob_id), lambda r: state_of(r[1]) == "acked", what="bob's ack to be recorded")
    ws = await stack.client.connect("alice", node=1)
    assert await receive_ids(ws, 1) == [alice_id]
    await ws.close()
    await bob.close()


async def test_a_short_lived_part_fired_later_does_not_expire_the_posts_long_lived_part(start_stack, topology: str) -> None:
    """A post's part with a 2 s TTL, fired after its long-lived part, expires alone: alice, connecting after it
    expired, still gets her 1-hour message."""
    stack: RunningStack = start_stack(**FAST)
    code, answer = await stack.client.post({"messages": [
        {"user_id": "alice2", "payload": "A", "ttl_seconds": 3600},
        {"user_id": "bob2", "payload": "B", "delay_seconds": 1, "ttl_seconds": 2}]})
    assert code == 202, answer
    alice_id, bob_id = answer["ids"]
    assert post_of(alice_id) == post_of(bob_id)
    await until(lambda: status(stack, bob_id), lambda r: state_of(r[1]) == "expired", what="bob's short part to expire",
                timeout=15)
    ws = await stack.client.connect("alice2")
    assert await receive_ids(ws, 1) == [alice_id]
    await ws.close()
