"""What a benchmark talks to: a cluster it starts itself on free ports, or one already running.

Both cases end up as a ``Target`` of plain URLs and the server processes by name, so the scenarios
never care which it is. A peer system (``loadtest.peer_centrifugo``) is a ``Target`` too, with its own client
side and HTTP API in place of ours.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from loadtest.api import Api
from loadtest.inbox import OURS, Client
from tools.cluster import Cluster, Stack, free_cluster_port, free_port


def listening_pid(port: int | None) -> int | None:
    """The pid of the process listening on ``port``, if this machine has one."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def upstream_pid(pid: int) -> int | None:
    """The pid of the local server that process ``pid`` connected to (FerretDB's PostgreSQL), if any."""
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.raddr and conn.status == psutil.CONN_ESTABLISHED:
            server = listening_pid(conn.raddr.port)
            if server not in (None, pid):
                return server
    return None


@dataclass(frozen=True)
class Target:
    auth_url: str
    collect_url: str
    push_urls: list[str]
    redis_url: str
    processes: dict[str, int] = field(default_factory=dict)  # server name -> pid, for the CPU split
    dispatch_url: str = ""  # its /metrics, for what only dispatch can tell (scheduled messages' fire lateness)
    mongo_url: str = ""  # its MongoDB (FerretDB), for the floor scenario's inserts
    client: Client = OURS  # how its sockets speak
    api: type[Api] = Api  # its HTTP side: tokens, posts (to ``collect_url``), open sockets

    def ws_url(self, node: int) -> str:
        """The browser endpoint of push node ``node`` (``push_urls`` are its http base URLs)."""
        parts = urlsplit(self.push_urls[node])
        return f"ws://{parts.netloc}{self.client.path}"

    def push_pid(self, node: int) -> int:
        """The pid of push node ``node`` (for its RSS and Redis sockets)."""
        pid = listening_pid(urlsplit(self.push_urls[node]).port)
        if pid is None:
            raise SystemExit(f"no process listens on {self.push_urls[node]}")
        return pid


def running_target(auth_url: str, collect_url: str, push_urls: list[str], redis_url: str, dispatch_url: str,
                   mongo_url: str) -> Target:
    """A cluster someone else started: the pids of its servers that listen on this machine, found by their
    ports, and the PostgreSQL that FerretDB connects to; a server not found is left out of the CPU split."""
    named = {"auth": auth_url, "collect": collect_url, "dispatch": dispatch_url, "redis": redis_url, "ferretdb": mongo_url,
             **{f"push-{urlsplit(u).port}": u for u in push_urls}}
    pids = {name: pid for name, url in named.items() if (pid := listening_pid(urlsplit(url).port)) is not None}
    if "ferretdb" in pids and (postgres := upstream_pid(pids["ferretdb"])) is not None:
        pids["postgres"] = postgres
    return Target(auth_url, collect_url, push_urls, redis_url, pids, dispatch_url, mongo_url=mongo_url)


@contextlib.contextmanager
def cluster_in(workdir: Path | None) -> Iterator[Cluster]:
    """A ``Cluster`` whose data and logs go under ``workdir`` (kept, to read the logs afterwards) or a temp dir
    (removed); every process it started is stopped on the way out, also on Ctrl-C or an exception."""
    with contextlib.ExitStack() as scope:
        if workdir is None:
            workdir = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        cluster = Cluster(workdir)
        try:
            yield cluster
        finally:
            cluster.stop_all()


@contextlib.contextmanager
def own_cluster(workdir: Path | None = None, nodes: int = 2, redis_masters: int = 0, webhooks: bool = False,
                settings: dict[str, str] | None = None) -> Iterator[Target]:
    """Redis, PostgreSQL, FerretDB, auth, collect, dispatch and ``nodes`` push nodes on free ports; with
    ``redis_masters``, a Redis Cluster of that many masters instead of one Redis (and as many stream shards); with
    ``webhooks``, the webhooks service too. ``settings`` are the services' environment beside the defaults.
    Data, logs and stopping as ``cluster_in``.
    """
    with cluster_in(workdir) as cluster:
        mongo_port = free_port()
        env = dict(settings or {})
        if redis_masters:
            ports: list[int] = []
            while len(ports) < redis_masters:
                ports += [port] if (port := free_cluster_port()) not in ports else []
            cluster.start_redis_cluster(ports)
            redis_url = cluster.redis_cluster_url(ports)
            env["STREAM_SHARDS"] = str(redis_masters)
        else:
            redis_port = free_port()
            cluster.start_redis(redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        cluster.start_ferretdb(mongo_port)
        # One load-generator process holds up to 10,000 sockets from its 127.x address: no per-address cap.
        stack = Stack.on_free_ports(redis_url, f"mongodb://127.0.0.1:{mongo_port}/", "push_bench", nodes,
                                    MAX_ADDRESS_CONNECTIONS="0", **env)
        stack.webhooks_port = free_port() if webhooks else 0
        cluster.start_stack(stack)
        processes = {proc.name: proc.popen.pid for proc in cluster.procs}
        yield Target(stack.auth_url, stack.collect_url, [stack.push_url(p) for p in stack.push_ports], redis_url, processes,
                     stack.dispatch_url, mongo_url=stack.mongo_url)

