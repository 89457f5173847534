"""The Redis client every service uses, failing fast when the server dies instead of hanging.

redis-py wraps every reply it reads in an asyncio timeout when ``socket_timeout`` is set, which
costs more than the command itself on our pipelines of thousands. So the kernel watches the
connection instead: keepalive probes find a silent peer, and ``TCP_USER_TIMEOUT`` fails a request
whose bytes are not acknowledged within ``timeout`` seconds (a dead or unreachable server).

The password (Redis AUTH) comes from the URL: ``redis://:PASSWORD@host:port/db``.
"""

from __future__ import annotations

import socket

import redis
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError


def redis_client(url: str, timeout: float = 3.0) -> Redis:
    seconds = max(1, int(timeout))
    kernel_checks = {socket.TCP_KEEPIDLE: seconds, socket.TCP_KEEPINTVL: 1, socket.TCP_KEEPCNT: 3,
                     socket.TCP_USER_TIMEOUT: int(timeout * 1000)}
    return Redis.from_url(url, socket_connect_timeout=timeout, socket_keepalive=True,
                          socket_keepalive_options=kernel_checks, health_check_interval=10)


async def redis_alive(client: Redis) -> bool:
    """Whether Redis answers a PING (for health reports)."""
    try:
        return bool(await client.ping())
    except RedisError:
        return False


def require_redis_credentials(service: str, url: str, timeout: float = 3.0) -> None:
    """Stop at start if Redis refuses the credentials in ``url``; a Redis that is down is not fatal (it may come back)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except AuthenticationError as exc:  # a subclass of ConnectionError: caught first
        where = client.get_connection_kwargs()
        raise SystemExit(f"{service}: Redis at {where.get('host')}:{where.get('port')} refused the credentials in "
                         f"REDIS_URL (redis://:PASSWORD@host:port/db): {exc}") from None
    except RedisError:
        pass
    finally:
        client.close()
