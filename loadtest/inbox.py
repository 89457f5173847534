"""Benchmark users that stay connected, receive and ack messages, and the tally of what they got.

Latency is the receive time minus the frame's ``ts`` (when collect accepted the message), both wall
clock on this machine; or, when the post stamped its send time in the payload (``sent``, in a run beside a peer,
``--peer``), minus that, as the peer's latency is measured. Every posted id is registered as expected for its user,
so the tally can say, per (user, message), whether it arrived exactly once, never, or more than once.

How a socket speaks to the push nodes is a ``Client``: ours (``OURS``), or a peer's
(``loadtest.peer_centrifugo``), so the same users and scenarios drive either system.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from shared.infra.text_taker import TextTaker

if TYPE_CHECKING:
    from loadtest.target import Target

ACK_EVERY_SECONDS = 0.1
Delivery = tuple[str, float]  # a message's id, and the wall-clock ms its latency counts from


@dataclass(frozen=True)
class Tally:
    expected: int
    delivered: int
    lost: int
    duplicates: int
    unexpected: int

    def __add__(self, other: Tally) -> Tally:
        """The tally of two disjoint sets of users (e.g. two client processes' shares)."""
        return Tally(*(a + b for a, b in zip(astuple(self), astuple(other))))


NO_TALLY = Tally(0, 0, 0, 0, 0)


async def tcp_from(source: str, url: str) -> socket.socket:
    """A TCP connection to ``url``'s host and port from the local address ``source``.

    The local port is chosen when connecting (IP_BIND_ADDRESS_NO_PORT): a plain bind to port 0 searches
    the address's every bound port, which with thousands of sockets cost this client more system CPU
    than the handshakes cost the node, halving the connect rate measured.
    """
    parts = urlsplit(url)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    except BaseException:
        sock.close()
        raise
    return sock


class TakingConnection(TextTaker, ClientConnection):
    """A client socket whose text frames a callback may take as they are parsed (``loadtest.fanout`` does)."""


async def dial(url: str, source: str | None = None) -> TakingConnection:
    """A websocket to ``url`` (the TCP and websocket handshakes within 30 s), from the local address ``source`` if
    given; no compression, no pings."""
    async with asyncio.timeout(30):
        sock = None if source is None else await tcp_from(source, url)
        ws = await connect(url, sock=sock, open_timeout=None, compression=None, ping_interval=None, max_size=None,
                           create_connection=TakingConnection)
        assert isinstance(ws, TakingConnection)
        return ws


async def open_socket(url: str, token: str, source: str | None = None, bundles: bool = False) -> TakingConnection:
    """A socket that the node has routed (its welcome frame arrived, within 30 s more), so posts can reach it; from
    the local address ``source`` if given; asking for bundles if ``bundles``."""
    ws = await dial(f"{url}?token={token}{'&bundle=1' if bundles else ''}", source)
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"expected a welcome frame, got {welcome}")
    return ws


@dataclass(frozen=True)
class Client:
    """This project's client side: the token in the URL, a ``welcome`` frame, a frame per message (several topic
    frames, newline-separated, in one websocket frame when it asked for ``bundles``), acks."""

    bundles: bool = False  # ask the node for bundles (``?bundle=1``)
    path: ClassVar[str] = "/ws"  # the push nodes' websocket endpoint
    acks: ClassVar[bool] = True

    async def open(self, url: str, token: str, source: str | None = None) -> TakingConnection:
        return await open_socket(url, token, source, self.bundles)

    def read(self, data: str | bytes) -> tuple[list[Delivery], str | None]:
        """The messages in one websocket frame, and what to answer it with (None: nothing)."""
        deliveries = []
        # One line unless it is a bundle (JSON text has no raw newline).
        for line in data.split(b"\n") if isinstance(data, bytes) else data.split("\n"):
            frame = orjson.loads(line)
            if frame.get("type") == "message":
                payload: Any = frame.get("payload")
                sent = payload.get("sent") if isinstance(payload, dict) else None
                deliveries.append((frame["id"], sent or frame["ts"]))
        return deliveries, None

    def ack(self, ids: list[str]) -> str:
        return orjson.dumps({"type": "ack", "ids": ids}).decode()


OURS = Client()


