"""The demo page and the dashboard in a real Chromium, against a real stack: connect, receive, fail over."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.conftest import Pages, screenshot
from tests.conftest import RunningStack

LATENCY = re.compile(r"^\d+(\.\d)? (ms|s)$")


class Demo:
    """The demo page, driven the way a person would: through its form fields and buttons."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages = page.locator("#messages li[data-id]")

    async def connect(self, user_id: str) -> str:
        """Connect as ``user_id``; returns the id of the node the page says it is on."""
        await self.page.fill("#user", user_id)
        await self.page.click("#connect")
        await expect(self.page.locator("#status")).to_have_text("connected")
        return await self.page.locator("#node-id").inner_text()

    async def send(self, to: str, text: str) -> None:
        await self.page.fill("#to", to)
        await self.page.fill("#text", text)
        await self.page.click("#send")
        await expect(self.page.locator("#sent")).to_have_text(re.compile("^Accepted as "))

    async def shown_ids(self) -> list[str]:
        return [await m.get_attribute("data-id") or "" for m in await self.messages.all()]


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
