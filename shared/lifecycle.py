"""Batched lifecycle writes: services mark stages as they happen; one loop writes them in bulk.

Marking never waits on MongoDB, so a slow database cannot slow delivery. A failed flush is kept and
retried with backoff; past ``max_pending`` ids the oldest marks are dropped with a warning (they
only refine the status view: an unrecorded ack means one extra redelivery, never a loss).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from shared.errors import Unavailable
from shared.retry import Backoff
from shared.store import STAGES, MessageStore

log = logging.getLogger(__name__)


class LifecycleWriter:
    def __init__(self, store: MessageStore, interval: float = 1.0, max_pending: int = 200_000) -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[tuple[str, dt.datetime, list[str]]] = []
        self._count = 0

    def mark(self, stage: str, delivery_ids: list[str], at: dt.datetime | None = None) -> None:
        """Record that these deliveries reached ``stage`` at ``at`` (now by default)."""
        if not delivery_ids:
            return
        assert stage in STAGES, stage
        self._pending.append((stage, at or dt.datetime.now(dt.timezone.utc), delivery_ids))
        self._count += len(delivery_ids)
        while self._count > self.max_pending:
            dropped = self._pending.pop(0)
            self._count -= len(dropped[2])
            log.warning("lifecycle backlog full; dropping oldest marks", extra={"code": dropped[0], "count": len(dropped[2])})

    async def flush(self) -> None:
        marks, self._pending, count = self._pending, [], self._count
        self._count = 0
        if not marks:
            return
        try:
            await self.store.record(marks)
        except Unavailable:
            self._pending[:0] = marks
            self._count += count
            raise

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
                backoff.succeeded()
            except Unavailable as exc:
                await backoff.failed(log, "lifecycle write", exc)
