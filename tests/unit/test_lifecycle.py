"""The lifecycle writer's coalescing when MongoDB fails, its bound, and when its webhook facts are appended (no MongoDB:
a store stand-in)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.store import NodeCount
from shared.wire.errors import Unavailable


class GatedStore:
    """Stands in for MongoDB: each ``record`` waits for ``gate``, and fails while ``down``; keeps what it stored."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.down = False
        self.stored: list[tuple[dict, dict]] = []

    async def record(self, stages: dict, counts: dict | None = None) -> None:
        await self.gate.wait()
        if self.down:
            raise Unavailable("MongoDB is not answering")
        self.stored.append((stages, counts or {}))


async def test_a_failed_flush_keeps_its_marks_and_merges_those_made_meanwhile_keeping_first_times() -> None:
    """Marks and topic counts of a flush MongoDB refused are written by the next flush, merged with the ones made
    while it failed: each stage keeps its earliest mark, and socket counts add up."""
    store = GatedStore()
    writer = LifecycleWriter(store)  # type: ignore[arg-type]
    writer.mark("dispatched", [("m1", "a")], 1)
    writer.count("t1", "n1", 2, {"dispatched": 1})
    store.down = True
    failing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # the flush is in MongoDB's hands
    writer.mark("dispatched", [("m1", "a")], 5)
    writer.mark("delivered", [("m1", "a")], 6)
    writer.mark("acked", [("m2", "b")], 7)
    writer.count("t1", "n1", 3, {"dispatched": 4, "delivered": 5})
    store.gate.set()
    with pytest.raises(Unavailable):
        await failing
    store.down = False
    await writer.flush()
    assert store.stored == [({("m1", "a"): {"dispatched": 1, "delivered": 6}, ("m2", "b"): {"acked": 7}},
                             {("t1", "n1"): NodeCount(5, {"dispatched": 1, "delivered": 5})})]


async def test_past_max_pending_the_oldest_marks_are_dropped() -> None:
    """With room for two deliveries, marking a third drops the oldest, so a long outage cannot grow memory."""
    store = GatedStore()
    store.gate.set()
    writer = LifecycleWriter(store, max_pending=2)  # type: ignore[arg-type]
    for n in range(3):
        writer.mark("acked", [(f"m{n}", "u")], n + 1)
    await writer.flush()
    assert store.stored == [({("m1", "u"): {"acked": 2}, ("m2", "u"): {"acked": 3}}, {})]


class StalledFeed:
    """Stands in for the webhooks stream on a Redis that takes data and never answers."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()

    async def wanted_stages(self) -> frozenset[str]:
        self.stalled.set()
        await asyncio.Event().wait()
        return frozenset()


async def test_the_marks_reach_mongodb_while_the_webhook_feed_stalls() -> None:
    """A flush writes its marks to MongoDB before it appends their webhook facts: a stalled Redis holds only the facts."""
    store, feed = GatedStore(), StalledFeed()
    store.gate.set()
    writer = LifecycleWriter(store, feed=feed)  # type: ignore[arg-type]
    writer.mark("acked", [("m1", "u")], 3)
    flushing = asyncio.create_task(writer.flush())
    await asyncio.wait_for(feed.stalled.wait(), 5)
    assert store.stored == [({("m1", "u"): {"acked": 3}}, {})]
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing


class ListFeed:
    """Stands in for the webhooks stream: endpoints want ``stages``; the first ``failures`` calls fail like a Redis down."""

    def __init__(self, stages: set[str], failures: int = 0) -> None:
        self.stages = frozenset(stages)
        self.failures = failures
        self.appended: list = []

    async def wanted_stages(self) -> frozenset[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis is down")
        return self.stages

    async def append(self, facts: list) -> int:
        self.appended += facts
        return len(facts)


async def test_facts_of_unwanted_stages_are_not_appended_and_a_failed_append_keeps_the_newest() -> None:
    """Only the stages some endpoint wants become facts; an append Redis refused is retried at the next flush with the
    newest ``max_pending`` facts, in the order they were marked, a delivery naming the node."""
    store, feed = GatedStore(), ListFeed({"delivered", "acked"}, failures=1)
    store.gate.set()
    writer = LifecycleWriter(store, max_pending=3, feed=feed, node="n1")  # type: ignore[arg-type]
    writer.mark("delivered", [("m1", "a"), ("m2", "a")], 1)
    writer.mark("expired", [("m3", "b")], 2)
    writer.mark("acked", [("m1", "a")], 3)
    await writer.flush()
    assert feed.appended == []
    writer.mark("acked", [("m2", "a")], 4, report=False)
    await writer.flush()
    assert [(f.stage, f.message_id, f.user_id, f.at, f.node) for f in feed.appended] == [
        ("delivered", "m2", "a", 1, "n1"), ("acked", "m1", "a", 3, "")]


async def test_a_published_write_appends_its_facts_before_returning_and_raises_if_redis_fails() -> None:
    """``write(publish=True)`` records in MongoDB and appends the wanted facts before it returns, under the given times;
    with Redis down it raises and keeps nothing for the flush (the caller writes again), and without ``publish`` the
    facts wait for the flush."""
    store, feed = GatedStore(), ListFeed({"expired"}, failures=1)
    store.gate.set()
    writer = LifecycleWriter(store, feed=feed)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await writer.write("expired", {("m1", "a"): 5}, publish=True)
    await writer.flush()
    assert feed.appended == []
    await writer.write("expired", {("m1", "a"): 5, ("m2", "b"): 6}, publish=True)
    assert [(f.stage, f.message_id, f.user_id, f.at) for f in feed.appended] == [("expired", "m1", "a", 5),
                                                                                  ("expired", "m2", "b", 6)]
    await writer.write("expired", {("m3", "c"): 7})
    assert len(feed.appended) == 2
    await writer.flush()
    assert [(f.message_id, f.at) for f in feed.appended[2:]] == [("m3", 7)]
    assert [stages for stages, _ in store.stored if stages] == [
        {("m1", "a"): {"expired": 5}}, {("m1", "a"): {"expired": 5}, ("m2", "b"): {"expired": 6}}, {("m3", "c"): {"expired": 7}}]
