"""Clients for the two shared dependencies, with timeouts so a dead server fails fast instead of hanging."""

from __future__ import annotations

from redis.asyncio import Redis


def redis_client(url: str, timeout: float = 3.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10)
