"""A page whose network drops while its topic keeps getting messages: the client recovers what it missed."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from tests.browser.conftest import Demo, Pages, screenshot
from tests.conftest import RunningStack

TOPIC = "live"
EVERY_SECONDS = 0.2  # 5 messages a second
OFFLINE_SECONDS = 2
RECOVERED = re.compile(r"^recovered (\d+) missed messages?$")

# Keeps the page's websockets where the test can reach them (PushClient takes window.WebSocket when it is made).
RECORD_SOCKETS = """() => {
  const Native = window.WebSocket;
  window.testSockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.testSockets.push(this);
    }
  };
}"""
# What a dropped network does to a socket, which Chromium's emulated offline does not (see the test's docstring).
CUT_SOCKETS = "() => window.testSockets.filter((s) => s.readyState === WebSocket.OPEN).forEach((s) => s.close())"


async def test_page_shows_every_topic_message_in_order_after_its_network_drops(start_stack, pages: Pages) -> None:
    """A page subscribed to a topic goes offline for 2 s while the topic gets 5 messages a second; back online, it
    resubscribes with its position, the node sends what it missed ("recovered N missed messages"), and the feed shows
    every topic message once, in order, with consecutive offsets.

    Playwright's ``set_offline`` (Chromium's emulated offline) turns ``navigator.onLine`` false and fires ``offline``,
    but does not cut a websocket that is already open: it only holds its frames and hands them over once back online,
    so the page would miss nothing. A real network loss kills the socket, so the test also closes the page's socket
    while offline (its frames held by the emulation are then discarded); the client, offline, waits for ``online``
    before reconnecting, as it would after a real drop."""
    stack: RunningStack = start_stack()
    demo = Demo(await pages.open(f"{stack.stack.collect_url}/demo"))
    await demo.page.evaluate(RECORD_SOCKETS)
    await demo.subscribe(TOPIC)  # before connecting: granted by the first token
    await demo.connect("rio")
    await expect(demo.chip(TOPIC)).to_have_text("subscribed")

    sent: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        while not stop.is_set():
            text = f"m{len(sent)}"
            status, body = await stack.client.post({"topic": TOPIC, "payload": {"text": text}})
            assert status == 202, body
            sent.append(text)
            await asyncio.sleep(EVERY_SECONDS)

    publisher = asyncio.create_task(publish())
    try:
        topic_messages = demo.page.locator("#messages li.topic")
        await expect(topic_messages.nth(4)).to_be_attached()
        await demo.page.context.set_offline(True)
        await demo.page.evaluate(CUT_SOCKETS)
        await asyncio.sleep(OFFLINE_SECONDS)
        await demo.page.context.set_offline(False)

        recovery = demo.page.locator(f'#topics li[data-topic="{TOPIC}"] .recovery')
        await expect(recovery).to_have_text(RECOVERED)
        recovered = RECOVERED.match(await recovery.inner_text())
        assert recovered and int(recovered[1]) >= 1, "the page missed nothing: its socket was not cut"
        missed = int(recovered[1])
        await asyncio.sleep(OFFLINE_SECONDS)  # live messages after the recovered ones
    finally:
        stop.set()
        await publisher
    await expect(topic_messages).to_have_count(len(sent))
    shown = await topic_messages.evaluate_all(
        "items => items.reverse().map((li) => [li.querySelector('.text').textContent, Number(li.dataset.offset), li.dataset.id])")
    texts, offsets, ids = (list(column) for column in zip(*shown, strict=True))
    assert texts == sent  # every message, in the order posted
    assert offsets == list(range(offsets[0], offsets[0] + len(sent)))  # no gap, no duplicate
    assert len(set(ids)) == len(ids)
    await expect(demo.page.locator("#log")).to_contain_text("link lost")
    await expect(demo.page.locator("#log")).to_contain_text(f"{TOPIC}: recovered {missed} missed message")
    await screenshot(demo.page, "demo-recovery.png")
