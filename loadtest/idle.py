"""Scenario C's client side: processes that each open and hold thousands of idle websockets.

One process holds at most a few thousand sockets (20,000 open files per process here) and binds
them to its own 127.x source address, so the ephemeral ports of one (source, destination) pair
never run out. The parent drives the workers over a pipe: ``go`` -> they connect and report,
``close`` -> they close and exit. A worker that hears nothing closes and exits by itself after
``max_hold_seconds``, so no client process outlives a crashed benchmark.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect


@dataclass
class OpenReport:
    """What one worker achieved: sockets routed (welcome received), failures by kind, and when."""

    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0


async def open_one(url: str, token: str, source: str) -> ClientConnection:
    ws = await connect(f"{url}?token={token}", open_timeout=30, compression=None, ping_interval=None,
                       local_addr=(source, 0))
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return ws


async def hold(url: str, tokens: list[str], source: str, concurrency: int, pipe: Connection,
               max_hold_seconds: float) -> None:
    pipe.send("ready")
    if not await asyncio.to_thread(pipe.poll, max_hold_seconds) or pipe.recv() != "go":
        return
    report = OpenReport(started=time.time())
    gate = asyncio.Semaphore(concurrency)
    sockets: list[ClientConnection] = []

    async def one(token: str) -> None:
        async with gate:
            try:
                sockets.append(await open_one(url, token, source))
                report.opened += 1
            except Exception as exc:  # counted and reported: the parent prints failures by kind
                report.failures[type(exc).__name__] += 1

    await asyncio.gather(*(one(t) for t in tokens))
    report.finished = time.time()
    pipe.send(report)
    await asyncio.to_thread(pipe.poll, max_hold_seconds)  # "close", the parent gone (EOF), or time is up
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def worker_main(url: str, tokens: list[str], source: str, concurrency: int, pipe: Connection,
                max_hold_seconds: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(hold(url, tokens, source, concurrency, pipe, max_hold_seconds))


class IdleFleet:
    """Worker processes holding ``len(tokens)`` idle sockets to ``url``, ``per_process`` at most each."""

    def __init__(self, url: str, tokens: list[str], per_process: int, concurrency: int, max_hold_seconds: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i, start in enumerate(range(0, len(tokens), per_process)):
            parent, child = ctx.Pipe()
            source = f"127.0.0.{2 + i}"
            proc = ctx.Process(target=worker_main, name=f"idle-{source}", daemon=True,
                               args=(url, tokens[start:start + per_process], source, concurrency, child, max_hold_seconds))
            self.pipes.append(parent)
            self.procs.append(proc)

    def open(self) -> list[OpenReport]:
        """Start the workers, release them together, and wait for each one's report (blocking)."""
        for proc in self.procs:
            proc.start()
        for pipe in self.pipes:
            pipe.recv()
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
