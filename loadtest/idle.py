"""The connections scenario's client side: a worker (see ``loadtest.fleet``) that opens and holds
thousands of idle websockets to one push node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection

from loadtest.inbox import open_socket


@dataclass
class OpenReport:
    """What one worker achieved: sockets routed (welcome received), failures by kind, and when."""

    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0


@contextlib.asynccontextmanager
async def hold(url: str, concurrency: int, source: str, tokens: list[str]) -> AsyncIterator[OpenReport]:
    """Open a socket per token to ``url`` (``concurrency`` handshakes in flight), report, hold them until left."""
    report = OpenReport(started=time.time())
    gate = asyncio.Semaphore(concurrency)
    sockets: list[ClientConnection] = []

    async def one(token: str) -> None:
        async with gate:
            try:
                sockets.append(await open_socket(url, token, source))
                report.opened += 1
            except Exception as exc:  # counted and reported: the parent prints failures by kind
                report.failures[type(exc).__name__] += 1

    await asyncio.gather(*(one(t) for t in tokens))
    report.finished = time.time()
    try:
        yield report
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
