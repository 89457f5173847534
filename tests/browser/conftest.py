"""A headless Chromium (Debian's, never a downloaded one) driven by Playwright, and pages that fail on script errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

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
