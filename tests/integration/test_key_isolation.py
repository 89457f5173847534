"""One business system's API key cannot read or reach another's users, topics, messages or webhooks."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.client import subscribe
from tests.conftest import RunningStack
from tests.waits import until

SHOP, BILLING = "shop-key-for-tests", "billing-key-for-tests"
SCOPES = {"shop": {"users": ["shop-"], "topics": ["shop"]}, "billing": {"users": ["bill-"], "topics": ["billing"]}}


@pytest.fixture
def scoped(start_stack) -> RunningStack:
    return start_stack(nodes=1, COLLECT_API_KEYS=f"shop:{SHOP},billing:{BILLING}", COLLECT_API_SCOPES=orjson.dumps(SCOPES).decode())


async def call(stack: RunningStack, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    async with stack.client.session.request(method, f"{stack.stack.collect_url}{path}", json=body,
                                            headers={"Authorization": f"Bearer {key}"}) as answer:
        return answer.status, await answer.json(content_type=None)


async def refused(stack: RunningStack, key: str, method: str, path: str, body: Any = None) -> dict[str, str]:
    """The headers of a call that must be refused with 429 ``rate_limited``."""
    async with stack.client.session.request(method, f"{stack.stack.collect_url}{path}", json=body,
                                            headers={"Authorization": f"Bearer {key}"}) as answer:
        assert answer.status == 429, await answer.text()
        assert (await answer.json())["error"]["code"] == "rate_limited"
        return dict(answer.headers)


async def test_a_key_posts_only_to_its_own_users_and_topics_and_cannot_broadcast(scoped: RunningStack) -> None:
    """shop posts to shop- users and shop topics (202); a post naming a bill- user, a billing topic or a broadcast is
    404 as a whole, and nothing of it reaches anyone."""
    billed = await scoped.client.connect("bill-1")
    assert (await call(scoped, "POST", "/v1/messages", SHOP, {"user_ids": ["shop-1", "shop-2"], "payload": 1}))[0] == 202
    assert (await call(scoped, "POST", "/v1/messages", SHOP, {"topic": "shop:sale", "payload": 2}))[0] == 202
    for body in ({"user_id": "bill-1", "payload": "x"}, {"topic": "billing:due", "payload": "x"}, {"broadcast": True, "payload": "x"},
                 {"messages": [{"user_id": "shop-1", "payload": "x"}, {"user_id": "bill-1", "payload": "x"}]}):
        code, answer = await call(scoped, "POST", "/v1/messages", SHOP, body)
        assert code == 404 and answer["error"]["code"] == "not_found", (body, answer)
    code, posted = await call(scoped, "POST", "/v1/messages", BILLING, {"user_id": "bill-1", "payload": "own"})
    assert code == 202
    frame = orjson.loads(await asyncio.wait_for(billed.recv(), 10))
    assert (frame["id"], frame["payload"]) == (posted["id"], "own")  # the refused posts never arrived before it
    await billed.close()


async def test_a_key_reads_no_presence_or_topic_outside_its_scope(scoped: RunningStack) -> None:
    """shop's presence and topic queries about bill- users and billing topics are 404; a shared topic in its scope
    lists only its own users."""
    c = scoped.client
    shopper = await c.connect("shop-1", topics=["shop:*", "billing:*"])
    biller = await c.connect("bill-1", topics=["shop:*", "billing:*"])
    await asyncio.gather(subscribe(shopper, ["shop:sale", "billing:due"]), subscribe(biller, ["shop:sale", "billing:due"]))
    for method, path, body in [("GET", "/v1/presence/bill-1", None), ("POST", "/v1/presence", {"user_ids": ["shop-1", "bill-1"]}),
                               ("GET", "/v1/topics/billing:due", None), ("GET", "/v1/topics/billing:due?users=1", None)]:
        code, answer = await call(scoped, method, path, SHOP, body)
        assert code == 404, (path, answer)
    code, presence = await call(scoped, "GET", "/v1/presence/shop-1", SHOP)
    assert code == 200 and presence["online"]
    code, topic = await call(scoped, "GET", "/v1/topics/shop:sale?users=1", SHOP)
    assert code == 200 and topic["users"] == ["shop-1"], topic
    code, topic = await call(scoped, "GET", "/v1/topics/billing:due?users=1", BILLING)
    assert code == 200 and topic["users"] == ["bill-1"], topic
    await asyncio.gather(shopper.close(), biller.close())


async def test_a_key_reads_no_topic_history_outside_its_scope(scoped: RunningStack) -> None:
    """shop asking for a billing topic's history is 404 (with or without since and limit) while billing gets that
    history, and shop gets its own topic's."""
    code, posted = await call(scoped, "POST", "/v1/messages", BILLING, {"topic": "billing:invoices", "payload": "due"})
    assert code == 202, posted
    code, own = await call(scoped, "POST", "/v1/messages", SHOP, {"topic": "shop:sale", "payload": "cheap"})
    assert code == 202, own

    async def history(key: str, topic: str) -> tuple[int, Any]:
        return await call(scoped, "GET", f"/v1/topics/{topic}/history", key)

    code, kept = await until(lambda: history(BILLING, "billing:invoices"), lambda a: a[0] == 200 and a[1]["messages"],
                             what="billing's message in its topic's history")
    assert [(m["id"], m["payload"]) for m in kept["messages"]] == [(posted["id"], "due")] and kept["complete"], kept
    for path in ("/v1/topics/billing:invoices/history", "/v1/topics/billing:invoices/history?since=0&limit=10",
                 "/v1/topics/billing/history", "/v1/topics/*/history"):
        code, answer = await call(scoped, "GET", path, SHOP)
        assert code == 404 and answer["error"]["code"] == "not_found", (path, answer)
        assert "due" not in orjson.dumps(answer).decode(), answer
    code, mine = await until(lambda: history(SHOP, "shop:sale"), lambda a: a[0] == 200 and a[1]["messages"],
                             what="shop's message in its topic's history")
    assert [m["id"] for m in mine["messages"]] == [own["id"]], mine


