"""The demo page and the dashboard in a real Chromium, against a real stack: connect, receive, topics, fail over,
webhook endpoints."""

from __future__ import annotations

import re

from playwright.async_api import expect

from tests.browser.conftest import Demo, Pages, screenshot
from tests.client import API_KEY
from tests.conftest import RunningStack
from tests.webhook_receiver import Receiver

LATENCY = re.compile(r"^\d+(\.\d)? (ms|s)$")


def node_index(stack: RunningStack, node_id: str) -> int:
    """Which of the stack's push nodes has this id (``127.0.0.1:{port}``)."""
    return stack.stack.push_ports.index(int(node_id.rpartition(":")[2]))


async def test_demo_page_shows_a_message_sent_through_its_form(start_stack, pages: Pages) -> None:
    """A user connected on the demo page sees a message posted to them through the page's form, with its latency."""
    stack: RunningStack = start_stack()
    demo = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    await demo.connect("ana")
    await demo.send("ana", "Hello Ana")
    await expect(demo.messages).to_have_count(1)
    await expect(demo.messages.first.locator(".text")).to_have_text("Hello Ana")
    await expect(demo.messages.first.locator(".latency")).to_have_text(LATENCY)
    await screenshot(demo.page, "demo.png")
    phone = Demo(await pages.open(f"{stack.stack.collect_url}/demo", width=390, height=844))
    await phone.connect("ana-phone")
    await phone.send("ana-phone", "Hello on a small screen")
    await expect(phone.messages).to_have_count(1)
    await screenshot(phone.page, "demo-phone.png")


async def test_page_fails_over_to_the_other_node_when_its_node_is_killed(start_stack, pages: Pages) -> None:
    """After SIGKILL of its node the page reconnects to the other node, gets the next message, and shows none twice."""
    stack: RunningStack = start_stack()
    demo = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    first_node = await demo.connect("bea")
    await demo.send("bea", "before the crash")
    await expect(demo.messages).to_have_count(1)

    stack.push(node_index(stack, first_node)).kill()
    await expect(demo.page.locator("#log")).to_contain_text("link lost")
    await expect(demo.page.locator("#status")).to_have_text("connected")
    second_node = await demo.page.locator("#node-id").inner_text()
    assert second_node != first_node

    await demo.send("bea", "after the crash")
    await expect(demo.messages.first.locator(".text")).to_have_text("after the crash")
    ids = await demo.shown_ids()
    assert len(ids) == len(set(ids)) == 2
    await screenshot(demo.page, "demo-after-failover.png")


async def test_dashboard_shows_connections_moving_counts_and_a_dead_node(start_stack, pages: Pages) -> None:
    """The dashboard shows a new connection on its node, message counts rising, and a killed node as not answering."""
    stack: RunningStack = start_stack()
    dashboard = await pages.open(f"{stack.stack.collect_url}/dashboard")
    await expect(dashboard.locator("#nodes-up")).to_have_text("2/2")
    await expect(dashboard.locator("#connections")).to_have_text("0")

    demo = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    node = await demo.connect("cleo")
    await expect(dashboard.locator("#connections")).to_have_text("1")
    await expect(dashboard.locator(f'tr[data-node="{node}"] .connections')).to_have_text("1")

    for n in range(3):
        await demo.send("cleo", f"message {n}")
    await expect(demo.messages).to_have_count(3)
    await expect(dashboard.locator("#accepted")).to_have_text("3")
    await expect(dashboard.locator("#delivered")).to_have_text("3")
    await expect(dashboard.locator("#p50")).to_have_text(LATENCY)

    stack.push(node_index(stack, node)).kill()
    await expect(dashboard.locator(f'tr[data-node="{node}"] .pill')).to_have_text("not answering")
    await expect(demo.page.locator("#status")).to_have_text("connected")
    moved_to = await demo.page.locator("#node-id").inner_text()
    await expect(dashboard.locator(f'tr[data-node="{moved_to}"] .connections')).to_have_text("1")
    await demo.send("cleo", "after the crash")
    await expect(dashboard.locator("#accepted")).to_have_text("4")
    await screenshot(dashboard, "dashboard.png")
    phone = await pages.open(f"{stack.stack.collect_url}/dashboard", width=390, height=844)
    await expect(phone.locator("#nodes-up")).to_have_text("1/2")
    await screenshot(phone, "dashboard-phone.png")


