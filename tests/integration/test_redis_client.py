"""The services' Redis client against a real redis-server that restarts under it."""

from __future__ import annotations

from shared.infra.clients import redis_client
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
