"""Client acknowledgements, closed in Redis in batches: one flush per short window, whoever sent them.

A flush closes the acked deliveries in the users' inboxes (only ids in the acking user's own inbox
count, so nobody can acknowledge someone else's message) and marks exactly those ``acked`` in the
lifecycle. A failed flush is kept and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from shared.inbox import Inbox
from shared.lifecycle import LifecycleWriter
from shared.message import Pair
from shared.retry import Backoff

log = logging.getLogger(__name__)

WINDOW_SECONDS = 0.02


class Acks:
    def __init__(self, inbox: Inbox, lifecycle: LifecycleWriter) -> None:
        self.inbox = inbox
        self.lifecycle = lifecycle
        self._pending: list[Pair] = []
        self._wake = asyncio.Event()

    def add(self, user_id: str, message_ids: tuple[str, ...]) -> None:
        self._pending.extend((m, user_id) for m in message_ids)
        self._wake.set()

    async def flush(self) -> None:
        pairs, self._pending = self._pending, []
        try:
            closed = await self.inbox.close(pairs)
        except RedisError:
            self._pending[:0] = pairs
            raise
        self.lifecycle.mark("acked", closed)

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            await asyncio.sleep(WINDOW_SECONDS)
            self._wake.clear()
            try:
                await self.flush()
                backoff.succeeded()
            except RedisError as exc:
                self._wake.set()
                await backoff.failed(log, "ack flush", exc)
