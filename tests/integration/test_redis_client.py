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
        writing = asyncio.create_task(connection.send_packed_command(connection.pack_command("PING")))
        await asyncio.sleep(0)  # the write now waits in its own task (redis-py's socket timeout)
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


async def test_a_command_to_a_redis_that_stopped_answering_times_out(cluster: Cluster) -> None:
    """A command sent to a Redis that is up but stopped (SIGSTOP: the kernel still takes its bytes) fails with a
    timeout after ``socket_timeout``, and the next one succeeds once the server goes on."""
    port = free_port()
    redis = cluster.start_redis(port)
    client = Redis.from_url(cluster.redis_url(port), socket_timeout=0.5, connection_class=ServiceConnection)
    try:
        assert await client.set("k", "v")
        redis.popen.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(client.get("k"), 5)
        finally:
            redis.popen.send_signal(signal.SIGCONT)
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
        redis.stop()
