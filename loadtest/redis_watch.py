"""Which Redis commands one process issues over a window, read with MONITOR; every client's commands by name.

``INFO commandstats`` counts every client together (dispatch's stream reads, the other node's
heartbeat, ...). MONITOR names each command's client address, and the node's own sockets to Redis
are known from its pid, so the node's share is exact. MONITOR costs Redis some CPU, which is fine
over an idle window.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil
from redis.asyncio import Redis

PIPELINE_GAP_SECONDS = 0.005


@dataclass(frozen=True)
class CommandWindow:
    seconds: float
    by_command: Counter[str]
    round_trips: int
    all_clients: int

    @property
    def commands(self) -> int:
        return sum(self.by_command.values())


def redis_ports_of(pid: int, redis_url: str) -> set[int]:
    """The local ports of ``pid``'s TCP connections to the Redis at ``redis_url``."""
    redis_port = urlsplit(redis_url).port or 6379
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr and c.raddr.port == redis_port}


async def watch(redis_url: str, pid: int, seconds: float) -> CommandWindow:
    """Commands from ``pid`` over ``seconds``: by name, and grouped into round trips (pipelines).

    Commands less than 5 ms apart count as one round trip: a pipeline runs back to back in Redis.
    """
    redis = Redis.from_url(redis_url)
    ports = {str(p) for p in redis_ports_of(pid, redis_url)}
    by_command: Counter[str] = Counter()
    times: list[float] = []
    try:
        before = (await redis.info("stats"))["total_commands_processed"]
        async with redis.monitor() as monitor:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    seen = await asyncio.wait_for(monitor.next_command(), left)
                except TimeoutError:
                    break
                if seen["client_port"] not in ports:
                    ports |= {str(p) for p in redis_ports_of(pid, redis_url)}  # a socket the pool opened since
                    if seen["client_port"] not in ports:
                        continue
                by_command[seen["command"].split(" ", 1)[0].upper()] += 1
                times.append(seen["time"])
        after = (await redis.info("stats"))["total_commands_processed"]
    finally:
        await redis.aclose()
    round_trips = sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > PIPELINE_GAP_SECONDS)
    return CommandWindow(seconds, by_command, round_trips, after - before)


async def command_counts(redis_url: str) -> Counter[str]:
    """Every client's commands so far, by name (``INFO commandstats``: those a script calls included, so a script call
    counts as EVAL or EVALSHA and again as each command it ran)."""
    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return Counter({name.removeprefix("cmdstat_").upper(): int(value["calls"]) for name, value in stats.items()})
