"""Fixtures that start real servers on free loopback ports: Redis (with a password), FerretDB and the services.

A test that asks for the ``topology`` fixture runs twice: on the session's single Redis (its own
database) and on a Redis Cluster of 3 masters started for its stack alone (a cluster has no
database numbers, so a fresh cluster is the isolation), with ``STREAM_SHARDS=3``. ``start_stack``
and ``any_shared_stack`` follow it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared.delivery.store import MessageStore
from tests.client import ClusterClient
from tests.waits import scaled
from tools.cluster import Cluster, Proc, Stack, free_cluster_port, free_port

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

    @contextlib.asynccontextmanager
    async def fresh_state(self) -> AsyncIterator[tuple[Redis, MessageStore]]:
        """Clients on a Redis database and a MongoDB database no other test uses, for a test that drives the delivery
        state's pieces without services; the databases emptied and the clients closed on leaving."""
        redis_url, mongo_db = self.fresh_database()
        redis, store = Redis.from_url(redis_url), MessageStore(self.mongo_url, mongo_db)
        try:
            yield redis, store
        finally:
            await redis.flushdb()
            await redis.aclose()
            await store.client.drop_database(mongo_db)
            await store.close()

    def new_stack(self, nodes: int = 2, redis_url: str | None = None, **env: str) -> Stack:
        own_redis, mongo_db = self.fresh_database()
        env = {"DRAIN_SECONDS": "1", **env}  # a node stopped with sockets still open drains them 1 s, not 10
        return Stack.on_free_ports(redis_url or own_redis, self.mongo_url, mongo_db, nodes, **env)

    def redis_cluster(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> tuple[str, list[Proc]]:
        """A new Redis Cluster (``replicas`` is 0 or one per master): its URL and processes, masters first."""
        ports: list[int] = []
        while len(ports) < masters * (1 + replicas):
            port = free_cluster_port()
            if port not in ports:
                ports.append(port)
        procs = self.cluster.start_redis_cluster(ports[:masters], ports[masters:], node_timeout_ms)
        return self.cluster.redis_cluster_url(ports[:masters]), procs

    def stack_on(self, topology: str, nodes: int = 2, **env: str) -> tuple[Stack, list[Proc]]:
        """A new stack's addresses on ``topology`` ("single", "cluster", or "replicated": a cluster with a replica per
        master, whose hand-overs wait for it), and the Redis processes started for it."""
        if topology == "single":
            return self.new_stack(nodes, **env), []
        replicated = topology == "replicated"
        url, procs = self.redis_cluster(replicas=int(replicated))
        defaults = {"STREAM_SHARDS": "3", **({"REPLICA_ACKS": "1"} if replicated else {})}
        return self.new_stack(nodes, url, **{**defaults, **env}), procs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's limit per test (pyproject's ``timeout``) scaled by ``TEST_TIMEOUT_SCALE`` like every other
    timeout, unless the command line or the test sets its own."""
    if config.getoption("timeout", None) is not None or scaled(1) == 1:
        return
    limit = scaled(float(config.getini("timeout") or 0))
    for item in items:
        if limit and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_password=secrets.token_urlsafe(16))  # AUTH everywhere
    yield c
    c.stop_all()


@pytest.fixture(scope="session")
def servers(cluster: Cluster) -> Servers:
    return Servers(cluster)


TOPOLOGIES = ["single", "cluster"]


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    """The Redis a test's stacks run on: one Redis, or a Redis Cluster of 3 masters."""
    return request.param


class RunningStack:
    """A started stack: its addresses, its processes (to stop or kill), a client for it, and the Redis Cluster
    processes started for it alone (none on the shared single Redis)."""

    def __init__(self, stack: Stack, procs: dict[str, Proc], client: ClusterClient, redis: list[Proc] | None = None) -> None:
        self.stack = stack
        self.procs = procs
        self.client = client
        self.redis = redis or []

    def stop(self, cluster: Cluster) -> None:
        """Stop the services (all signalled at once, so their shutdowns overlap), then the Redis Cluster started for
        them."""
        services = list(reversed(self.procs.values()))
        for proc in services:
            if proc.alive:
                proc.popen.send_signal(proc.stop_signal)
        for proc in services:
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in [*services, *self.redis]:
            proc.stop()  # a no-op for an exited process
            cluster.procs.remove(proc)

    def push(self, index: int) -> Proc:
        return self.procs[f"push-{self.stack.push_ports[index]}"]


@pytest_asyncio.fixture
async def start_stack(request: pytest.FixtureRequest, servers: Servers,
                      cluster: Cluster) -> AsyncIterator[Callable[..., RunningStack]]:
    """Start a fresh, isolated stack of the four services (stopped after the test), on the test's ``topology`` if it
    asks for one (else the single Redis), unless ``redis_url`` names another; with ``webhooks``, the webhooks service
    too."""
    topology = request.getfixturevalue("topology") if "topology" in request.fixturenames else "single"
    started: list[RunningStack] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:

        def start(nodes: int = 2, redis_url: str | None = None, mongo_url: str | None = None, webhooks: bool = False,
                  **env: str) -> RunningStack:
            if redis_url is None:
                stack, redis = servers.stack_on(topology, nodes, **env)
            else:
                stack, redis = servers.new_stack(nodes, redis_url, **env), []
            stack.mongo_url = mongo_url or stack.mongo_url
            stack.webhooks_port = free_port() if webhooks else 0
            running = RunningStack(stack, cluster.start_stack(stack), ClusterClient(stack, session), redis)
            started.append(running)
            return running

        yield start
        for running in started:
            running.stop(cluster)


async def _shared(request: pytest.FixtureRequest, servers: Servers, cluster: Cluster,
                  topology: str) -> AsyncIterator[RunningStack]:
    stack, redis = servers.stack_on(topology, 2, **getattr(request.module, "STACK_ENV", {}))
    procs = cluster.start_stack(stack)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:
        running = RunningStack(stack, procs, ClusterClient(stack, session), redis)
        yield running
    running.stop(cluster)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_stack(request: pytest.FixtureRequest, servers: Servers, cluster: Cluster) -> AsyncIterator[RunningStack]:
    """One stack shared by a module's tests that do not stop or kill anything (with the module's ``STACK_ENV``, if any)."""
    async for running in _shared(request, servers, cluster, "single"):
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_cluster_stack(request: pytest.FixtureRequest, servers: Servers,
                               cluster: Cluster) -> AsyncIterator[RunningStack]:
    """``shared_stack``'s twin on a Redis Cluster of its own."""
    async for running in _shared(request, servers, cluster, "cluster"):
        yield running


@pytest.fixture
def any_shared_stack(request: pytest.FixtureRequest, topology: str) -> RunningStack:
    """The module's shared stack on the test's ``topology``."""
    return request.getfixturevalue("shared_stack" if topology == "single" else "shared_cluster_stack")


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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker, hand this worker's summary rows to the controller, which prints them all."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fuzz"], workeroutput["scenarios"] = FUZZ, SCENARIOS


def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
    """pytest-xdist's controller: gather a finished worker's summary rows."""
    FUZZ.extend(tuple(row) for row in node.workeroutput.get("fuzz", []))  # type: ignore[misc]
    SCENARIOS.extend(tuple(row) for row in node.workeroutput.get("scenarios", []))  # type: ignore[misc]


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
