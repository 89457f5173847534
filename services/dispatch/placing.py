"""Giving topic messages their positions, in the order their nodes are sent them.

Each stream shard has its own read loop; two loops placing messages of one topic at once could send
them to a node in the other order than their offsets. So one loop at a time places its cycle's topic
messages (``shared.cluster.topic_log``), reads which nodes hold their topics, and starts its sends: a
node is written them in offset order, as its subscribers must receive them. Cycles without topic
messages do not wait. (Across several dispatch instances, or for a retried batch, live order is not
promised; recovery still is, and clients drop duplicates by offset or id.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from shared.cluster.topic_log import TopicLog
from shared.model.message import Message
from shared.model.topics import Position


class Placing:
    def __init__(self, topic_log: TopicLog) -> None:
        self.log = topic_log
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def place(self, messages: Sequence[Message], now: int) -> AsyncIterator[dict[str, Position]]:
        """Each message's position (``{}`` for none), held as this loop's turn until the block ends: the block reads
        the holders and starts the sends."""
        if not messages:
            yield {}
            return
        async with self._turn:
            yield await self.log.append(messages, now)
