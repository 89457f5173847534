"""The HTTP side of a benchmark: tokens from auth and posts to collect, with the development keys."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import orjson

from shared.infra.config import DEV_ADMIN_KEY, DEV_API_KEYS

ADMIN_KEY = os.environ.get("AUTH_ADMIN_KEY", DEV_ADMIN_KEY)
API_KEY = os.environ.get("COLLECT_API_KEYS", DEV_API_KEYS).split(",")[0].partition(":")[2]


class Rejected(Exception):
    """collect did not accept a post (any status but 202, or no answer in time)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a post: its ``messages``, or the body itself when it is one message."""
    return list(body["messages"]) if "messages" in body else [body]


def stamp(body: dict[str, Any]) -> None:
    """Write the time now (wall-clock ms) into each message's payload as ``sent``, in place."""
    now = time.time() * 1000
    for message in messages_of(body):
        message["payload"]["sent"] = now


class Api:
    """Tokens from auth, posts to collect. With ``stamp``, every post carries its send time in its payloads (``sent``),
    for latency measured from it: in a run beside a peer, which has no acceptance time to give."""

    def __init__(self, auth_url: str, collect_url: str, session: aiohttp.ClientSession, stamp: bool = False) -> None:
        self.auth_url = auth_url
        self.collect_url = collect_url
        self.session = session
        self.stamp = stamp

    async def token(self, user_id: str, ttl_seconds: int = 3600, topics: list[str] | None = None) -> str:
        ask: dict[str, Any] = {"user_id": user_id, "ttl_seconds": ttl_seconds, **({"topics": topics} if topics else {})}
        async with self.session.post(f"{self.auth_url}/v1/tokens", json=ask, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
            if r.status != 200:
                raise RuntimeError(f"auth answered {r.status}: {await r.text()}")
            return (await r.json())["token"]

    async def tokens(self, user_ids: list[str], concurrency: int = 32, topics: list[str] | None = None) -> list[str]:
        """Tokens for many users (granting ``topics``), a bounded number of requests in flight."""
        gate = asyncio.Semaphore(concurrency)

        async def one(user_id: str) -> str:
            async with gate:
                return await self.token(user_id, topics=topics)

        return await asyncio.gather(*(one(u) for u in user_ids))

    async def post(self, body: dict[str, Any]) -> list[str]:
        """POST /v1/messages; the accepted message ids, or ``Rejected`` naming the status or the error."""
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        if self.stamp:
            stamp(body)
        try:
            async with self.session.post(f"{self.collect_url}/v1/messages", data=orjson.dumps(body), headers=headers) as r:
                if r.status != 202:
                    raise Rejected(f"HTTP {r.status}")
                return (await r.json(content_type=None))["ids"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Rejected(type(exc).__name__) from None

    async def node_health(self, push_url: str) -> dict[str, Any]:
        """A push node's ``/healthz``: its ``connections`` and ``users``, among others."""
        async with self.session.get(f"{push_url}/healthz") as r:
            return dict(await r.json(content_type=None))

    async def connections(self, push_urls: list[str]) -> int:
        """The sockets open on the push nodes between them."""
        return sum(int(h["connections"]) for h in await asyncio.gather(*map(self.node_health, push_urls)))

    async def history(self, topic: str, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """GET /v1/topics/{topic}/history: the topic's position (``offset``, ``epoch``) and its messages after ``since``
        (at most ``limit``)."""
        async with self.session.get(f"{self.collect_url}/v1/topics/{topic}/history", params={"since": since, "limit": limit},
                                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            if r.status != 200:
                raise RuntimeError(f"collect answered {r.status}: {await r.text()}")
            return dict(await r.json(content_type=None))

    async def webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        """POST /v1/webhooks: an endpoint for ``events`` at ``url``, as the business system of the development key."""
        async with self.session.post(f"{self.collect_url}/v1/webhooks", json={"url": url, "events": events},
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            if r.status != 201:
                raise RuntimeError(f"collect answered {r.status}: {await r.text()}")
            return dict(await r.json())
