"""A node writes each topic's messages in offset order, also when two links bring them at once (no network)."""

from __future__ import annotations

import asyncio

from services.push.link import publish
from services.push.sequencer import Sequencer
from shared.cluster.topic_log import TopicState
from shared.model.topics import Logged, Position
from shared.wire.protocol import Delivery, MessageFrame

EPOCH = "e1"


class HeldReads:
    """The topic's history, answered only once the test lets it (a slow Redis read of a hole)."""

    def __init__(self, history: list[Logged], last: int) -> None:
        self.history, self.last = history, last
        self.release = asyncio.Event()

    async def read(self, wanted: dict[str, int | None]) -> dict[str, TopicState]:
        await self.release.wait()
        return {topic: TopicState(Position(self.last, EPOCH), self.history) for topic in wanted}


class WrittenOrder:
    """The part of the hub ``publish`` uses: one subscriber, and the order messages were written to it."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def subscribers(self, topic: str) -> int:
        return 1

    async def publish(self, message_id: str, frame: bytes, topic: str, high: bool = False, offset: int = 0) -> int:
        self.written.append(message_id)
        return 1


def delivery(offset: int) -> Delivery:
    frame = MessageFrame(f"m{offset}", offset, 0, "news").encode()
    return Delivery(f"m{offset}", frame, 0, (), "news", position=Position(offset, EPOCH))


def logged(offset: int) -> Logged:
    return Logged(offset, f"m{offset}", 0, MessageFrame(f"m{offset}", offset, 0, "news").encode())


async def racing(last: int, *offsets: int) -> tuple[HeldReads, WrittenOrder, asyncio.Future[list[int]]]:
    """Offset 20 written and 21 in the history (whose position is ``last``): ``offsets`` published at once, as by two
    links, and the loop run a few turns while the history read is still held. Gives the publishes' results to come."""
    reads = HeldReads([logged(21)], last=last)
    sequencer, hub = Sequencer(reads), WrittenOrder()
    sequencer.seed("news", Position(20, EPOCH))
    results = asyncio.gather(*(publish(hub, delivery(offset), sequencer) for offset in offsets))
    for _ in range(5):
        await asyncio.sleep(0)
    return reads, hub, results


async def test_a_message_after_a_hole_being_filled_waits_for_the_fill() -> None:
    """With offset 20 written, 22 (a hole at 21) and then 23 arrive on two links: 23 is written after 21 and 22, not
    while the hole's history read is still out."""
    reads, hub, results = await racing(23, 22, 23)
    assert hub.written == []
    reads.release.set()
    assert await results == [1, 1]
    assert hub.written == ["m21", "m22", "m23"]


async def test_a_late_copy_waiting_for_its_turn_is_dropped() -> None:
    """A retried copy of 21 arriving while the hole before 22 is filled is not written a second time."""
    reads, hub, results = await racing(22, 22, 21)
    reads.release.set()
    assert await results == [1, 0]
    assert hub.written == ["m21", "m22"]


async def test_a_subscriber_told_a_new_epoch_gets_it_from_its_start_though_the_node_tracked_the_old_one() -> None:
    """After the history was lost (Redis restarted empty), a socket told offset 0 of the new epoch gets 1-3 before 4,
    even if they never reached this node (its topics not registered again yet) and it still tracked the old epoch."""
    history = [logged(n) for n in (1, 2, 3)]
    reads = HeldReads(history, last=4)
    reads.release.set()
    sequencer, hub = Sequencer(reads), WrittenOrder()
    sequencer.seed("news", Position(57, "e0"))
    sequencer.seed("news", Position(0, EPOCH))
    assert await publish(hub, delivery(4), sequencer) == 1
    assert hub.written == ["m1", "m2", "m3", "m4"]
