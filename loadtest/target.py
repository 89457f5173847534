"""What a benchmark talks to: a cluster it starts itself on free ports, or one already running.

Both cases end up as a ``Target`` of plain URLs, so the scenarios never care which it is.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import psutil

from tools.cluster import Cluster, Stack, free_port


@dataclass(frozen=True)
class Target:
    auth_url: str
    collect_url: str
    push_urls: list[str]
    redis_url: str

    def ws_url(self, node: int) -> str:
        """The browser endpoint of push node ``node`` (``push_urls`` are its http base URLs)."""
        parts = urlsplit(self.push_urls[node])
        return f"ws://{parts.netloc}/ws"

    def push_pid(self, node: int) -> int:
        """The pid of the process listening on push node ``node``'s port (for its RSS and Redis sockets)."""
        port = urlsplit(self.push_urls[node]).port
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
        raise SystemExit(f"no process listens on {self.push_urls[node]}")


@contextlib.contextmanager
def own_cluster(workdir: Path | None = None, nodes: int = 2) -> Iterator[Target]:
    """Redis, FerretDB, auth, collect, dispatch and ``nodes`` push nodes on free ports.

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
            yield Target(stack.auth_url, stack.collect_url, [stack.push_url(p) for p in stack.push_ports], redis_url)
        finally:
            cluster.stop_all()