async def test_a_key_cannot_see_or_change_another_keys_messages_or_webhooks(scoped: RunningStack) -> None:
    """billing's message status, cancel, webhook endpoint and its failures, rotate and delete are 404 to shop, and
    shop's webhook list does not show billing's endpoint."""
    code, posted = await call(scoped, "POST", "/v1/messages", BILLING, {"user_id": "bill-2", "payload": "p", "delay_seconds": 600})
    assert code == 202
    code, endpoint = await call(scoped, "POST", "/v1/webhooks", BILLING, {"url": "http://127.0.0.1:9/hook", "events": ["message.acked"]})
    assert code == 201, endpoint
    mid, eid = posted["id"], endpoint["id"]
    for method, path in [("GET", f"/v1/messages/{mid}"), ("DELETE", f"/v1/messages/{mid}"), ("GET", f"/v1/webhooks/{eid}/failures"),
                         ("POST", f"/v1/webhooks/{eid}/rotate"), ("POST", f"/v1/webhooks/{eid}/replay"), ("DELETE", f"/v1/webhooks/{eid}")]:
        assert (await call(scoped, method, path, SHOP))[0] == 404, (method, path)
    assert (await call(scoped, "GET", "/v1/webhooks", SHOP)) == (200, {"webhooks": []})
    assert (await call(scoped, "GET", f"/v1/messages/{mid}", BILLING))[0] == 200
    assert [e["id"] for e in (await call(scoped, "GET", "/v1/webhooks", BILLING))[1]["webhooks"]] == [eid]


async def test_each_keys_posting_queries_and_waiting_schedules_are_limited_with_retry_after(start_stack) -> None:
    """With KEY_DELIVERY_RATE=10, KEY_PRESENCE_RATE=2 and KEY_MAX_SCHEDULED=3: shop posts 50 deliveries then gets 429
    with Retry-After while billing still posts; its 11th presence query is 429; its 4th waiting scheduled message is
    429 until it cancels one."""
    stack = start_stack(nodes=1, COLLECT_API_KEYS=f"shop:{SHOP},billing:{BILLING}", KEY_DELIVERY_RATE="10",
                        KEY_PRESENCE_RATE="2", KEY_MAX_SCHEDULED="3")

    assert (await call(stack, "POST", "/v1/messages", SHOP, {"user_ids": [f"u{i}" for i in range(50)], "payload": 1}))[0] == 202
    assert int((await refused(stack, SHOP, "POST", "/v1/messages", {"user_id": "u1", "payload": 2}))["Retry-After"]) >= 1
    assert (await call(stack, "POST", "/v1/messages", BILLING, {"user_id": "u1", "payload": 3}))[0] == 202
    assert [(await call(stack, "GET", "/v1/presence/u1", SHOP))[0] for _ in range(10)] == [200] * 10
    assert int((await refused(stack, SHOP, "GET", "/v1/presence/u1"))["Retry-After"]) >= 1
    scheduled = []
    for _ in range(3):
        code, answer = await call(stack, "POST", "/v1/messages", BILLING, {"user_id": "u2", "payload": "later", "delay_seconds": 900})
        assert code == 202, answer
        scheduled.append(answer["id"])
    headers = await refused(stack, BILLING, "POST", "/v1/messages", {"user_id": "u2", "payload": "one too many", "delay_seconds": 60})
    assert 850 <= int(headers["Retry-After"]) <= 900  # until the earliest waiting one falls due
    assert (await call(stack, "DELETE", f"/v1/messages/{scheduled[0]}", BILLING))[0] == 200
    assert (await call(stack, "POST", "/v1/messages", BILLING, {"user_id": "u2", "payload": "fits again", "delay_seconds": 60}))[0] == 202

