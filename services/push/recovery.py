"""A node's reads of topic positions and histories, shared by every subscribe waiting at the same time.

A subscribe needs its topics' current positions, and a recovering one the history after its position
(``shared.cluster.topic_log``). Subscribes that arrive while a read is under way wait for the next one,
which reads every topic they name once, from the lowest position any of them asks for: 5,000 sockets
resubscribing to one topic after a network blip cost a handful of Redis reads on their node, not 5,000.
Every subscribe is queued only after its subscription is registered, and a read takes only what was
queued before it starts; so each read sees every message that did not reach the node live.
"""

from __future__ import annotations

import asyncio

from services.push.metrics import HISTORY_READS
from shared.cluster.topic_log import TopicLog, TopicState
from shared.infra.clock import now_ms


class TopicReads:
    def __init__(self, topic_log: TopicLog) -> None:
        self.log = topic_log
        self._waiting: dict[str, list[tuple[int | None, asyncio.Future[TopicState]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def read(self, wanted: dict[str, int | None]) -> dict[str, TopicState]:
        """Each topic's state, with its history after the offset given (None: its position only)."""
        loop = asyncio.get_running_loop()
        futures = {}
        for topic, after in wanted.items():
            futures[topic] = loop.create_future()
            self._waiting.setdefault(topic, []).append((after, futures[topic]))
        if self._reader is None:
            self._reader = loop.create_task(self._read_all())
        return {topic: await future for topic, future in futures.items()}

    async def _read_all(self) -> None:
        """Read what is waiting, batch after batch, until nothing is."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                lowest = {topic: min((a for a, _ in asks if a is not None), default=None) for topic, asks in batch.items()}
                try:
                    states = await self.log.read(lowest, now_ms())
                except Exception as exc:  # each waiting subscribe gets the failure; the node goes on
                    for asks in batch.values():
                        for _, future in asks:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                HISTORY_READS.inc()
                for topic, asks in batch.items():
                    for _, future in asks:
                        if not future.done():
                            future.set_result(states[topic])
        finally:
            self._reader = None
