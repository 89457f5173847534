"""Taking a node out of service without losing a message: ``POST /v1/drain`` or SIGTERM.

A drain withdraws the node's routes and card, so dispatch stops routing here (within its 1 s cache
of live nodes): what arrives for this node's users meanwhile waits in their inboxes, and the node
they reconnect to replays it. The server answers new upgrades with 503. Every open socket is told
when to leave and where to: a ``ReconnectFrame`` whose ``after_ms`` spreads the sockets evenly over
``DRAIN_SECONDS``, so the other nodes are not stampeded, and whose ``url`` is another live node's,
dealt round-robin over them (none when there is no other). Sockets keep getting what dispatch had
already sent here until they leave; those still open at the end of the window are closed with 1001.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from websockets.asyncio.server import broadcast

from services.push.hub import PUBLISH_SLICE, Hub
from services.push.registrar import Registrar
from shared.infra.clients import REDIS_FAILURES
from shared.wire.errors import CloseCode
from shared.wire.protocol import ReconnectFrame

log = logging.getLogger(__name__)


def advice(count: int, window_ms: int, urls: Sequence[str]) -> list[ReconnectFrame]:
    """The advice for ``count`` sockets: the i-th leaves after ``window_ms * i / count`` ms, for ``urls[i % len(urls)]``."""
    return [ReconnectFrame(window_ms * i // count, urls[i % len(urls)] if urls else None) for i in range(count)]


class Drain:
    """Runs once, however many times it is asked for (``POST /v1/drain`` and then SIGTERM, say)."""

    def __init__(self, hub: Hub, registrar: Registrar, others: Callable[[], Awaitable[list[str]]], seconds: float) -> None:
        self.hub = hub
        self.registrar = registrar
        self.others = others
        self.seconds = seconds
        self.task: asyncio.Task[None] | None = None
        self._closing: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return self.task is not None

    def start(self) -> asyncio.Task[None]:
        """Start the drain unless it already is; the task ends once no socket is left or the last were told to close
        (a shutdown then waits for their closing handshakes)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return self.task

    async def _run(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.seconds
        try:
            await self.registrar.withdraw()
        except REDIS_FAILURES as exc:
            log.warning("could not withdraw routes; they expire with the node card", extra={"error": repr(exc)})
        try:
            urls = await self.others()
        except REDIS_FAILURES as exc:
            urls = []
            log.warning("could not read the live nodes; reconnect advice names none", extra={"error": repr(exc)})
        sessions = [s for s in self.hub.sessions() if s.open]
        log.info("draining", extra={"count": len(sessions), "nodes": urls, "seconds": self.seconds})
        frames = advice(len(sessions), int(self.seconds * 1000), urls)
        for start in range(0, len(sessions), PUBLISH_SLICE):
            if start:
                await asyncio.sleep(0)  # let the loop serve others between slices
            for session, frame in zip(sessions[start:start + PUBLISH_SLICE], frames[start:start + PUBLISH_SLICE]):
                broadcast([session.ws], frame.encode())  # written without awaiting; skipped if it is closing
        try:
            async with asyncio.timeout_at(deadline):
                await self.hub.empty.wait()
        except TimeoutError:
            pass
        left = self.hub.sessions()
        self.hub.flush_bundles()  # what waits for them goes out before their close
        self._closing = [asyncio.create_task(s.ws.close(CloseCode.GOING_AWAY, "node drained")) for s in left]
        log.info("drained", extra={"node_closed": len(left)})
