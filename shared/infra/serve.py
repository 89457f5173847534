"""Running a service: a Starlette app on uvicorn with uvicorn's graceful shutdown, its background loops, and the
garbage collector's pace.

The collector: at CPython's default pace (a young collection every 700 net allocations) the objects of
the batches in flight (frames, pipelines, futures) keep being promoted, and the full collections that
follow walk every long-lived object (a node's thousands of sockets). py-spy ``--native`` under
``make bench`` steady put 18% of a push node's CPU in the collector, 4-5% of collect's and dispatch's.
With ``YOUNG_COLLECTION`` at 20,000, what a batch allocates mostly dies by reference count before a
collection sees it: 3% for the node, under 1% for the others; cyclic garbage waits a little longer.
The objects built at start (modules, config, clients) are frozen out of the collector's walks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import uvicorn
from starlette.applications import Starlette

from shared.infra import tracing

YOUNG_COLLECTION = 20_000  # net allocations between young collections (CPython's default: 700)


def pace_collector() -> None:
    """Freeze what the process built so far and collect young objects at ``YOUNG_COLLECTION`` (see the module doc)."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, 20, 20)


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
    pace_collector()
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None, access_log=False, timeout_graceful_shutdown=10)
    tracing.shutdown()  # the spans still buffered, if tracing is on
