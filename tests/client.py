"""A small test client for a running stack: tokens, websockets, posts, health."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect

from shared.config import DEV_ADMIN_KEY, DEV_API_KEYS
from tools.cluster import Stack

API_KEY = DEV_API_KEYS.partition(":")[2]


class ClusterClient:
    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.session = session

    async def token(self, user_id: str, ttl_seconds: int = 3600, topics: list[str] | None = None) -> str:
        body = {"user_id": user_id, "ttl_seconds": ttl_seconds, **({"topics": topics} if topics is not None else {})}
        async with self.session.post(f"{self.stack.auth_url}/v1/tokens", json=body,
                                     headers={"Authorization": f"Bearer {DEV_ADMIN_KEY}"}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["token"]

    async def open(self, token: str, node: int = 0) -> ClientConnection:
        """A websocket to push node ``node`` (no welcome awaited: the node may refuse it)."""
        return await connect(f"ws://127.0.0.1:{self.stack.push_ports[node]}/ws?token={token}", open_timeout=5)

    async def connect(self, user_id: str, node: int = 0, topics: list[str] | None = None) -> ClientConnection:
        """A websocket for ``user_id`` (whose token grants ``topics``) on push node ``node``, returned once the node
        says it is routed."""
        ws = await self.open(await self.token(user_id, topics=topics), node)
        welcome = await next_frame(ws)
        assert welcome == {"type": "welcome", "user_id": user_id, "node": f"127.0.0.1:{self.stack.push_ports[node]}"}
        return ws

    async def post(self, body: Any = None, *, raw: bytes | None = None, api_key: str = API_KEY,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else orjson.dumps(body)
        hdrs = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", **(headers or {})}
        async with self.session.post(f"{self.stack.collect_url}/v1/messages", data=data, headers=hdrs) as r:
            return r.status, await r.json(content_type=None)

    async def status(self, message_id: str) -> tuple[int, Any]:
        """``GET /v1/messages/{id}``: its HTTP status and body."""
        async with self.session.get(f"{self.stack.collect_url}/v1/messages/{message_id}",
                                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            return r.status, await r.json(content_type=None)

    async def cancel(self, message_id: str, api_key: str = API_KEY) -> tuple[int, Any]:
        """``DELETE /v1/messages/{id}``: its HTTP status and body."""
        async with self.session.delete(f"{self.stack.collect_url}/v1/messages/{message_id}",
                                       headers={"Authorization": f"Bearer {api_key}"}) as r:
            return r.status, await r.json(content_type=None)

    async def post_until_accepted(self, body: Any, timeout: float = 30) -> dict[str, Any]:
        """Post until collect answers 202 (after an outage), accepting only 503 meanwhile."""
        async with asyncio.timeout(timeout):
            while True:
                status, answer = await self.post(body)
                if status == 202:
                    return answer
                assert status == 503, answer
                await asyncio.sleep(0.3)

    async def health(self) -> dict[str, int]:
        """Every service's ``/healthz`` status code (0 when it does not answer at all)."""
        urls = {"auth": self.stack.auth_url, "collect": self.stack.collect_url, "dispatch": self.stack.dispatch_url}
        urls |= {f"push-{p}": self.stack.push_url(p) for p in self.stack.push_ports}
        statuses = {}
        for name, url in urls.items():
            try:
                async with self.session.get(f"{url}/healthz") as r:
                    statuses[name] = r.status
            except aiohttp.ClientError:
                statuses[name] = 0
        return statuses


async def next_frame(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def frames_within(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every frame that arrives within ``seconds`` (used to prove that nothing, or nothing more, arrives)."""
    frames = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frames.append(orjson.loads(await ws.recv()))
    except TimeoutError:
        return frames


async def receive_ids(ws: ClientConnection, count: int, timeout: float = 30) -> list[str]:
    """Message ids from the next ``count`` message frames."""
    ids: list[str] = []
    async with asyncio.timeout(timeout):
        while len(ids) < count:
            frame = await next_frame(ws, timeout)
            if frame["type"] == "message":
                ids.append(frame["id"])
    return ids


async def subscribe(ws: ClientConnection, topics: list[str], kind: str = "subscribe") -> list[dict[str, Any]]:
    """Send a (un)subscribe frame and return the node's replies: the granted list first, then any refusals."""
    await ws.send(orjson.dumps({"type": kind, "topics": topics}).decode())
    replies = [await next_frame(ws)]
    answered = set(replies[0]["topics"])
    while answered != set(topics):
        replies.append(await next_frame(ws))
        answered |= set(replies[-1]["topics"])
    return replies
