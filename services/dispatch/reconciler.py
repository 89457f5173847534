"""Re-queueing what fell between MongoDB and the stream, and expiring what waited too long.

A delivery MongoDB accepted but dispatch never took from the stream (Redis restarted without
persistence, collect answered 503 after its write, an entry was lost) is put on the stream again
after ``reconcile_after`` seconds. One instance at a time does this, holding a Redis lease, in
batches. Re-queueing may deliver a message twice; clients drop duplicates by id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from prometheus_client import Counter

from services.dispatch.config import DispatchConfig
from services.dispatch.lease import Lease
from shared.retry import Backoff
from shared.store import MessageStore, NewDelivery
from shared.stream import DeliveryStream, stream_items

log = logging.getLogger(__name__)
REQUEUED = Counter("dispatch_requeued_total", "Deliveries re-queued from MongoDB by the reconciler")
EXPIRED = Counter("dispatch_expired_total", "Deliveries marked expired")

LEASE_KEY = "lease:reconciler"


class Reconciler:
    def __init__(self, config: DispatchConfig, store: MessageStore, stream: DeliveryStream, lease: Lease) -> None:
        self.config = config
        self.store = store
        self.stream = stream
        self.lease = lease

    async def run(self) -> None:
        backoff = Backoff(cap=self.config.reconcile_interval)
        while True:
            try:
                if await self.lease.hold():
                    await self.reconcile()
                backoff.succeeded()
            except Exception as exc:  # a loop that dies silently is the failure we guard against
                await backoff.failed(log, "reconcile", exc)
                continue
            await asyncio.sleep(self.config.reconcile_interval)

    async def reconcile(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        expired = await self.store.due_to_expire(now, self.config.reconcile_batch)
        if expired:
            await self.store.record([("expired", now, expired)])
            EXPIRED.inc(len(expired))
        before = now - dt.timedelta(seconds=self.config.reconcile_after)
        while True:
            docs = await self.store.stale_undispatched(before, now, self.config.reconcile_batch)
            if not docs:
                return
            records = [NewDelivery.from_inbox(d) for d in docs]
            await self.stream.enqueue(stream_items(records))
            await self.store.requeued([d["_id"] for d in docs], now)
            REQUEUED.inc(len(docs))
            log.info("re-queued stale deliveries", extra={"count": len(docs)})
            if len(docs) < self.config.reconcile_batch:
                return
