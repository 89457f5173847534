"""One keepalive pass over a node's sockets: who is closed, who is pinged, and who is left for the next pass."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.protocol import State

from services.push.keepalive import SLICE, Keepalive


@dataclass
class Socket:
    """What a pass reads of a websockets connection; ``ping`` never returns while the socket's buffer is full, as
    websockets' waits for the buffer to drain."""

    name: str
    state: State = State.OPEN
    paused: bool = False
    pending_pings: dict[bytes, tuple[Any, float]] = field(default_factory=dict)  # as websockets': (pong future, sent at)
    closed_with: tuple[int, str] | None = None

    @property
    def protocol(self) -> Socket:
        return self

    async def ping(self) -> None:
        if self.paused:
            await asyncio.Event().wait()
        self.pending_pings[b"p"] = (None, asyncio.get_running_loop().time())

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def __hash__(self) -> int:
        return hash(self.name)


async def test_a_pass_closes_the_silent_pings_the_open_and_skips_the_closing_and_the_backed_up_without_waiting() -> None:
    """A socket with a ping unanswered for an interval is closed with 1011; one pinged less than an interval ago (its
    place in the pass moved up) waits; a backed-up or closing one is not pinged (a ping would wait on it and hold up
    the rest); the others get a ping."""
    now = asyncio.get_running_loop().time()
    silent, recent = Socket("silent", pending_pings={b"p": (None, now - 21)}), Socket("recent", pending_pings={b"p": (None, now - 5)})
    backed_up, closing, lively = Socket("backed-up", paused=True), Socket("closing", state=State.CLOSING), Socket("lively")
    keepalive = Keepalive(interval=20)
    for ws in (silent, recent, backed_up, closing, lively):
        keepalive.watch(ws)  # type: ignore[arg-type]
    await asyncio.wait_for(keepalive.ping_all(), 1)
    await asyncio.sleep(0)  # the close runs as a task of its own
    assert silent.closed_with == (1011, "keepalive ping timeout")
    assert recent.closed_with is None and recent.pending_pings == {b"p": (None, now - 5)}
    assert lively.pending_pings and not backed_up.pending_pings and not closing.pending_pings
    assert backed_up.closed_with is None and closing.closed_with is None and lively.closed_with is None


@dataclass
class Timed(Socket):
    """A socket that notes the loop's time of its ping."""

    pinged_at: float | None = None

    async def ping(self) -> None:
        self.pinged_at = asyncio.get_running_loop().time()
        await super().ping()

    def __hash__(self) -> int:
        return hash(self.name)


async def test_a_pass_spreads_its_pings_over_the_interval_in_slices() -> None:
    """Two and a half slices of sockets over 0.3 s: three slices, each pinged a third of the interval after the one
    before, so no slice holds the loop for the whole node."""
    count = SLICE * 5 // 2
    sockets = [Timed(f"s{i}") for i in range(count)]
    keepalive = Keepalive(interval=0.3)
    for ws in sockets:
        keepalive.watch(ws)  # type: ignore[arg-type]
    start = asyncio.get_running_loop().time()
    await asyncio.wait_for(keepalive.ping_all(spread=0.3), 5)
    times = sorted(ws.pinged_at - start for ws in sockets if ws.pinged_at is not None)
    assert len(times) == count
    slices = [times[:SLICE], times[SLICE:2 * SLICE], times[2 * SLICE:]]  # apart by the gaps below: each pinged together
    assert slices[0][0] >= 0.09 and slices[1][0] - slices[0][-1] >= 0.09 and slices[2][0] - slices[1][-1] >= 0.09


async def test_a_pass_over_no_socket_still_waits_its_interval() -> None:
    """With nothing to ping, the keepalive task sleeps its interval rather than spinning."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await Keepalive(interval=0.2).ping_all(spread=0.2)
    assert loop.time() - start >= 0.19
