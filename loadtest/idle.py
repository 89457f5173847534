"""The connections scenario's client side: a worker (see ``loadtest.fleet``) that opens and holds
thousands of idle websockets to one push node, each a ``RawSocket`` (so the handshakes measured are the node's, not
this client's)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from loadtest.inbox import tcp_from
from loadtest.raw_socket import RawSocket, upgrade_request


@dataclass
class OpenReport:
    """What one worker achieved: sockets routed (welcome received), failures by kind, and when."""

    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0


@contextlib.asynccontextmanager
async def hold(url: str, concurrency: int, source: str, tokens: list[str]) -> AsyncIterator[OpenReport]:
    """Open a socket per token to ``url`` from the local address ``source`` (``concurrency`` handshakes in flight,
    each welcomed within 30 s), report, hold them until left."""
    report = OpenReport(started=time.time())
    gate = asyncio.Semaphore(concurrency)
    parts = urlsplit(url)
    sockets: list[RawSocket] = []

    async def one(token: str) -> None:
        async with gate:
            try:
                async with asyncio.timeout(30):
                    sock = await tcp_from(source, url)
                    _, raw = await asyncio.get_running_loop().create_connection(
                        lambda: RawSocket(upgrade_request(parts.netloc, f"{parts.path}?token={token}")), sock=sock)
                    sockets.append(raw)
                    welcome = orjson.loads(await raw.welcome)
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"expected a welcome frame, got {welcome}")
                report.opened += 1
            except Exception as exc:  # counted and reported: the parent prints failures by kind
                report.failures[type(exc).__name__] += 1

    await asyncio.gather(*(one(t) for t in tokens))
    report.finished = time.time()
    try:
        yield report
    finally:
        for raw in sockets:
            raw.close()
