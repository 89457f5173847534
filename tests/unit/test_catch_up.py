"""A push node sends its open sessions what waits in their inboxes after Redis's state was rebuilt (stand-ins for the
inbox and the sockets; the retries and the epoch watch are the logic under test)."""

from __future__ import annotations

import asyncio
import contextlib

from services.push.hub import Hub, Session
from services.push.replay import Replayer
from shared.delivery.lifecycle import LifecycleWriter
from shared.wire.errors import Unavailable
from tests.unit.test_hub import FakeSocket
from tests.waits import until


class SendingSocket(FakeSocket):
    """A server connection stand-in that also records what ``send`` wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    async def send(self, data: bytes, text: bool = False) -> None:
        self.sent.append(data)


class RebuildingInbox:
    """Stands in for the inbox: ``epochs`` are read in turn (the last one stays); while ``rebuilding`` is above 0 each read
    of the inboxes fails as during a rebuild and counts it down."""

    def __init__(self, epochs: list[str | None], rebuilding: int = 0) -> None:
        self.epochs = epochs
        self.rebuilding = rebuilding
        self.waiting = {"alice": ["m1"]}

    async def epoch(self) -> str | None:
        return self.epochs.pop(0) if len(self.epochs) > 1 else self.epochs[0]

    async def pending(self, users: list[str], limit: int) -> list[list[str]]:
        if self.rebuilding:
            self.rebuilding -= 1
            raise Unavailable("the delivery state is being rebuilt")
        return [self.waiting.get(u, []) for u in users]

    async def frames(self, ids: list[str], now_ms: int) -> list[bytes | None]:
        return [f"frame of {i}".encode() for i in ids]


class NoStore:
    """The lifecycle's store, never reached: these tests do not flush."""


def node(inbox: RebuildingInbox) -> tuple[Replayer, SendingSocket]:
    hub = Hub()
    socket = SendingSocket()
    hub.add(Session(socket, "alice", replaying=False, welcomed=True))  # type: ignore[arg-type]
    replayer = Replayer(hub, inbox, LifecycleWriter(NoStore()), limit=100, page=10, concurrency=4)  # type: ignore[arg-type]
    return replayer, socket


async def test_a_node_that_never_read_an_epoch_replays_once_the_rebuild_gives_one() -> None:
    """A node started just before Redis was lost reads no epoch (the state is incomplete) until the rebuild writes one:
    that change replays its open sessions, as a change from an epoch it had read does."""
    replayer, socket = node(RebuildingInbox([None, None, "e2"]))
    watching = asyncio.create_task(replayer.watch_epoch(0.01))
    try:
        await until(lambda: asyncio.sleep(0, socket.sent), lambda sent: sent == [b"frame of m1"],
                    what="the waiting message replayed after the rebuild", timeout=5)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def test_a_catch_up_begun_during_the_rebuild_retries_until_the_inbox_can_be_read() -> None:
    """A replay to the open sessions that finds the state incomplete waits it out with backoff instead of giving up."""
    replayer, socket = node(RebuildingInbox(["e1"], rebuilding=2))
    await asyncio.wait_for(replayer.replay_open_sessions("node card was missing a beat ago"), 10)
    assert socket.sent == [b"frame of m1"]
