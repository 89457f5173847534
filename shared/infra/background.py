"""Tasks a service starts and does not await, kept until they end.

The event loop holds only a weak reference to a task, so one nobody references can be collected before it ends.
``Background`` references each until it is done, and hands the ones still running to a shutdown that waits for or
cancels them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task, referenced here until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
