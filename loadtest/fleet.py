"""Client processes that each hold a share of a benchmark's sockets.

One process holds at most a few thousand sockets (20,000 open files per process here) and binds
them to its own 127.x source address, so the ephemeral ports of one (source, destination) pair
never run out. Each worker runs ``work(source, share)``, an async context manager: entering it does
the worker's part of the scenario (connect, receive, ...) and gives a picklable report; leaving it
closes the sockets. The parent drives the workers over a pipe: ``start`` -> they spawn and say
ready, ``go`` -> they enter ``work`` together and send the report, ``close`` -> they leave it and
exit. A worker that hears nothing closes and exits by itself after ``max_hold_seconds``, so no
client process outlives a crashed benchmark.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, AsyncContextManager

import uvloop

Work = Callable[[str, Any], AsyncContextManager[Any]]


async def serve(work: Work, source: str, share: Any, pipe: Connection, max_hold_seconds: float) -> None:
    pipe.send("ready")
    if not await asyncio.to_thread(pipe.poll, max_hold_seconds) or pipe.recv() != "go":
        return
    async with work(source, share) as report:
        pipe.send(report)
        await asyncio.to_thread(pipe.poll, max_hold_seconds)  # "close", the parent gone (EOF), or time is up


def worker_main(work: Work, source: str, share: Any, pipe: Connection, max_hold_seconds: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(work, source, share, pipe, max_hold_seconds))


class Fleet:
    """One worker process per share, the i-th from source address 127.0.0.(2+i), each running ``work``
    (a module-level function or a ``functools.partial`` of one, so that it pickles)."""

    def __init__(self, work: Work, shares: list[Any], max_hold_seconds: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            source = f"127.0.0.{2 + i}"
            self.pipes.append(parent)
            self.procs.append(ctx.Process(target=worker_main, name=f"client-{source}", daemon=True,
                                          args=(work, source, share, child, max_hold_seconds)))

    @property
    def sources(self) -> str:
        return f"127.0.0.2..{1 + len(self.procs)}"

    def start(self) -> None:
        """Spawn the workers and wait until each is ready (blocking)."""
        for proc in self.procs:
            proc.start()
        for pipe in self.pipes:
            pipe.recv()

    def go(self) -> list[Any]:
        """Release the workers together and wait for each one's report (blocking)."""
        for pipe in self.pipes:
            pipe.send("go")
        return [pipe.recv() for pipe in self.pipes]

    def close(self, timeout: float = 60) -> None:
        """Ask every worker to close its sockets and exit; terminate (by pid) any that does not."""
        for pipe in self.pipes:
            try:
                pipe.send("close")
            except OSError:
                pass
        for proc in self.procs:
            if proc.pid is not None:
                proc.join(timeout)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
