"""Group commit: callers that arrive while a write is running share the next one.

One writer at a time runs ``flush`` on everything submitted since it last started, and hands each
caller its own slice of the result (or the error). Idle, a call goes out at once; under load, many
calls become one bulk write, so the cost of a MongoDB insert or a Redis round trip is paid per
batch, not per request, with no timer adding latency.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self.flush = flush
        self._queue: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> list[R]:
        """``flush``'s results for ``items``, once a write that includes them has finished."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self.flush([item for items, _ in batch for item in items])
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for items, future in batch:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
