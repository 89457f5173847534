"""Websocket keepalive for every socket of the node from one task: a ping per socket each interval.

websockets' own keepalive runs a task per connection (its coroutine, its sleep's timer: 1.7 KB of the ~19 KB an
idle socket cost). Here one loop visits every open socket (browsers' and dispatch links alike) once per
``PING_INTERVAL_SECONDS``: a socket whose ping of the previous pass is still unanswered is closed with 1011, as
websockets' keepalive would; the others get a new ping. A pong is thus due within one interval, and a dead peer
is found within two. A socket that is closing, or whose client stopped reading (its buffer full, which the hub's
``MAX_BUFFERED_BYTES`` deals with), waits for the next pass: its ping would wait for the close or the drain, and hold
up every socket after it.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from services.push.metrics import UNANSWERED
from shared.infra.background import Background
from shared.wire.errors import CloseCode

log = logging.getLogger(__name__)

SLICE = 1000  # sockets pinged between two yields to the loop


class Keepalive:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._sockets: set[ServerConnection] = set()
        self._closing = Background()  # close handshakes of silent sockets

    def watch(self, ws: ServerConnection) -> None:
        self._sockets.add(ws)

    def unwatch(self, ws: ServerConnection) -> None:
        self._sockets.discard(ws)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.ping_all()

    async def ping_all(self) -> None:
        """Close the sockets that left the last pass's ping unanswered (1011), ping the others."""
        silent = 0
        for i, ws in enumerate(list(self._sockets)):
            if i and not i % SLICE:
                await asyncio.sleep(0)
            if ws not in self._sockets:  # closed meanwhile
                continue
            if ws.pending_pings:
                silent += 1
                self._sockets.discard(ws)
                self._closing.start(ws.close(CloseCode.INTERNAL, "keepalive ping timeout"))
                continue
            if ws.protocol.state is not State.OPEN or ws.paused:  # closing, or backed up: next pass
                continue
            try:
                await ws.ping()  # its pong clears ``pending_pings``; the future it returns is not needed
            except ConnectionClosed:
                self._sockets.discard(ws)
        if silent:
            UNANSWERED.inc(silent)
            log.warning("closed sockets that did not answer a ping", extra={"count": silent, "close_code": CloseCode.INTERNAL})
