"""dispatch's wiring: the forwarders, reconciler, firing and lifecycle loops in the lifespan; ``/healthz`` and
``/metrics`` beside them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from services.dispatch.config import DispatchConfig
from services.dispatch.firing import Firing
from services.dispatch.forwarder import Forwarder, LiveNodes
from services.dispatch.lease import Lease
from services.dispatch.link_pool import LinkPool
from services.dispatch.placing import Placing
from services.dispatch.reconciler import LEASE_KEY, Reconciler
from shared.cluster.routes import RouteReader
from shared.cluster.topic_log import TopicLog
from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.store import MessageStore
from shared.delivery.stream import ShardedStream
from shared.delivery.webhook_feed import WebhookFeed
from shared.infra.breaker import CLOSED
from shared.infra.clients import REDIS_FAILURES, redis_alive, redis_client
from shared.infra.serve import running
from shared.infra.web import EXCEPTION_HANDLERS, ops_routes

log = logging.getLogger(__name__)


def create_app(config: DispatchConfig) -> Starlette:
    redis = redis_client(config.redis_url)
    store = MessageStore(config.mongo_url, config.mongo_db)
    lifecycle = LifecycleWriter(store, config.lifecycle_flush, feed=WebhookFeed(redis))
    stream = ShardedStream(redis, shards=config.stream_shards)
    links = LinkPool(config.internal_key, config.link_timeout, config.link_tls())
    routes = RouteReader(redis, config.internal_key)
    live = LiveNodes(routes, links, config.nodes_refresh)
    inbox = Inbox(redis)
    # A retried entry keeps its topic messages' positions for as long as retries of it may come.
    placing = Placing(TopicLog(redis, config.namespaces, config.claim_idle_ms * (config.max_attempts + 1) // 1000 + 1))
    # one read loop per stream shard
    forwarders = [Forwarder(config, shard, routes, links, live, inbox, placing) for shard in stream.shards]
    lease = Lease(redis, LEASE_KEY, config.consumer, int(config.reconcile_interval * 3000))
    reconciler = Reconciler(config, store, inbox, lifecycle, lease, routes, stream)
    firing = Firing(config, reconciler.handover, lifecycle)

    async def health() -> dict[str, object]:
        redis_ok = await redis_alive(redis)
        mongo_ok = await store.ping()
        loop_ok = all(time.time() - r.last_cycle < config.block_ms / 1000 + 10 for r in forwarders)
        redis_breaker = next((r.breaker.state for r in forwarders if r.breaker.state != CLOSED), CLOSED)
        paused, complete = False, False
        if redis_ok:
            with contextlib.suppress(*REDIS_FAILURES):
                paused = await reconciler.handover.schedule.paused()
                complete = await inbox.epoch() is not None
        return {"ok": redis_ok and mongo_ok and loop_ok, "service": "dispatch", "redis": redis_ok, "mongo": mongo_ok,
                "forwarder": loop_ok, "breakers": {"redis": redis_breaker, "mongodb": store.breaker.state},
                "links": sorted(links.links), "schedule_paused": paused, "state_complete": complete}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with running(*(r.run() for r in forwarders), lifecycle.run(), reconciler.run(), firing.run()):
            yield
        with contextlib.suppress(Exception):
            await lifecycle.flush()
        await links.close()
        await redis.aclose()
        await store.close()

    return Starlette(routes=ops_routes(health, config.ops_guard), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
