"""Group commit: callers that arrive while a write is running share the next one.

One writer at a time runs ``flush`` on everything submitted since it last started, and hands each
caller its own slice of the result (or the error). Idle, a call goes out at once; under load, many
calls become one bulk write, so the cost of a MongoDB insert or a Redis round trip is paid per
batch, not per request, with no timer adding latency. ``backlog`` says how many calls wait and for
how long, the measure of a write path falling behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self.flush = flush
        self._queue: list[tuple[list[T], asyncio.Future[list[R]], float]] = []
        self._writer: asyncio.Task[None] | None = None
        self._writing: tuple[int, float] = (0, 0.0)  # calls in the write running now, and when the first was submitted

    async def submit(self, items: list[T]) -> list[R]:
        """``flush``'s results for ``items``, once a write that includes them has finished."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future, time.monotonic()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    def backlog(self) -> tuple[int, float]:
        """Calls submitted and not answered yet, and how long the oldest of them has waited (seconds; 0 if none)."""
        writing, since = self._writing
        calls = writing + len(self._queue)
        if not writing and self._queue:
            since = self._queue[0][2]
        return calls, time.monotonic() - since if calls else 0.0

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self._writing = (len(batch), batch[0][2])
            try:
                results = await self.flush([item for items, _, _ in batch for item in items])
            except Exception as exc:  # every caller of this batch gets the error
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._writing = (0, 0.0)
            start = 0
            for items, future, _ in batch:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
