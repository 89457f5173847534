"""One keepalive pass over a node's sockets: who is closed, who is pinged, and who is left for the next pass."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.protocol import State

from services.push.keepalive import Keepalive


@dataclass
class Socket:
    """What a pass reads of a websockets connection; ``ping`` never returns while the socket's buffer is full, as
    websockets' waits for the buffer to drain."""

    name: str
    state: State = State.OPEN
    paused: bool = False
    pending_pings: dict[bytes, Any] = field(default_factory=dict)
    closed_with: tuple[int, str] | None = None

    @property
    def protocol(self) -> Socket:
        return self

    async def ping(self) -> None:
        if self.paused:
            await asyncio.Event().wait()
        self.pending_pings[b"p"] = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def __hash__(self) -> int:
        return hash(self.name)


async def test_a_pass_closes_the_silent_pings_the_open_and_skips_the_closing_and_the_backed_up_without_waiting() -> None:
    """A socket with last pass's ping unanswered is closed with 1011; a backed-up or closing one is not pinged (a ping
    would wait on it and hold up the rest); the others get a ping."""
    silent, backed_up = Socket("silent", pending_pings={b"p": None}), Socket("backed-up", paused=True)
    closing, lively = Socket("closing", state=State.CLOSING), Socket("lively")
    keepalive = Keepalive(interval=20)
    for ws in (silent, backed_up, closing, lively):
        keepalive.watch(ws)  # type: ignore[arg-type]
    await asyncio.wait_for(keepalive.ping_all(), 1)
    await asyncio.sleep(0)  # the close runs as a task of its own
    assert silent.closed_with == (1011, "keepalive ping timeout")
    assert lively.pending_pings and not backed_up.pending_pings and not closing.pending_pings
    assert backed_up.closed_with is None and closing.closed_with is None and lively.closed_with is None
