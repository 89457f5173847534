"""One endpoint's sending loop: take what is due from its queue, post each event signed, record what became of it.

Each endpoint has its own loop, its own connection pool (``WEBHOOK_CONCURRENCY`` connections) and
its own queue in Redis (``shared.delivery.webhook_queue``), so a slow or dead endpoint holds up only
itself: never socket delivery, posting, or another endpoint. A round takes up to ``WEBHOOK_BATCH``
due events in the order they happened and sends each user's one after another (other users' in
parallel); a 2xx completes an event, anything else (an answer, a timeout of
``WEBHOOK_TIMEOUT_SECONDS``, a refused connection or address) is retried on the schedule
(``schedule.py``) and, after the last attempt, goes to the failure list. A 410 disables the endpoint.
The URL is checked again before every attempt, and its host's addresses at every connect
(``shared.wire.webhook_urls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from pushcluster.webhooks import signature_header
from services.webhooks import metrics
from services.webhooks.config import WebhooksConfig
from services.webhooks.schedule import retry_at
from shared.delivery.webhook_endpoints import Endpoint
from shared.delivery.webhook_queue import Outcome, Queued, WebhookQueues
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.retry import Backoff
from shared.wire.errors import InvalidFields
from shared.wire.webhook_urls import UrlPolicy, checked_url, resolver_for

log = logging.getLogger(__name__)
IDLE_SECONDS = 1.0  # the longest wait for new events when nothing is due (a fan-out wakes the loop at once)
GONE = 410


class EndpointSender:
    def __init__(self, endpoint: Endpoint, queues: WebhookQueues, config: WebhooksConfig, policy: UrlPolicy,
                 gone: Callable[[str, str], Awaitable[None]]) -> None:
        self.endpoint = endpoint  # the registry puts a changed one (a rotated secret) here
        self.queues = queues
        self.config = config
        self.policy = policy
        self.gone = gone
        self.wake = asyncio.Event()
        self.ok = self.tried = 0
        self.last_error = ""

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.concurrency, resolver=resolver_for(self.policy))
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            backoff = Backoff()
            while True:
                try:
                    batch, next_due = await self.queues.due(self.endpoint.id, now_ms(), self.config.batch)
                    if batch:
                        outcomes = await self.attempt_all(session, batch)
                        await self.queues.settle(self.endpoint.id, outcomes, now_ms())
                        self.count(outcomes)
                    backoff.succeeded()
                except REDIS_FAILURES as exc:  # the round is attempted again: at least once
                    await backoff.failed(log, f"webhook round of {self.endpoint.id}", exc)
                    continue
                if batch and any(o.error.startswith(f"HTTP {GONE}") for o in outcomes):
                    await self.gone(self.endpoint.id, f"answered {GONE} Gone")
                    return
                if not batch:
                    await self.idle(next_due)

    async def idle(self, next_due: int | None) -> None:
        wait = IDLE_SECONDS if next_due is None else min(IDLE_SECONDS, max(0.005, (next_due - now_ms()) / 1000))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), wait)
        self.wake.clear()

    async def attempt_all(self, session: aiohttp.ClientSession, batch: list[Queued]) -> list[Outcome]:
        """Each user's events one after another, in order; users in parallel, ``WEBHOOK_CONCURRENCY`` at a time."""
        lanes: dict[str, list[Queued]] = {}
        for queued in batch:
            lanes.setdefault(queued.order, []).append(queued)
        slots = asyncio.Semaphore(self.config.concurrency)

        async def lane(items: list[Queued]) -> list[Outcome]:
            outcomes = []
            for queued in items:
                async with slots:
                    outcomes.append(await self.attempt(session, queued))
            return outcomes

        return [o for outcomes in await asyncio.gather(*(lane(items) for items in lanes.values())) for o in outcomes]

    async def attempt(self, session: aiohttp.ClientSession, queued: Queued) -> Outcome:
        endpoint, now = self.endpoint, now_ms()
        stamp = now // 1000
        headers = {"webhook-id": queued.webhook_id, "webhook-timestamp": str(stamp), "content-type": "application/json",
                   "webhook-signature": signature_header(endpoint.signing_secrets(now), queued.webhook_id, stamp, queued.body),
                   "user-agent": "pushcluster-webhooks"}
        try:
            checked_url(endpoint.url, self.policy)
            async with session.post(endpoint.url, data=queued.body, headers=headers, allow_redirects=False) as answer:
                status = answer.status
            if 200 <= status < 300:
                return Outcome(queued)
            error = f"HTTP {status}"
        except InvalidFields as exc:
            error = exc.message
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        final = error == f"HTTP {GONE}"
        return Outcome(queued, error, 0 if final else retry_at(queued.attempts + 1, self.config.schedule, now_ms()))

    def count(self, outcomes: list[Outcome]) -> None:
        ep = self.endpoint.id
        ok = sum(o.sent for o in outcomes)
        self.ok += ok
        self.tried += len(outcomes)
        metrics.ATTEMPTS.labels(ep, "ok").inc(ok)
        metrics.ATTEMPTS.labels(ep, "failed").inc(len(outcomes) - ok)
        metrics.SUCCESS_RATE.labels(ep).set(self.ok / self.tried)
        error = next((o.error for o in reversed(outcomes) if o.error), "")
        if error:
            if self.last_error and self.last_error != error:
                metrics.LAST_ERROR.remove(ep, self.last_error)
            self.last_error = error
            metrics.LAST_ERROR.labels(ep, error).set(now_ms() / 1000)
            log.warning("webhook attempts failed", extra={"endpoint": ep, "count": len(outcomes) - ok, "error": error})
