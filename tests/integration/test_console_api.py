"""collect's browser-facing API over real processes: the node directory, the stats feed and the /dev routes."""

from __future__ import annotations

from typing import Any

from tests.client import next_frame, subscribe
from tests.conftest import RunningStack
from tests.waits import until


async def get_json(stack: RunningStack, path: str) -> Any:
    async with stack.client.session.get(f"{stack.stack.collect_url}{path}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def post_json(stack: RunningStack, path: str, body: Any) -> tuple[int, Any]:
    async with stack.client.session.post(f"{stack.stack.collect_url}{path}", json=body) as r:
        return r.status, await r.json(content_type=None)


async def test_node_directory_lists_every_live_node_with_its_websocket_url(shared_stack: RunningStack) -> None:
    """GET /v1/nodes needs no key and lists each live node's public websocket URL and load."""
    nodes = (await get_json(shared_stack, "/v1/nodes"))["nodes"]
    assert sorted(n["url"] for n in nodes) == sorted(f"ws://127.0.0.1:{p}/ws" for p in shared_stack.stack.push_ports)
    assert all(set(n) == {"id", "url", "connections", "users"} for n in nodes)


async def test_dev_token_connects_and_dev_message_arrives(shared_stack: RunningStack) -> None:
    """A token from POST /dev/tokens opens a websocket, and POST /dev/messages (no key) delivers to it."""
    status, issued = await post_json(shared_stack, "/dev/tokens", {"user_id": "dora"})
    assert status == 200, issued
    ws = await shared_stack.client.open(issued["token"], node=1)
    assert (await next_frame(ws))["type"] == "welcome"
    status, accepted = await post_json(shared_stack, "/dev/messages", {"user_id": "dora", "payload": {"text": "hi"}})
    assert status == 202, accepted
    frame = await next_frame(ws)
    assert (frame["id"], frame["payload"]) == (accepted["id"], {"text": "hi"})
    await ws.close()


async def test_dev_token_refuses_a_bad_user_id(shared_stack: RunningStack) -> None:
    """auth's validation reaches the page: a user id with a colon gets 422 and no token."""
    status, body = await post_json(shared_stack, "/dev/tokens", {"user_id": "no:colons"})
    assert status == 422 and body["error"]["code"] == "invalid"


async def test_dev_token_carries_topics_and_stats_then_list_the_topic_and_the_user(shared_stack: RunningStack) -> None:
    """A /dev/tokens token asked with ``topics`` may subscribe to them only, and GET /v1/stats then ranks the topic
    with its subscriber and node counts and counts the user online."""
    status, issued = await post_json(shared_stack, "/dev/tokens", {"user_id": "tomas", "topics": ["dev-news"]})
    assert status == 200, issued
    ws = await shared_stack.client.open(issued["token"], node=0)
    assert (await next_frame(ws))["type"] == "welcome"
    assert await subscribe(ws, ["dev-news", "dev-other"]) == [
        {"type": "subscribed", "topics": ["dev-news"]}, {"type": "error", "code": "forbidden", "topics": ["dev-other"]}]
    stats = await until(lambda: get_json(shared_stack, "/v1/stats"), lambda s: any(t["topic"] == "dev-news" for t in s["topics"]),
                        what="/v1/stats to list dev-news (the node writes its topic counts in its next flush)", every=0.1)
    assert {"topic": "dev-news", "subscribers": 1, "nodes": 1} in stats["topics"]
    assert stats["users_online"] >= 1
    await ws.close()


async def test_dev_token_refuses_topics_that_are_not_a_list_of_names(shared_stack: RunningStack) -> None:
    """auth's validation of the topics claim reaches the page: a bare string or a bad name gets 422 and no token."""
    for topics in ("dev-news", ["no spaces"]):
        status, body = await post_json(shared_stack, "/dev/tokens", {"user_id": "tomas", "topics": topics})
        assert status == 422 and body["error"]["code"] == "invalid", (topics, body)


async def test_stats_report_nodes_up_and_a_message_for_an_offline_user_as_pending(start_stack) -> None:
    """GET /v1/stats shows both nodes answering and counts a stored, undelivered message as pending."""
    stack: RunningStack = start_stack()  # fresh: no other message may be pending
    before = await get_json(stack, "/v1/stats")
    assert [n["up"] for n in before["nodes"]] == [True, True]
    assert (before["pending"], before["messages"]["accepted"]) == (0, 0)
    status, _ = await stack.client.post({"user_id": "offline-olga", "payload": "later"})
    assert status == 202
    after = await until(lambda: get_json(stack, "/v1/stats"), lambda s: s["pending"] and s["messages"]["accepted"],
                        what="/v1/stats to count the message pending and accepted", every=0.1)
    assert (after["pending"], after["messages"]["accepted"]) == (1, 1)
