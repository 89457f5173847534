"""A small test client for a running stack: tokens, websockets, posts, health."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.infra.clock import now_ms
from shared.infra.config import DEV_ADMIN_KEY, DEV_API_KEYS, DEV_INTERNAL_KEY
from shared.wire.signing import LinkRequest
from tests.metrics import sample
from tests.waits import scaled, until
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

    async def open(self, token: str, node: int = 0, bundles: bool = False) -> ClientConnection:
        """A websocket to push node ``node``, asking for bundles if ``bundles`` (no welcome awaited: the node may refuse
        it)."""
        query = f"token={token}{'&bundle=1' if bundles else ''}"
        return await connect(f"ws://127.0.0.1:{self.stack.push_ports[node]}/ws?{query}", open_timeout=scaled(5))

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
        # a stream, not bytes: aiohttp warns that a large bytes body could hold up the event loop
        async with self.session.post(f"{self.stack.collect_url}/v1/messages", data=io.BytesIO(data), headers=hdrs) as r:
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

        async def attempt() -> tuple[int, Any]:
            status, answer = await self.post(body)
            assert status in (202, 503), answer
            return status, answer

        _, answer = await until(attempt, lambda r: r[0] == 202, what="collect to accept a post", timeout=timeout, every=0.3)
        return answer

    async def metric(self, url: str, name: str, *, absent: float | None = None, **labels: str) -> float:
        """The value of sample ``name`` (with exactly ``labels``) on the ``/metrics`` page of the service at ``url``;
        fails when the page has no such sample (``absent``: see ``tests.metrics.sample``)."""
        async with self.session.get(f"{url}/metrics") as r:
            assert r.status == 200, await r.text()
            return sample(await r.text(), name, absent=absent, **labels)

    async def drain(self, node: int = 0, key: str | None = DEV_INTERNAL_KEY) -> tuple[int, Any]:
        """``POST /v1/drain`` on push node ``node``, signed with ``key`` (None: unsigned): its status and body."""
        port = self.stack.push_ports[node]
        headers = LinkRequest.make(key, f"127.0.0.1:{port}", now_ms(), "POST", "/v1/drain").headers() if key is not None else {}
        async with self.session.post(f"{self.stack.push_url(port)}/v1/drain", headers=headers) as r:
            return r.status, await r.json(content_type=None)

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
    """The next frame, within ``scaled(timeout)``."""
    return orjson.loads(await asyncio.wait_for(ws.recv(), scaled(timeout)))


async def frames_within(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every frame that arrives within ``scaled(seconds)`` (used to prove that nothing, or nothing more, arrives: a
    window, not a wait for an event, so scaled like every timeout to leave a slow machine time to misbehave)."""
    frames = []
    try:
        async with asyncio.timeout(scaled(seconds)):
            while True:
                frames.append(orjson.loads(await ws.recv()))
    except TimeoutError:
        return frames


async def receive_ids(ws: ClientConnection, count: int, timeout: float = 30) -> list[str]:
    """Message ids from the next ``count`` message frames."""
    ids: list[str] = []
    async with asyncio.timeout(scaled(timeout)):
        while len(ids) < count:
            frame = await next_frame(ws, timeout)
            if frame["type"] == "message":
                ids.append(frame["id"])
    return ids


async def subscribe(ws: ClientConnection, topics: list[str], kind: str = "subscribe") -> list[dict[str, Any]]:
    """Send a (un)subscribe frame and return the node's replies: the granted list first, then any refusals. A
    ``subscribed`` reply must give each granted topic's position (an offset and an epoch); it is returned without
    them (``tests/integration/test_topic_recovery.py`` checks their values)."""
    await ws.send(orjson.dumps({"type": kind, "topics": topics}).decode())
    replies = [await next_frame(ws)]
    answered = set(replies[0]["topics"])
    while answered != set(topics):
        replies.append(await next_frame(ws))
        answered |= set(replies[-1]["topics"])
    for reply in replies:
        if reply["type"] == "subscribed":
            positions = reply.pop("positions")
            assert set(positions) == set(reply["topics"]), reply
            assert all(type(p["offset"]) is int and isinstance(p["epoch"], str) for p in positions.values()), positions
    return replies


class Receiver:
    """A user's socket that acks every message at once and records, as each arrives, its id and its latency."""

    def __init__(self, user: str, ws: ClientConnection) -> None:
        self.user = user
        self.ws = ws
        self.ids: list[str] = []  # in arrival order
        self.latencies: list[tuple[float, float]] = []  # (arrival, seconds since collect accepted it)
        self._task = asyncio.create_task(self._read())

    @property
    def deliveries(self) -> list[str]:
        """``"{message id}:{user}"`` per arrival: comparable across users."""
        return [f"{i}:{self.user}" for i in self.ids]

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                frame = orjson.loads(data)
                if frame["type"] == "message":
                    now = time.time()
                    self.ids.append(frame["id"])
                    self.latencies.append((now, now - frame["ts"] / 1000))
                    await self.ws.send(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
        except ConnectionClosed:
            pass

    async def received(self, ids: list[str], timeout: float) -> None:
        """Wait until every one of ``ids`` has arrived."""
        await until(lambda: set(ids) - set(self.ids), lambda missing: not missing, what=f"{len(ids)} messages for {self.user}",
                    timeout=timeout)

    async def close(self) -> None:
        await self.ws.close()
        await self._task


class Roamer:
    """A user's socket as a well-behaved client keeps it: acks every message and honours a draining node's
    ``reconnect`` advice (waits ``after_ms``, closes, connects to the advised URL; also when the node closes it
    with 1001 before then)."""

    def __init__(self, client: ClusterClient, user_id: str) -> None:
        self.client = client
        self.user_id = user_id
        self.received: list[str] = []
        self.arrivals: list[tuple[float, str, str]] = []  # (loop time, node, message id) of each message frame
        self.welcomes: list[tuple[float, str]] = []  # (loop time, node) of each welcome
        self.node_closed = 0  # times the node closed the socket before the advised time
        self.welcomed = asyncio.Event()

    async def run(self, url: str) -> None:
        """Stay connected (first to ``url``) until cancelled."""
        token = await self.client.token(self.user_id)
        loop = asyncio.get_running_loop()
        node = ""
        while True:
            leave = asyncio.timeout(None)
            async with connect(f"{url}?token={token}", open_timeout=scaled(10)) as ws:  # closed on the way out, cancelled too
                try:
                    async with leave:
                        async for data in ws:
                            frame = orjson.loads(data)
                            if frame["type"] == "welcome":
                                node = frame["node"]
                                self.welcomes.append((loop.time(), node))
                                self.welcomed.set()
                            elif frame["type"] == "message":
                                self.received.append(frame["id"])
                                self.arrivals.append((loop.time(), node, frame["id"]))
                                await ws.send(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())
                            elif frame["type"] == "reconnect":
                                url = frame.get("url", url)
                                leave.reschedule(loop.time() + frame["after_ms"] / 1000)
                except TimeoutError:  # the advised time came
                    continue
                except ConnectionClosed:
                    pass
            moment = leave.when()
            if moment is None:
                raise AssertionError(f"{self.user_id}: the node closed the socket ({ws.close_code}) without advice")
            self.node_closed += 1
            await asyncio.sleep(max(0.0, moment - loop.time()))
