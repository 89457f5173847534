"""Fixtures that start real servers on free loopback ports: Redis (with a password), FerretDB and the services."""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.client import ClusterClient
from tests.waits import scaled
from tools.cluster import Cluster, Proc, Stack, free_port

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = Path(os.environ.get("TEST_OUTPUT", ROOT / "test-output"))


class Servers:
    """One Redis and one FerretDB for the whole run; each stack gets its own Redis db and Mongo database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.redis_port = free_port()
        self.mongo_port = free_port()
        self.redis = cluster.start_redis(self.redis_port)
        self.mongo = cluster.start_ferretdb(self.mongo_port)
        self._dbs = itertools.count(1)

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/"

    def fresh_database(self) -> tuple[str, str]:
        """A Redis URL and a MongoDB database name no other test uses."""
        n = next(self._dbs)
        return self.cluster.redis_url(self.redis_port, n), f"push_test_{n}"

    def new_stack(self, nodes: int = 2, redis_url: str | None = None, **env: str) -> Stack:
        own_redis, mongo_db = self.fresh_database()
        env = {"DRAIN_SECONDS": "1", **env}  # a node stopped with sockets still open drains them 1 s, not 10
        return Stack.on_free_ports(redis_url or own_redis, self.mongo_url, mongo_db, nodes, **env)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_password=secrets.token_urlsafe(16))  # AUTH everywhere
    yield c
    c.stop_all()


@pytest.fixture(scope="session")
def servers(cluster: Cluster) -> Servers:
    return Servers(cluster)


class RunningStack:
    """A started stack: its addresses, its processes (to stop or kill), and a client for it."""

    def __init__(self, stack: Stack, procs: dict[str, Proc], client: ClusterClient) -> None:
        self.stack = stack
        self.procs = procs
        self.client = client

    def push(self, index: int) -> Proc:
        return self.procs[f"push-{self.stack.push_ports[index]}"]


@pytest_asyncio.fixture
async def start_stack(servers: Servers, cluster: Cluster) -> AsyncIterator[Callable[..., RunningStack]]:
    """Start a fresh, isolated stack of the four services (stopped after the test)."""
    started: list[RunningStack] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:

        def start(nodes: int = 2, redis_url: str | None = None, mongo_url: str | None = None, **env: str) -> RunningStack:
            stack = servers.new_stack(nodes, redis_url, **env)
            stack.mongo_url = mongo_url or stack.mongo_url
            running = RunningStack(stack, cluster.start_stack(stack), ClusterClient(stack, session))
            started.append(running)
            return running

        yield start
        for running in started:
            for proc in reversed(list(running.procs.values())):
                proc.stop()
                cluster.procs.remove(proc)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_stack(request: pytest.FixtureRequest, servers: Servers, cluster: Cluster) -> AsyncIterator[RunningStack]:
    """One stack shared by a module's tests that do not stop or kill anything (with the module's ``STACK_ENV``, if any)."""
    stack = servers.new_stack(2, **getattr(request.module, "STACK_ENV", {}))
    procs = cluster.start_stack(stack)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:
        yield RunningStack(stack, procs, ClusterClient(stack, session))
    for proc in reversed(list(procs.values())):
        proc.stop()
        cluster.procs.remove(proc)


SCENARIOS: list[tuple[str, int, int, int, int]] = []


def report_scenario(name: str, posted: list[str], received: list[str]) -> tuple[int, int]:
    """Record a failure scenario's counts for the run summary; returns (lost, delivered twice)."""
    lost = len(set(posted) - set(received))
    twice = len(received) - len(set(received))
    SCENARIOS.append((name, len(posted), len(set(received) & set(posted)), lost, twice))
    return lost, twice


FUZZ: list[tuple[str, int, dict[str, int], int]] = []


def report_fuzz(name: str, outcomes: dict[str, int], server_errors: int) -> None:
    """Record a fuzz test's number of inputs, by outcome, and how many got a server error, for the run summary."""
    FUZZ.append((name, sum(outcomes.values()), dict(outcomes), server_errors))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if FUZZ:
        terminalreporter.section("fuzzing: inputs, server errors (5xx, 1011, crash), outcomes")
        for name, inputs, outcomes, server_errors in FUZZ:
            detail = " ".join(f"{k}={v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))
            terminalreporter.write_line(f"{name:<44} inputs={inputs:<6} server_errors={server_errors:<3} {detail}")
        terminalreporter.write_line(f"{'total':<44} inputs={sum(f[1] for f in FUZZ):<6} "
                                    f"server_errors={sum(f[3] for f in FUZZ)}")
    if SCENARIOS:
        terminalreporter.section("failure scenarios: messages posted (202), delivered, lost, delivered twice")
        for name, posted, delivered, lost, twice in SCENARIOS:
            terminalreporter.write_line(f"{name:<58} posted={posted:<5} delivered={delivered:<5} lost={lost:<3} twice={twice}")
