"""The webhooks service's wiring: the registry of endpoints with a sender per endpoint, the fan-out and the presence
watcher in the lifespan; ``/healthz`` and ``/metrics`` beside them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from services.webhooks.config import WebhooksConfig
from services.webhooks.fanout import Fanout
from services.webhooks.registry import Registry
from services.webhooks.watcher import PresenceWatcher
from shared.cluster.routes import RouteReader
from shared.delivery.store import MessageStore
from shared.delivery.webhook_endpoints import EndpointStore
from shared.delivery.webhook_queue import WebhookQueues
from shared.infra.clients import redis_alive, redis_client
from shared.infra.serve import running
from shared.infra.web import EXCEPTION_HANDLERS, ops_routes
from shared.wire.webhook_urls import UrlPolicy


def create_app(config: WebhooksConfig) -> Starlette:
    redis = redis_client(config.redis_url)
    store = MessageStore(config.mongo_url, config.mongo_db)
    queues = WebhookQueues(redis)
    policy = UrlPolicy.of(config.production, config.webhook_allow_private)
    registry = Registry(EndpointStore(store.client, config.mongo_db, redis, store.breaker), redis, queues, config, policy)
    fanout = Fanout(redis, store, registry, queues, config)
    watcher = PresenceWatcher(redis, RouteReader(redis, config.internal_key), config.offline_grace)

    async def health() -> dict[str, object]:
        redis_ok = await redis_alive(redis)
        mongo_ok = await store.ping()
        return {"ok": redis_ok and mongo_ok, "service": "webhooks", "redis": redis_ok, "mongo": mongo_ok,
                "breakers": {"mongodb": store.breaker.state}, "endpoints": sorted(registry.senders)}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with running(registry.run(), fanout.run(), watcher.run()):
            yield
        await registry.close()
        await redis.aclose()
        await store.close()

    return Starlette(routes=ops_routes(health, config.ops_guard), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
