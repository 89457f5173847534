"""dispatch's wiring: the router loop in the lifespan, ``/healthz`` and ``/metrics`` beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

from redis.exceptions import RedisError
from starlette.applications import Starlette

from services.dispatch.config import DispatchConfig
from services.dispatch.links import LinkPool
from services.dispatch.router import Router
from shared.clients import redis_client
from shared.routing import RouteReader
from shared.stream import DeliveryStream
from shared.web import EXCEPTION_HANDLERS, ops_routes

log = logging.getLogger(__name__)


def create_app(config: DispatchConfig) -> Starlette:
    # The stream read blocks for block_ms, so its socket timeout must be longer.
    redis = redis_client(config.redis_url, timeout=config.block_ms / 1000 + 3)
    links = LinkPool(config.internal_key, config.link_timeout)
    router = Router(config, DeliveryStream(redis), RouteReader(redis), links)

    async def health() -> dict[str, object]:
        try:
            redis_ok = bool(await redis.ping())
        except RedisError:
            redis_ok = False
        loop_ok = time.time() - router.last_cycle < config.block_ms / 1000 + 10
        return {"ok": redis_ok and loop_ok, "service": "dispatch", "redis": redis_ok, "router": loop_ok,
                "links": sorted(links.links)}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(router.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await links.close()
        await redis.aclose()

    return Starlette(routes=ops_routes(health), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
