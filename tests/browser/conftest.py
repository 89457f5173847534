"""A headless Chromium (Debian's, never a downloaded one) driven by Playwright, pages that fail on script errors, and the
demo page driven through its form."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Locator, Page, async_playwright, expect

from tests.conftest import OUTPUT
from tests.waits import scaled

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = scaled(15_000)  # the longest any expectation waits for the page to catch up
expect.set_options(timeout=WAIT_MS)  # expect() keeps its own timeout (5 s), apart from the page's


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


class Pages:
    """Opens pages in one fresh browser context and records their script errors, which fail the test, and their
    console lines, which a failed test shows."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.console: list[str] = []
        self.contexts: list[BrowserContext] = []

    async def open(self, url: str, width: int = 1200, height: int = 900) -> Page:
        context = await self.browser.new_context(viewport={"width": width, "height": height})
        self.contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: self.errors.append(f"{url}: {error}"))
        page.on("console", lambda line: self.console.append(f"{time.strftime('%H:%M:%S')} {url} {line.type}: {line.text}"))
        await page.goto(url)
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest_asyncio.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()
    print("\n".join(["browser console:", *opened.console]))  # pytest shows it when the test failed
    assert opened.errors == [], "the pages threw script errors"


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under ``$TEST_OUTPUT`` (for people to look at; nothing compares it)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    await page.screenshot(path=str(path), full_page=True)
    return path


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

    async def subscribe(self, topic: str) -> None:
        """Subscribe through the topic field (before connecting or while connected); connected, wait until granted."""
        connected = await self.page.locator("#status").inner_text() == "connected"
        await self.page.fill("#topic", topic)
        await self.page.click("#subscribe")
        await expect(self.chip(topic)).to_have_text("subscribed" if connected else "on connect")

    def chip(self, topic: str) -> Locator:
        return self.page.locator(f'#topics li[data-topic="{topic}"] .pill')

    async def send(self, to: str, text: str, kind: str = "user") -> None:
        await self.page.select_option("#kind", kind)
        if kind != "broadcast":
            await self.page.fill("#to", to)
        await self.page.fill("#text", text)
        await self.page.click("#send")
        await expect(self.page.locator("#sent")).to_have_text(re.compile("^Accepted as "))

    async def shown_ids(self) -> list[str]:
        return [await m.get_attribute("data-id") or "" for m in await self.messages.all()]
