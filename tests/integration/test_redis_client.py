"""The services' Redis client against a real redis-server that restarts under it."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio import connection as connection_module
from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.infra.clients import ServiceConnection, redis_client
from tests.conftest import Servers
from tools.cluster import Cluster, free_port

BIG = 256 * 1024  # bytes: past a connection's write buffer high-water mark (64 KiB)


async def test_a_pooled_connection_that_died_with_a_redis_restart_is_replaced_on_first_use(cluster: Cluster) -> None:
    """After Redis restarts, a command and a MULTI on the connection pooled before it succeed instead of raising."""
    port = free_port()
    redis = cluster.start_redis(port)
    client = redis_client(cluster.redis_url(port))
    try:
        assert await client.set("k", "before")
        redis.stop()
        cluster.start_redis(port)
        assert await client.set("k", "after")
        async with client.pipeline(transaction=True) as pipe:
            pipe.get("k")
            assert await pipe.execute() == [b"after"]
    finally:
        await client.aclose()


@pytest.mark.parametrize("connection_class", [ServiceConnection, Connection], ids=["guarded", "redis-py"])
async def test_a_command_on_a_connection_closed_while_it_is_written_fails_as_a_connection_error(
        servers: Servers, connection_class: type[Connection]) -> None:
    """A command whose connection another task closes before its bytes are written (a cluster client refreshing its
    topology after a failover does so) raises ConnectionError, a Redis failure, from the services' connection;
    redis-py's own raises AttributeError there, which collect answered 500."""
    connection = connection_class(**parse_url(servers.cluster.redis_url(servers.redis_port)), socket_timeout=5)
    await connection.connect()
    try:
        # A command bigger than the buffer's high-water mark is written under redis-py's socket timeout, in a task.
        command = connection.pack_command("SET", "closed-while-written", b"x" * BIG)
        writing = asyncio.create_task(connection.send_packed_command(command))
        await asyncio.sleep(0)  # the write now waits in its own task
        await connection.disconnect(nowait=True)
        expected = RedisConnectionError if connection_class is ServiceConnection else AttributeError
        with pytest.raises(expected):
            await writing
    finally:
        await connection.disconnect()


async def test_a_pipeline_arms_a_read_timeout_only_for_replies_it_waits_for(
        servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline of 400 commands reads its replies from the parser's buffer without a timeout each (redis-py's own
    connection arms one per reply), and answers the same replies."""
    armed: list[float] = []
    arm = connection_module.async_timeout

    def counted(delay: float) -> Any:
        armed.append(delay)
        return arm(delay)

    monkeypatch.setattr(connection_module, "async_timeout", counted)
    replies = {}
    for connection_class in (ServiceConnection, Connection):
        client = Redis.from_url(servers.cluster.redis_url(servers.redis_port), connection_class=connection_class)
        try:
            await client.ping()
            armed.clear()
            async with client.pipeline(transaction=False) as pipe:
                for i in range(200):
                    pipe.hset(f"read-timeout:{connection_class.__name__}:{i}", "n", i)
                    pipe.hget(f"read-timeout:{connection_class.__name__}:{i}", "n")
                replies[connection_class] = (await pipe.execute(), len(armed))
        finally:
            await client.aclose()
    (ours, ours_armed), (theirs, theirs_armed) = replies[ServiceConnection], replies[Connection]
    assert ours == theirs and ours[1::2] == [str(i).encode() for i in range(200)]
    assert theirs_armed == 400
    assert 1 <= ours_armed <= 20


async def test_a_command_that_writes_at_once_is_sent_without_a_task_or_a_timeout_of_its_own(
        servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an open connection, a command that fits its write buffer is written in the caller's task: redis-py's own
    connection runs each write in a task under ``asyncio.wait_for``; a command past the buffer's high-water mark still
    is (so a Redis that stopped reading cannot hold it forever)."""
    waited: list[float] = []
    wait_for = asyncio.wait_for

    def counted(awaitable: Any, timeout: float | None) -> Any:
        waited.append(timeout or 0.0)
        return wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", counted)
    counts = {}
    for connection_class in (ServiceConnection, Connection):
        client = Redis.from_url(servers.cluster.redis_url(servers.redis_port), connection_class=connection_class,
                                socket_timeout=5)
        try:
            await client.ping()
            waited.clear()
            for i in range(100):
                assert await client.set(f"write-timeout:{i}", i)
            small = len(waited)
            assert await client.set("write-timeout:big", b"x" * BIG)
            counts[connection_class] = (small, len(waited) - small)
        finally:
            await client.aclose()
    assert counts[Connection] == (100, 1)
    assert counts[ServiceConnection] == (0, 1)


async def test_the_pool_lends_each_connection_to_one_command_at_a_time(servers: Servers) -> None:
    """90 commands at once on the services' pool (no lock round its bookkeeping; redis-py's cap is 100 connections)
    each get a connection of their own and their own reply, and every connection is back in the pool after."""
    client = redis_client(servers.cluster.redis_url(servers.redis_port))
    try:
        await client.mset({f"lend:{i}": i for i in range(90)})
        replies = await asyncio.gather(*(client.get(f"lend:{i}") for i in range(90)))
        pool = client.connection_pool
        assert replies == [str(i).encode() for i in range(90)]
        assert not pool._in_use_connections
        assert len(pool._available_connections) == 90
    finally:
        await client.aclose()


@pytest.mark.parametrize("waiting_for", ["its reply", "the socket"])
async def test_a_command_to_a_redis_that_stopped_answering_times_out(cluster: Cluster, waiting_for: str) -> None:
    """A command sent to a Redis that is up but stopped (SIGSTOP: the kernel still takes its bytes, until its buffers
    fill) fails with a timeout after ``socket_timeout``, whether it waits for its reply or, too big to write at once,
    for the socket; and the connection serves again once the server goes on."""
    port = free_port()
    redis = cluster.start_redis(port)
    client = redis_client(cluster.redis_url(port))
    client.connection_pool.connection_kwargs["socket_timeout"] = 0.5
    try:
        assert await client.set("k", "v")
        redis.popen.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                if waiting_for == "its reply":
                    await asyncio.wait_for(client.get("k"), 10)
                else:
                    await asyncio.wait_for(client.set("big", b"x" * (64 * 1024 * 1024)), 10)
        finally:
            redis.popen.send_signal(signal.SIGCONT)
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
        redis.stop()
