"""Running a service: a Starlette app on uvicorn with uvicorn's graceful shutdown, and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import uvicorn
from starlette.applications import Starlette

from shared.infra import tracing


@contextlib.asynccontextmanager
async def running(*loops: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run a service's ``loops`` in one ``asyncio.TaskGroup`` while the block runs; on leaving it, cancel them and
    wait until each has ended (a loop that crashed surfaces here instead of dying unseen)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(loop) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()


def run_http(app: Starlette, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn stops accepting, drains requests, then runs the lifespan exit."""
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None, access_log=False, timeout_graceful_shutdown=10)
    tracing.shutdown()  # the spans still buffered, if tracing is on
