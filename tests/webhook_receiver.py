"""A business system's webhook endpoint for the tests: a small aiohttp server on a free loopback port that records what
it is sent, verifies it, and answers as the test tells it to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pushcluster.webhooks import verify
from tools.cluster import free_port


@dataclass
class Delivery:
    """One request the receiver got: its headers, body, and the status it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def event(self, secret: str) -> dict[str, Any]:
        return verify(secret, self.headers, self.body)


@dataclass
class Receiver:
    """Answers each request with ``answer(webhook_id, attempt)`` (attempt 1 first), 200 by default."""

    answer: Callable[[str, int], int] = lambda _id, _attempt: 200
    requests: list[Delivery] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        status = self.answer(webhook_id, sum(r.webhook_id == webhook_id for r in self.requests) + 1)
        self.requests.append(Delivery({k.lower(): v for k, v in request.headers.items()}, body, status))
        return web.Response(status=status)

    def accepted(self, secret: str) -> list[dict[str, Any]]:
        """The events answered 2xx, verified with ``secret``, each with its ``webhook-id`` as ``"id"``."""
        return [{**r.event(secret), "id": r.webhook_id} for r in self.requests if 200 <= r.status < 300]

    def of_type(self, secret: str, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.accepted(secret) if e["type"] == event_type]
