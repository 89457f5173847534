"""Client acknowledgements, closed in Redis in batches: one flush per short window, whoever sent them.

A flush closes the acked deliveries in the users' inboxes (only ids in the acking user's own inbox
count, so nobody can acknowledge someone else's message) and marks exactly those ``acked`` in the
lifecycle. A failed flush is kept and retried with backoff.

What waits is bounded: at most ``max_pending`` acks (``MAX_PENDING_ACKS``) are kept while Redis is down;
past that the newest are dropped, counted in ``push_acks_dropped_total`` and logged once per flush attempt.
A dropped ack only leaves its message open in the user's inbox, so it is sent again on a later replay (at
least once; the client drops it by id): the node's memory stays bounded however long Redis is away.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.push.metrics import ACKS_DROPPED
from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.infra.retry import Backoff
from shared.model.message import Pair

log = logging.getLogger(__name__)

WINDOW_SECONDS = 0.02
MAX_PENDING_ACKS = 100_000  # acks kept for a flush while Redis is down (~100 bytes each: ~10 MB)


class Acks:
    def __init__(self, inbox: Inbox, lifecycle: LifecycleWriter, max_pending: int = MAX_PENDING_ACKS) -> None:
        self.inbox = inbox
        self.lifecycle = lifecycle
        self.max_pending = max_pending
        self._pending: list[Pair] = []
        self._dropped = 0  # since the last log line
        self._wake = asyncio.Event()

    def add(self, user_id: str, message_ids: tuple[str, ...]) -> None:
        room = self.max_pending - len(self._pending)
        if room < len(message_ids):
            self._drop(len(message_ids) - max(room, 0))
            message_ids = message_ids[:max(room, 0)]
        self._pending.extend((m, user_id) for m in message_ids)
        self._wake.set()

    def _drop(self, count: int) -> None:
        ACKS_DROPPED.inc(count)
        self._dropped += count

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        pairs, self._pending = self._pending, []
        try:
            closed = await self.inbox.close(pairs)
        except RedisError:
            kept = pairs + self._pending  # the failed batch first, then what came meanwhile, up to the cap
            if len(kept) > self.max_pending:
                self._drop(len(kept) - self.max_pending)
            self._pending = kept[:self.max_pending]
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
                if self._dropped:
                    log.warning("acks dropped past the backlog cap; their messages will be sent again",
                                extra={"count": self._dropped, "cap": self.max_pending})
                    self._dropped = 0
                await backoff.failed(log, "ack flush", exc)
