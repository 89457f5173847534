"""A push node's route and topic-count writes: what one flush writes, decided from the hub at flush time (no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.push.hub import Hub, Session
from services.push.registrar import Registrar
from shared.cluster.routes import NodeCard
from tests.unit.test_hub import session

Write = tuple[dict[str, int], list[str], dict[str, int]]


class RecordingWriter:
    """Stands in for the node's Redis writer: keeps each flush's writes, fails the first ``failures`` of them, and
    answers the topic names an earlier life of the node left."""

    def __init__(self, names: tuple[str, ...] = (), failures: int = 0, route_ttl: int = 3600) -> None:
        self.redis = self  # TopicReader(writer.redis).names() reads SMEMBERS from here
        self.names = names
        self.failures = failures
        self.route_ttl = route_ttl
        self.writes: list[Write] = []

    async def smembers(self, _: str) -> set[bytes]:
        return {n.encode() for n in self.names}

    async def apply(self, present: dict[str, int], gone: list[str], topics: dict[str, int]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis is not answering")
        self.writes.append((present, sorted(gone), topics))


def presence(writer: RecordingWriter, hub: Hub, heartbeat_interval: float = 10) -> Registrar:
    return Registrar(writer, hub, lambda: NodeCard("n1", "ws://l", "ws://p"), heartbeat_interval,  # type: ignore[arg-type]
                    lambda reason: None)


def joined(hub: Hub, user: str, topics: tuple[str, ...] = ()) -> Session:
    s = session(user)
    hub.add(s)
    hub.subscribe(s, topics)
    return s


@asynccontextmanager
async def flushing(p: Registrar) -> AsyncIterator[None]:
    """The node's flusher running for the block."""
    flusher = asyncio.create_task(p.run_flusher())
    try:
        yield
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)


async def test_the_first_flush_writes_the_local_count_of_every_topic_an_earlier_life_left() -> None:
    """A node restarted under its id writes 0 for each topic Redis still names, and its own count for its own."""
    hub, writer = Hub(), RecordingWriter(names=("old", "live"))
    p = presence(writer, hub)
    joined(hub, "u", ("live",))
    async with flushing(p):
        await p.subscribed(["live"])
    assert writer.writes == [({}, [], {"old": 0, "live": 1})]


async def test_a_close_and_reopen_before_the_flush_is_written_as_the_users_final_count() -> None:
    """Connects and closes within one flush window become one write per user, read from the hub when it is written:
    the count of a user still here, a delete for a user gone."""
    hub, writer = Hub(), RecordingWriter()
    p = presence(writer, hub)
    async with flushing(p):
        await p.subscribed([])  # the first flush (the earlier life's topics) is done
        writer.writes.clear()
        hub.remove(joined(hub, "u"))
        p.left("u")
        joined(hub, "u")
        joined(hub, "u")
        p.left("gone")
        await p.arrived("u")
    assert writer.writes == [({"u": 2}, ["gone"], {})]


async def test_a_failed_write_is_kept_and_retried_with_the_changes_made_meanwhile() -> None:
    """A write Redis refused is kept: its users and topics are written again by the retry, from the hub as it is
    then (a user who left meanwhile is deleted), together with later changes; the waiters return after it."""
    hub, writer = Hub(), RecordingWriter(failures=1)
    p = presence(writer, hub)
    first = joined(hub, "a", ("t",))
    arriving = asyncio.create_task(p.arrived("a"))
    p.unsubscribed(["t"])
    await asyncio.sleep(0)  # "a" is dirty before the flusher starts
    async with flushing(p):
        await asyncio.sleep(0)  # the first write fails; the flusher backs off
        assert (writer.failures, writer.writes) == (0, [])
        hub.remove(first)
        p.left("a")
        joined(hub, "b")
        await asyncio.gather(arriving, p.arrived("b"))
    routes: dict[str, int] = {}
    topics: dict[str, int] = {}
    for present, gone, counts in writer.writes:  # what Redis holds after the writes, in their order
        routes = {u: n for u, n in (routes | present).items() if u not in gone}
        topics |= counts
    assert (routes, topics) == ({"b": 1}, {"t": 0})
    assert "a" in writer.writes[0][1], "the kept user is written (as gone) by the retry"


def test_each_heartbeat_renews_a_slice_so_every_route_is_renewed_three_times_per_route_ttl() -> None:
    """With a 30 s route TTL and a 1 s heartbeat (10 beats per third of the TTL), 25 users are renewed 3 per beat,
    each once in the first 9 beats, and the 10th starts over."""
    hub = Hub()
    users = [f"u{n:02d}" for n in range(25)]
    for user in users:
        joined(hub, user)
    p = presence(RecordingWriter(route_ttl=30), hub, heartbeat_interval=1)
    cursor: list[str] = []
    beats = []
    for _ in range(10):
        cursor, renewed = p._renewal_slice(cursor, hub.users, len(hub))
        beats.append(renewed)
    assert all(len(b) <= 3 for b in beats)
    assert sorted(u for b in beats[:9] for u in b) == users
    assert beats[9] == beats[0]
