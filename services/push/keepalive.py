"""Websocket keepalive for every socket of the node from one task: a ping per socket each interval.

websockets' own keepalive runs a task per connection (its coroutine, its sleep's timer: 1.7 KB of the ~19 KB an
idle socket cost). Here one loop visits every open socket (browsers' and dispatch links alike) once per
``PING_INTERVAL_SECONDS``: a socket whose ping has gone unanswered for a whole interval is closed with 1011, as
websockets' keepalive would; the others get a new ping, but for those with a younger ping unanswered, which wait for
the next pass. A pong is thus due within one interval, and a dead peer is found within two or three. A socket that
is closing, or whose client stopped reading (its buffer full, which the hub's ``MAX_BUFFERED_BYTES`` deals with),
waits for the next pass: its ping would wait for the close or the drain, and hold up every socket after it.

A pass is spread over its interval, in slices of ``SLICE`` sockets. Pinged all at once, a node's thousand sockets
held its loop for tens of milliseconds, their pongs as long again, and every message that arrived meanwhile waited:
in a 20 s latency run, that one moment held a third of the slowest 1% of the messages. A socket's place in a pass
moves as others come and go, so two visits can be less than an interval apart: hence the ping's age, not the pass,
decides.
"""

from __future__ import annotations

import asyncio
import logging
import math

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from services.push.metrics import UNANSWERED
from shared.infra.background import Background
from shared.wire.errors import CloseCode

log = logging.getLogger(__name__)

SLICE = 20  # sockets pinged together: well under a millisecond of the loop


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
            await self.ping_all(self.interval)

    async def ping_all(self, spread: float = 0.0) -> None:
        """One pass: close the sockets with a ping unanswered for an interval (1011), ping those with none pending; its
        slices each wait an even share of ``spread`` seconds first (the whole of it with no socket to visit)."""
        loop = asyncio.get_running_loop()
        sockets = list(self._sockets)
        slices = max(1, math.ceil(len(sockets) / SLICE))
        if not sockets:
            await asyncio.sleep(spread)
        silent = 0
        for i, ws in enumerate(sockets):
            if not i % SLICE:
                await asyncio.sleep(spread / slices)
            if ws not in self._sockets:  # closed meanwhile
                continue
            if ws.pending_pings:
                if loop.time() - min(sent for _, sent in ws.pending_pings.values()) < self.interval:
                    continue  # pinged less than an interval ago (its place in the pass moved up): the next pass
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
