"""The Redis client every service uses, failing fast when the server dies instead of hanging.

redis-py wraps every reply it reads in an asyncio timeout when ``socket_timeout`` is set, which
costs more than the command itself on our pipelines of thousands. So the kernel watches the
connection instead: keepalive probes find a silent peer, and ``TCP_USER_TIMEOUT`` fails a request
whose bytes are not acknowledged within ``timeout`` seconds (a dead or unreachable server).
"""

from __future__ import annotations

import socket

from redis.asyncio import Redis


def redis_client(url: str, timeout: float = 3.0) -> Redis:
    seconds = max(1, int(timeout))
    kernel_checks = {socket.TCP_KEEPIDLE: seconds, socket.TCP_KEEPINTVL: 1, socket.TCP_KEEPCNT: 3,
                     socket.TCP_USER_TIMEOUT: int(timeout * 1000)}
    return Redis.from_url(url, socket_connect_timeout=timeout, socket_keepalive=True,
                          socket_keepalive_options=kernel_checks, health_check_interval=10)
