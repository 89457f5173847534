"""The services' Redis client against a real redis-server that restarts under it."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

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
