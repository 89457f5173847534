"""Persistent, authenticated websocket links from dispatch to push nodes: one per node, many batches in flight.

Each side proves it holds the internal key without sending it (``shared.wire.signing``): dispatch signs
the handshake for the node id it means to reach, and sends nothing until the node's answer verifies."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from shared.cluster.routes import NodeCard
from shared.infra.background import Background
from shared.infra.clock import now_ms
from shared.wire.errors import LinkDown
from shared.wire.protocol import BatchResult, DeliverBatch, Delivery
from shared.wire.signing import PROOF_HEADER, LinkRequest

log = logging.getLogger(__name__)


class NodeLink:
    def __init__(self, card: NodeCard, key: str, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.card = card
        self.key = key
        self.timeout = timeout
        self.tls = tls  # verifies a wss:// node's certificate
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[BatchResult]] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()
        self.in_flight = 0  # batches sent (or being sent) and not yet answered

    async def _connection(self) -> ClientConnection:
        async with self._connecting:
            if self._ws is None:
                request = LinkRequest.make(self.key, self.card.id, now_ms(), "GET", urlsplit(self.card.link_url).path)
                try:
                    secure = self.tls if self.card.link_url.startswith("wss://") else None  # ws:// takes no context
                    ws = await connect(self.card.link_url, additional_headers=request.headers(), compression=None, ssl=secure,
                                       open_timeout=self.timeout, close_timeout=self.timeout, max_size=None)
                except (OSError, WebSocketException, TimeoutError) as exc:
                    raise LinkDown(f"cannot reach {self.card.id}: {exc!r}") from None
                assert ws.response is not None
                if not request.answered(self.key, ws.response.headers.get(PROOF_HEADER, "")):
                    await ws.close()
                    log.warning("link refused: the node did not prove it holds the internal key",
                                extra={"node": self.card.id, "url": self.card.link_url})
                    raise LinkDown(f"{self.card.id} at {self.card.link_url} did not prove it holds the internal key")
                self._ws = ws
                self._reader = asyncio.create_task(self._read(self._ws))
                log.info("link open", extra={"node": self.card.id})
            return self._ws

    async def warm(self) -> None:
        """Open the link ahead of its first batch; a node that cannot be reached now is the first send's to report."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._connection()
        except (LinkDown, TimeoutError):
            pass

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                result = BatchResult.decode(data)
                waiter = self._pending.pop(result.batch, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(result)
        except (ConnectionClosed, Exception) as exc:  # any failure ends the link; senders retry
            log.warning("link lost", extra={"node": self.card.id, "error": repr(exc)})
        finally:
            if self._ws is ws:
                self._ws = None
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(LinkDown(f"link to {self.card.id} closed"))
            self._pending.clear()

    async def send(self, items: list[Delivery], at: int, trace: tuple[str, ...] = ()) -> BatchResult:
        """Send one batch and wait for the node's answer, all of it (connecting, writing, answer) within ``timeout``:
        a node that is hung (alive in Redis, not reading) fails its batch here and holds up no other node."""
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout):
                ws = await self._connection()
                batch = DeliverBatch(next(self._ids), at, tuple(items), trace)
                waiter = asyncio.get_running_loop().create_future()
                self._pending[batch.batch] = waiter
                try:
                    await ws.send(batch.encode())
                    result: BatchResult = await waiter
                    return result
                finally:
                    self._pending.pop(batch.batch, None)
        except (ConnectionClosed, TimeoutError) as exc:
            raise LinkDown(f"{self.card.id}: {exc!r}") from None
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class LinkPool:
    """The links to the currently live nodes: a node that appears has its link opened, one that disappears closed."""

    def __init__(self, key: str, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.key = key
        self.timeout = timeout
        self.tls = tls
        self.links: dict[str, NodeLink] = {}
        self._opening = Background()
        self._closing = Background()

    def get(self, card: NodeCard) -> NodeLink:
        link = self.links.get(card.id)
        if link is None:
            link = self.links[card.id] = NodeLink(card, self.key, self.timeout, self.tls)
        return link

    def retain(self, live: dict[str, NodeCard]) -> None:
        """Keep links to exactly the ``live`` nodes. Close those of nodes gone, or come back at another link URL, in
        the background: a hung node's card expires while it does not answer, and nobody may wait for it. Open one to
        each node not linked yet, in the background too, so its first batch does not wait for the handshake (a
        millisecond or two, for the first messages after a start or a node's arrival)."""
        for node_id in [n for n, link in self.links.items() if n not in live or live[n].link_url != link.card.link_url]:
            self._closing.start(self.links.pop(node_id).close())
        for card in live.values():
            if card.id not in self.links:
                self._opening.start(self.get(card).warm())

    async def close(self) -> None:
        for task in self._opening.tasks:
            task.cancel()
        self.retain({})
        await asyncio.gather(*self._opening.tasks, *self._closing.tasks, return_exceptions=True)
