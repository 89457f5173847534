"""Each topic's messages written on this node in offset order, without holes.

A node holding a topic receives all its messages. One arriving more than one past the last the node
wrote (the node was stalled past dispatch's patience, a retried batch was overtaken, two dispatch
instances raced) means the node missed some: it reads them from the topic's history
(``recovery.TopicReads``) and writes them first; one at or before the last is a late copy of what
was already written, and is dropped. So a subscriber that stays connected gets every message of the
topic in offset order, whatever happened between dispatch and the node, as long as the history
still holds the hole (``push_topic_gaps_total`` counts holes filled and not). Two links (two dispatch instances, or a
retry) can bring one topic's messages at once: each is admitted and written in the topic's ``turn``, so the next
message never overtakes a hole being filled. A new subscription's
position seeds a topic the node did not hold, so messages placed after it but arriving out of order
are filled too; a topic without subscribers here is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.push.metrics import TOPIC_GAPS
from services.push.recovery import TopicReads
from shared.model.topics import Logged, Position

log = logging.getLogger(__name__)


class Sequencer:
    def __init__(self, reads: TopicReads) -> None:
        self.reads = reads
        self._last: dict[str, Position] = {}  # per topic held here, the last position written
        self._turns: dict[str, asyncio.Lock] = {}  # per topic held here, whose admit-and-write runs now

    @contextlib.asynccontextmanager
    async def turn(self, topic: str) -> AsyncIterator[None]:
        """Admit and write one message of ``topic`` (and the hole before it) while no other of its messages is."""
        turn = self._turns.get(topic) or self._turns.setdefault(topic, asyncio.Lock())  # a lock made once per topic
        async with turn:
            yield

    def seed(self, topic: str, position: Position) -> None:
        """A subscriber was told ``position``: everything after it must reach this node (if it was not tracking the
        topic yet, it does from there). A position in another epoch than the one tracked (the history was lost since,
        say Redis restarted empty) replaces it: the new epoch's first messages may not have reached this node (its
        topics not registered again yet), and its subscribers are owed them from there."""
        last = self._last.get(topic)
        if last is None or last.epoch != position.epoch:
            self._last[topic] = position

    def forget(self, topic: str) -> None:
        self._last.pop(topic, None)
        if not (turn := self._turns.get(topic)) or not turn.locked():  # a held turn stays, so its waiters share it
            self._turns.pop(topic, None)

    async def admit(self, topic: str, position: Position) -> list[Logged] | None:
        """What must be written before the message at ``position``: the messages missed since the last one written
        (none: ``[]``), or None when it is a late copy of one written already."""
        last = self._last.get(topic)
        if last is not None and last.epoch == position.epoch and position.offset <= last.offset:
            return None
        self._last[topic] = position
        if last is None or last.epoch != position.epoch or position.offset == last.offset + 1:
            return []
        state = (await self.reads.read({topic: last.offset}))[topic]
        missed = [m for m in state.history if last.offset < m.offset < position.offset]
        whole = state.position.epoch == position.epoch and len(missed) == position.offset - last.offset - 1
        TOPIC_GAPS.labels("filled" if whole else "gone").inc()
        log.warning("a hole in a topic's offsets", extra={"topic": topic, "after": last.offset, "before": position.offset,
                                                          "filled": len(missed), "whole": whole})
        return missed if state.position.epoch == position.epoch else []
