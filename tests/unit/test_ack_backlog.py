"""A push node's acks while Redis is down: kept for the next flush up to a cap, the rest dropped and counted."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from services.push.acks import Acks
from shared.delivery.inbox import Acked, Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.model.message import Pair


class DownInbox:
    """An inbox whose Redis is down: every acknowledgement fails."""

    calls = 0

    async def acknowledge(self, frames: list[Acked]) -> list[Pair]:
        self.calls += 1
        raise RedisConnectionError("Redis is down")


class NoLifecycle:
    def mark(self, stage: str, pairs: list[Pair]) -> None:
        raise AssertionError("nothing closes while Redis is down")


def dropped() -> float:
    return REGISTRY.get_sample_value("push_acks_dropped_total") or 0.0


def test_acks_kept_while_redis_is_down_stop_at_the_cap_and_the_rest_are_counted_as_dropped() -> None:
    """Acks arriving while every flush fails are kept up to the cap, never more; each one past it is counted."""
    acks = Acks(cast(Inbox, DownInbox()), cast(LifecycleWriter, NoLifecycle()), max_pending=1_000)
    before = dropped()

    async def flush_failing() -> None:
        with pytest.raises(RedisConnectionError):
            await acks.flush()

    for batch in range(30):
        acks.add(f"user{batch}", tuple(f"{batch:04x}{n:04x}" for n in range(100)))
        asyncio.run(flush_failing())
        assert acks.pending() <= 1_000
    assert acks.pending() == 1_000
    assert dropped() - before == 30 * 100 - 1_000


class Marks:
    """A lifecycle that remembers what was marked."""

    def __init__(self) -> None:
        self.marked: list[tuple[str, list[Pair], int | None]] = []
        self.reported: list[tuple[str, Pair]] = []

    def mark(self, stage: str, pairs: list[Pair], at_ms: int | None = None, report: bool = True) -> None:
        self.marked.append((stage, list(pairs), at_ms))
        self.reported += [(stage, pair) for pair in pairs] if report else []


def test_acks_of_messages_the_node_wrote_are_marked_acked_once_when_redis_refuses_them() -> None:
    """A failed flush marks acked, once, the acks of messages this node wrote to the acking socket, and no other."""
    marks = Marks()
    acks = Acks(cast(Inbox, DownInbox()), cast(LifecycleWriter, marks))
    acks.add("ann", ("m1", "m2"), written=["m1"])

    async def flush_failing() -> None:
        with pytest.raises(RedisConnectionError):
            await acks.flush()

    asyncio.run(flush_failing())
    asyncio.run(flush_failing())
    assert [(stage, pairs) for stage, pairs, _ in marks.marked] == [("acked", [("m1", "ann")])]
    assert acks.pending() == 2, "both still go to Redis"


class ClosedElsewhereInbox:
    """An inbox where another socket's ack (on another node) already closed every delivery: nothing closes here."""

    async def acknowledge(self, frames: list[Acked]) -> list[Pair]:
        return []


def test_an_ack_of_a_written_message_is_marked_even_when_another_sockets_ack_closed_it_first() -> None:
    """An ack of a message this node wrote, which found its delivery already closed, is still marked acked (without a
    second webhook fact): the node whose ack closed it may be SIGKILLed before its mark reaches MongoDB."""
    marks = Marks()
    acks = Acks(cast(Inbox, ClosedElsewhereInbox()), cast(LifecycleWriter, marks))
    acks.add("ann", ("m1", "m2"), written=["m1"])
    asyncio.run(acks.flush())
    assert [(stage, pairs) for stage, pairs, _ in marks.marked] == [("acked", [("m1", "ann")])]
    assert marks.reported == [], "the closing ack's mark reports the fact"