async def test_demo_page_subscribes_to_a_topic_and_shows_topic_and_broadcast_messages(start_stack, pages: Pages) -> None:
    """Subscribed while connected, the page shows topic messages (posted or sent from its form) and a broadcast, each labelled."""
    stack: RunningStack = start_stack()
    demo = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    other = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    await demo.connect("tia")
    await other.connect("uma")
    await demo.subscribe("news")  # not in the first token: the page gets one granting it and reconnects
    await expect(demo.page.locator("#status")).to_have_text("connected")

    status, _ = await stack.client.post({"topic": "news", "payload": {"text": "posted to news"}})
    assert status == 202
    topic_item = demo.messages.filter(has_text="posted to news")
    await expect(topic_item).to_have_class("topic")
    await expect(topic_item.locator(".tag")).to_have_text("topic news")
    await demo.send("news", "sent to news from the page", kind="topic")
    await expect(demo.messages.first.locator(".text")).to_have_text("sent to news from the page")

    status, _ = await stack.client.post({"broadcast": True, "payload": {"text": "to everyone"}})
    assert status == 202
    for page in (demo, other):
        await expect(page.messages.first).to_have_class("broadcast")
        await expect(page.messages.first.locator(".tag")).to_have_text("broadcast")
    await expect(demo.messages).to_have_count(3)
    await expect(other.messages).to_have_count(1)  # not subscribed: the broadcast only
    await screenshot(demo.page, "demo-topics.png")


async def test_dashboard_shows_users_online_and_the_largest_topics(start_stack, pages: Pages) -> None:
    """The dashboard counts users online and lists a topic with its subscribers as pages subscribe to it."""
    stack: RunningStack = start_stack()
    dashboard = await pages.open(f"{stack.stack.collect_url}/dashboard")
    await expect(dashboard.locator("#users-online")).to_have_text("0")
    await expect(dashboard.locator("#topics")).to_have_text("No topic has a subscriber.")

    first = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    await first.subscribe("room:7")  # before connecting: asked for in the first token
    await first.connect("vic")
    await expect(first.chip("room:7")).to_have_text("subscribed")
    row = dashboard.locator('#topics tr[data-topic="room:7"]')
    await expect(row.locator(".subscribers")).to_have_text("1")
    await expect(row.locator(".nodes")).to_have_text("1")
    await expect(dashboard.locator("#users-online")).to_have_text("1")

    second = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    await second.connect("wes")
    await second.subscribe("room:7")
    await expect(row.locator(".subscribers")).to_have_text("2")
    await expect(dashboard.locator("#users-online")).to_have_text("2")
    await screenshot(dashboard, "dashboard-topics.png")


async def test_dashboard_shows_each_tiers_backlog_and_which_is_shed(start_stack, pages: Pages) -> None:
    """With dispatch stopped and low shed past 2 waiting posts, the dashboard shows low's backlog of 3 and low as shed
    (429), high as accepted."""
    # low's age threshold out of reach: on a loaded machine the first post can wait past the default 2 s before the
    # third is posted, and low would be shed by age first
    stack: RunningStack = start_stack(nodes=1, SHED_LOW_ENTRIES="2", SHED_LOW_AGE_MS="600000", SHED_SAMPLE_MS="50")
    stack.procs["dispatch"].stop()
    for n in range(3):
        status, body = await stack.client.post({"user_id": "later", "payload": n, "priority": "low"})
        assert status == 202, body
    dashboard = await pages.open(f"{stack.stack.collect_url}/dashboard")
    await expect(dashboard.locator('tr[data-tier="low"] .backlog')).to_have_text("3")
    await expect(dashboard.locator('tr[data-tier="low"] .pill')).to_have_text("shed (429)")
    await expect(dashboard.locator('tr[data-tier="high"] .pill')).to_have_text("accepted")
    await screenshot(dashboard, "dashboard-tiers.png")


async def test_dashboard_shows_a_webhook_endpoints_success_rate_queue_and_last_error(start_stack, pages: Pages) -> None:
    """An endpoint that answered 500 twice per event before 200 shows on the dashboard with 2 of 6 attempts a success,
    an empty queue and its last error."""
    stack: RunningStack = start_stack(webhooks=True, WEBHOOK_SCHEDULE_SECONDS="0.2,0.2,0.2")
    rx = await Receiver(answer=lambda _id, attempt: 500 if attempt <= 2 else 200).start()
    try:
        async with stack.client.session.post(f"{stack.stack.collect_url}/v1/webhooks", json={"url": rx.url, "events": [
                "message.delivered"]}, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status == 201, await r.text()
            hook = await r.json()
        ws = await stack.client.connect("dana")
        # the page first, showing the endpoint before any attempt: its success is over the attempts since its first
        # reading, so a reading taken between two retries (a loaded machine) would leave the first ones out
        dashboard = await pages.open(f"{stack.stack.collect_url}/dashboard")
        row = dashboard.locator(f'tr[data-endpoint="{hook["id"]}"]')
        await expect(row.locator(".success")).to_have_text("–")
        for n in range(2):
            assert (await stack.client.post({"user_id": "dana", "payload": n}))[0] == 202
        await expect(row.locator(".success")).to_have_text("33.3%")
        await expect(row.locator(".queued")).to_have_text("0")
        await expect(row.locator(".last-error")).to_contain_text("HTTP 500")
        await expect(row.locator(".endpoint")).to_contain_text(f"demo → http://127.0.0.1:{rx.port}")
        await screenshot(dashboard, "dashboard-webhooks.png")
        await ws.close()
    finally:
        await rx.stop()
