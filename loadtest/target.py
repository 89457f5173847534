"""What a benchmark talks to: a cluster it starts itself on free ports, or one already running.

Both cases end up as a ``Target`` of plain URLs and the server processes by name, so the scenarios
never care which it is.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import psutil

from tools.cluster import Cluster, Stack, free_port


def listening_pid(url: str) -> int | None:
    """The pid of the process listening on ``url``'s port, if this machine has one."""
    port = urlsplit(url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


@dataclass(frozen=True)
class Target:
    auth_url: str
    collect_url: str
    push_urls: list[str]
    redis_url: str
    processes: dict[str, int] = field(default_factory=dict)  # server name -> pid, for the CPU split

    def ws_url(self, node: int) -> str:
        """The browser endpoint of push node ``node`` (``push_urls`` are its http base URLs)."""
        parts = urlsplit(self.push_urls[node])
        return f"ws://{parts.netloc}/ws"

    def push_pid(self, node: int) -> int:
        """The pid of push node ``node`` (for its RSS and Redis sockets)."""
        pid = listening_pid(self.push_urls[node])
        if pid is None:
            raise SystemExit(f"no process listens on {self.push_urls[node]}")
        return pid


def running_target(auth_url: str, collect_url: str, push_urls: list[str], redis_url: str, dispatch_url: str) -> Target:
    """A cluster someone else started: its services' pids found by their ports (Redis and the store too, if local)."""
    named = {"auth": auth_url, "collect": collect_url, "dispatch": dispatch_url, "redis": redis_url,
             **{f"push-{urlsplit(u).port}": u for u in push_urls}}
    pids = {name: pid for name, url in named.items() if (pid := listening_pid(url)) is not None}
    return Target(auth_url, collect_url, push_urls, redis_url, pids)


@contextlib.contextmanager
def own_cluster(workdir: Path | None = None, nodes: int = 2) -> Iterator[Target]:
    """Redis, PostgreSQL, FerretDB, auth, collect, dispatch and ``nodes`` push nodes on free ports.

    Data and logs go under ``workdir`` (kept, to read the services' logs afterwards) or a temp dir
    (removed). Every process is stopped on the way out, also on Ctrl-C or an exception.
    """
    with contextlib.ExitStack() as scope:
        if workdir is None:
            workdir = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        cluster = Cluster(workdir)
        try:
            redis_port, mongo_port = free_port(), free_port()
            cluster.start_redis(redis_port)
            cluster.start_ferretdb(mongo_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            stack = Stack.on_free_ports(redis_url, f"mongodb://127.0.0.1:{mongo_port}/", "push_bench", nodes)
            cluster.start_stack(stack)
            processes = {proc.name: proc.popen.pid for proc in cluster.procs}
            yield Target(stack.auth_url, stack.collect_url, [stack.push_url(p) for p in stack.push_ports], redis_url, processes)
        finally:
            cluster.stop_all()