class Inbox:
    def __init__(self) -> None:
        self.expected: set[tuple[str, str]] = set()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.latencies_ms: list[float] = []
        self.arrived: list[float] = []  # when each of ``latencies_ms`` was received (``time.time()``)
        self.last_receive = 0.0
        self.last_by_user: dict[str, float] = {}
        self._changed = asyncio.Event()

    def expect(self, user_id: str, message_id: str) -> None:
        self.expected.add((user_id, message_id))

    def record(self, user_id: str, message_id: str, latency_ms: float) -> None:
        self.counts[(user_id, message_id)] += 1
        self.latencies_ms.append(latency_ms)
        self.last_receive = self.last_by_user[user_id] = time.time()
        self.arrived.append(self.last_receive)
        self._changed.set()

    def missing(self) -> int:
        return sum(1 for key in self.expected if key not in self.counts)

    async def settle(self, timeout: float, grace: float = 1.0) -> None:
        """Wait until every expected message arrived (or ``timeout``), then ``grace`` more for duplicates."""
        deadline = time.monotonic() + timeout
        while self.missing() and time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        await asyncio.sleep(grace)

    def tally(self) -> Tally:
        delivered = sum(1 for key in self.expected if key in self.counts)
        return Tally(
            expected=len(self.expected),
            delivered=delivered,
            lost=len(self.expected) - delivered,
            duplicates=sum(n - 1 for n in self.counts.values() if n > 1),
            unexpected=sum(n for key, n in self.counts.items() if key not in self.expected),
        )


class Users:
    """Users connected round-robin over the push nodes, at most ``concurrency`` handshakes in flight, each
    receiving into ``inbox`` from the moment its node welcomed it (``welcomed``: user -> when), and acking if
    the target's client does. Sockets come from the local address ``source`` if given."""

    def __init__(self, target: Target, tokens: dict[str, str], inbox: Inbox, concurrency: int = 200,
                 source: str | None = None) -> None:
        self.target = target
        self.tokens = tokens
        self.inbox = inbox
        self.concurrency = concurrency
        self.source = source
        self.failures: Counter[str] = Counter()
        self.welcomed: dict[str, float] = {}
        self.started = self.all_welcomed = 0.0
        self._sockets: list[ClientConnection] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._opening = 0
        self._ready = asyncio.Event()

    @property
    def connected(self) -> int:
        return len(self._sockets)

    async def open(self) -> None:
        """Return once every user is welcomed (or failed to connect: see ``failures``)."""
        gate = asyncio.Semaphore(self.concurrency)
        nodes = len(self.target.push_urls)
        self._opening = len(self.tokens)
        self.started = time.time()
        self._tasks = [asyncio.create_task(self._session(user, token, self.target.ws_url(i % nodes), gate))
                       for i, (user, token) in enumerate(self.tokens.items())]
        await self._ready.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self._sockets), return_exceptions=True)

    def _opened(self) -> None:
        self._opening -= 1
        if not self._opening:
            self.all_welcomed = time.time()
            self._ready.set()

    async def _session(self, user_id: str, token: str, url: str, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                ws = await self.target.client.open(url, token, self.source)
        except (OSError, TimeoutError, RuntimeError, WebSocketException) as exc:
            self.failures[type(exc).__name__] += 1
            self._opened()
            return
        self.welcomed[user_id] = time.time()
        self._sockets.append(ws)
        self._opened()
        await self._listen(user_id, ws)

    async def _listen(self, user_id: str, ws: ClientConnection) -> None:
        """Record each message as it arrives; ack what arrived within 100 ms of the first unacked one,
        as a browser client would (an idle user costs no timer)."""
        client, unacked, waiting = self.target.client, list[str](), asyncio.Event()
        acker = asyncio.create_task(self._ack_loop(ws, client, unacked, waiting)) if client.acks else None
        try:
            async for data in ws:
                received_ms = time.time() * 1000
                messages, answer = client.read(data)
                if answer is not None:
                    await ws.send(answer)
                for message_id, sent_ms in messages:
                    self.inbox.record(user_id, message_id, received_ms - sent_ms)
                if messages and acker:
                    unacked.extend(message_id for message_id, _ in messages)
                    waiting.set()
        except ConnectionClosed:
            pass
        finally:
            if acker:
                acker.cancel()

    @staticmethod
    async def _ack_loop(ws: ClientConnection, client: Client, unacked: list[str], waiting: asyncio.Event) -> None:
        while True:
            await waiting.wait()
            await asyncio.sleep(ACK_EVERY_SECONDS)
            waiting.clear()
            while unacked:
                ids, unacked[:] = unacked[:1000], unacked[1000:]
                await ws.send(client.ack(ids))
