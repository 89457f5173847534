"""The endpoints as MongoDB has them, read again whenever ``{webhooks}:version`` changes, and one sender loop per enabled one.

collect bumps the version on every change (``shared.delivery.webhook_endpoints``), so MongoDB is read
only then, not polled; the fan-out asks ``refresh`` before each batch, so an event recorded after an
endpoint was registered is never fanned out without it. Endpoints are also read every
``RELOAD_SECONDS`` in case a bump was lost with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from redis.asyncio import Redis

from services.webhooks import metrics
from services.webhooks.config import WebhooksConfig
from services.webhooks.sender import EndpointSender
from shared.delivery.webhook_endpoints import Endpoint, EndpointStore
from shared.delivery.webhook_feed import VERSION_KEY
from shared.delivery.webhook_queue import WebhookQueues
from shared.infra.retry import Backoff
from shared.wire.webhook_urls import UrlPolicy

log = logging.getLogger(__name__)
CHECK_SECONDS = 0.2
RELOAD_SECONDS = 30.0
GAUGE_SECONDS = 2.0


class Registry:
    def __init__(self, store: EndpointStore, redis: Redis, queues: WebhookQueues, config: WebhooksConfig,
                 policy: UrlPolicy) -> None:
        self.store = store
        self.redis = redis
        self.queues = queues
        self.config = config
        self.policy = policy
        self.endpoints: dict[str, Endpoint] = {}
        self.senders: dict[str, tuple[EndpointSender, asyncio.Task[None]]] = {}
        self._version: bytes | str | None = None
        self._loaded_at = -RELOAD_SECONDS
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the endpoints again if one changed since the last read (or long ago)."""
        async with self._lock:
            version = await self.redis.get(VERSION_KEY)
            if version == self._version and time.monotonic() - self._loaded_at < RELOAD_SECONDS:
                return
            endpoints = {e.id: e for e in await self.store.everything()}
            self._version, self._loaded_at = version, time.monotonic()
            self.endpoints = endpoints
            self._align()

    def _align(self) -> None:
        """A sender per enabled endpoint; a changed endpoint (rotated secret) handed to its sender; the others stopped."""
        enabled = {i: e for i, e in self.endpoints.items() if not e.disabled}
        for endpoint_id in set(self.senders) - set(enabled):
            self.senders.pop(endpoint_id)[1].cancel()
            for gauge in (metrics.QUEUE_DEPTH, metrics.FAILURES, metrics.SUCCESS_RATE):
                with contextlib.suppress(KeyError):
                    gauge.remove(endpoint_id)
        for endpoint_id, endpoint in enabled.items():
            running = self.senders.get(endpoint_id)
            if running and not (running[1].done() and not running[1].cancelled() and running[1].exception()):
                running[0].endpoint = endpoint
            else:  # new, or its sender crashed (logged): a fresh one
                sender = EndpointSender(endpoint, self.queues, self.config, self.policy, self.disable)
                task = asyncio.get_running_loop().create_task(sender.run())
                task.add_done_callback(self._ended)
                self.senders[endpoint_id] = (sender, task)
                log.info("webhook endpoint sending", extra={"endpoint": endpoint_id, "url": endpoint.url})

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook sender crashed", exc_info=task.exception())

    def poke(self, endpoint_ids: Iterable[str]) -> None:
        """Wake these endpoints' senders: events were queued for them."""
        for endpoint_id in endpoint_ids:
            if endpoint_id in self.senders:
                self.senders[endpoint_id][0].wake.set()

    async def disable(self, endpoint_id: str, reason: str) -> None:
        log.warning("webhook endpoint disabled", extra={"endpoint": endpoint_id, "error": reason})
        backoff = Backoff()
        while True:
            try:
                await self.store.disable(endpoint_id, reason)
                return
            except Exception as exc:  # MongoDB or Redis down: keep trying, the sender has stopped meanwhile
                await backoff.failed(log, f"disabling {endpoint_id}", exc)

    async def run(self) -> None:
        """Keep the endpoints current and their queue gauges fresh."""
        backoff, gauged = Backoff(), 0.0
        while True:
            try:
                await self.refresh()
                if time.monotonic() - gauged > GAUGE_SECONDS and self.senders:
                    for endpoint_id, counts in (await self.queues.report(list(self.senders))).items():
                        metrics.QUEUE_DEPTH.labels(endpoint_id).set(counts["queued"])
                        metrics.FAILURES.labels(endpoint_id).set(counts["failures"])
                    gauged = time.monotonic()
                backoff.succeeded()
            except Exception as exc:  # never die silently: log, back off, go on
                await backoff.failed(log, "reading webhook endpoints", exc)
                continue
            await asyncio.sleep(CHECK_SECONDS)

    async def close(self) -> None:
        tasks = [task for _, task in self.senders.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
