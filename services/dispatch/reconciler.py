"""The background duties of one dispatch instance at a time (it holds a Redis lease).

Each pass, in this order:

* if Redis lost the delivery state (no epoch), rebuild it from MongoDB (``rebuild.py``);
* finish the hand-overs collect left undone (it died, or Redis failed, between its MongoDB insert
  and its Redis pipeline): their posts are read back from MongoDB by id (``shared/delivery/handover.py``), their
  scheduled messages going to the schedule, never straight to the stream, so one cancelled since stays cancelled;
* finish the cancels collect left undone (it died between the schedule's cancel script and the cancel's record, or
  Redis failed under its ``message.cancelled`` fact): the script notes each cancel in ``{schedule}:cancelling`` with
  its time, and a note older than ``CANCEL_GRACE_SECONDS`` is claimed a page at a time; the page's posts are read back
  from MongoDB by id, the cancels recorded (one insert) and their facts appended (one stream entry), all under the
  noted times, and only then are the notes dropped (``shared/delivery/schedule.py``). A cancel whose record the
  server refuses (past MongoDB's document limit) is undone instead, as collect would have: the message goes back
  in the schedule;
* expire: close every inbox entry of messages past their expiry, a page at a time, from Redis's
  expiry indexes (no MongoDB read); the script that closes them notes each in its user's bucket
  (``expired:{u<b>}``), and each page of notes is then recorded ``expired`` (MongoDB, then the
  webhooks stream) before the notes are dropped;
* record the deliveries an inbox past ``INBOX_LIMIT`` pushed out (``trimmed:{u<b>}``) the same way,
  ``trimmed``, then drop their notes and count them against their messages;
* every ``purge_interval``, delete history past its ``purge_at`` (a TTL index does it on MongoDB),
  node ids whose card is gone, and consumers of dispatch instances gone for an hour.

So a closing made in Redis is recorded at least once, whenever this instance dies: notes left behind (a
SIGKILL, MongoDB or Redis failing mid-page) are recorded again at the next pass, by this instance or
another, an expiry or a cancel under the time it was noted with. Twice is once: a status keeps each stage's first
time, and a webhook event's id is derived from its delivery and stage (a cancel's from its message).

Apart from those hand-overs, nothing here appends to the stream: an entry a node did not take stays pending in the consumer
group and is claimed again; a delivery that reached no socket waits in its user's inbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from prometheus_client import Counter

from services.dispatch.config import DispatchConfig
from services.dispatch.lease import Lease
from services.dispatch.rebuild import LeaseLost, rebuild
from shared.cluster.routes import RouteReader
from shared.delivery.handover import Handover
from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.schedule import Cancelled
from shared.delivery.store import MessageStore
from shared.delivery.stream import ShardedStream
from shared.infra.clock import now_ms
from shared.infra.retry import Backoff
from shared.model.message import post_of
from shared.model.webhook_events import Fact

log = logging.getLogger(__name__)
EXPIRED = Counter("dispatch_expired_total", "Deliveries closed because their message expired")
TRIMMED = Counter("dispatch_trimmed_total", "Deliveries pushed out of an inbox past INBOX_LIMIT, closed as trimmed")
REBUILDS = Counter("dispatch_rebuilds_total", "Rebuilds of the delivery state after Redis lost it")
CLOSED = {"expired": EXPIRED, "trimmed": TRIMMED}
HANDED_OVER = Counter("dispatch_handovers_finished_total", "Posts collect stored but did not hand over, handed over here")
CANCELS_FINISHED = Counter("dispatch_cancels_finished_total", "Cancels collect took out of the schedule but did not "
                           "finish (record, webhook fact), finished here")

LEASE_KEY = "lease:reconciler"
IDLE_CONSUMER_MS = 3_600_000  # a dispatch instance silent for an hour with nothing pending is gone


class Reconciler:
    def __init__(self, config: DispatchConfig, store: MessageStore, inbox: Inbox, lifecycle: LifecycleWriter,
                 lease: Lease, routes: RouteReader, stream: ShardedStream) -> None:
        self.config = config
        self.store = store
        self.inbox = inbox
        self.routes = routes
        self.stream = stream
        self.handover = Handover(inbox.redis, inbox, stream, config.replica_acks, config.replica_ack_ms)
        self.lifecycle = lifecycle
        self.lease = lease
        self._next_purge = 0.0

    async def run(self) -> None:
        backoff = Backoff(cap=self.config.reconcile_interval)
        while True:
            try:
                if await self.lease.hold():
                    await self.reconcile()
                backoff.succeeded()
            except LeaseLost:
                log.info("reconciler lease lost; another instance goes on")
            except Exception as exc:  # a loop that dies silently is the failure we guard against
                await backoff.failed(log, "reconcile", exc)
                continue
            await asyncio.sleep(self.config.reconcile_interval)

    async def reconcile(self) -> None:
        if await self.inbox.epoch() is None:
            await rebuild(self.store, self.inbox, self.handover.schedule, self.config.rebuild_page, self.lease.hold,
                          self.lifecycle)
            REBUILDS.inc()
        await self.finish_handovers()
        await self.finish_cancels()
        await self.expire()
        await self.close_trimmed()
        if time.monotonic() >= self._next_purge:
            await self.tidy()
            self._next_purge = time.monotonic() + self.config.purge_interval

    async def tidy(self, idle_consumer_ms: int = IDLE_CONSUMER_MS) -> None:
        """Bound what would otherwise only grow: old history, dead node ids, consumers of gone instances."""
        deleted = await self.store.purge(dt.datetime.now(dt.UTC))
        nodes = await self.routes.forget_dead_nodes()
        consumers = await self.stream.forget_idle_consumers(idle_consumer_ms, self.config.consumer)
        if deleted or nodes or consumers:
            log.info("tidied", extra={"history": deleted, "nodes": nodes, "consumers": consumers})

    async def finish_handovers(self) -> int:
        """Hand over the posts MongoDB has whose intent outlived the grace period, but none of their messages with a
        lifecycle record (handed over already: fired, delivered, acked or cancelled); drop intents of posts it never
        got once no insert can still be running; return how many posts were handed over."""
        now = now_ms()
        intents = await self.handover.unfinished(now - int(self.config.handover_grace * 1000), self.config.expire_batch)
        if not intents:
            return 0
        messages = await self.store.stored_posts([post for post, _ in intents])
        await self.handover.finish(messages, await self.store.recorded([m.id for m in messages]))
        found = {m.post for m in messages}
        abandoned = [post for post, at in intents if post not in found and at < now - self.config.handover_abandon * 1000]
        await self.handover.drop(abandoned)
        HANDED_OVER.inc(len(found))
        log.warning("finished hand-overs collect left undone", extra={"posts": len(found), "count": len(messages),
                                                                      "dropped": len(abandoned)})
        return len(found)

    async def finish_cancels(self) -> int:
        """Record the cancels noted longer than the grace ago and not yet dropped, a page at a time: one script call
        claims the page, one bulk read gets its posts, one insert records it, one stream entry carries its facts, one
        ZREM drops the notes; return how many were recorded. Raises if MongoDB or Redis fails, the notes kept (claimed)
        for the next pass."""
        schedule, total, limit = self.handover.schedule, 0, self.config.expire_batch
        while True:
            noted = await schedule.unfinished_cancels(int(self.config.cancel_grace * 1000), limit)
            if not noted:
                break
            stored = {m.id: m for m in await self.store.stored_posts(list(dict.fromkeys(map(post_of, noted))))}
            cancels = [Cancelled(stored[m], at) for m, at in noted.items() if m in stored]
            refused = await self.store.record_cancels(cancels)
            for cancel in cancels:  # the record can never be written: undone, as collect does
                if cancel.message.id in refused:
                    await schedule.restore(cancel.message, claimed=True)
            recorded = [c for c in cancels if c.message.id not in refused]
            if self.lifecycle.feed is not None:
                await self.lifecycle.feed.publish([Fact("cancelled", c.message.id, "", c.at) for c in recorded])
            gone = [m for m in noted if m not in stored]
            if gone:  # its post is not in MongoDB (purged since): nothing to record, nothing to put back
                log.error("cancels noted for messages MongoDB does not have; dropped", extra={"ids": gone[:10]})
            await schedule.forget_cancels([c.message.id for c in recorded] + gone)
            CANCELS_FINISHED.inc(len(recorded))
            total += len(recorded)
            log.warning("finished cancels collect left undone", extra={"count": len(recorded), "refused": len(refused)})
            if len(noted) < limit:
                break
        return total

    async def expire(self) -> int:
        """Close every delivery of every message due by now, a page at a time, and record each page ``expired``; return
        how many were recorded (notes left by an earlier pass included)."""
        total, now, more = 0, now_ms(), True
        while more:
            _, more = await self.inbox.expire(now, self.config.expire_batch)
            total += await self.record_noted("expired")
        if total:
            log.info("expired deliveries", extra={"count": total})
        return total

    async def close_trimmed(self) -> int:
        """Record ``trimmed`` the deliveries the inbox limit pushed out of their inboxes, then close them; return how many."""
        total = await self.record_noted("trimmed")
        if total:
            log.warning("deliveries pushed out of full inboxes (INBOX_LIMIT)", extra={"count": total})
        return total

    async def record_noted(self, stage: str) -> int:
        """Record at ``stage`` the deliveries Redis noted closing (``Inbox.noted``), a page at a time: in MongoDB and the
        webhooks stream (``LifecycleWriter.write``), and only then drop the notes; return how many were dropped. Raises
        if the record fails, the notes kept for the next pass."""
        total, more = 0, True
        while more:
            noted = await self.inbox.noted(stage, self.config.expire_batch, now_ms())
            if not noted.entries:
                break
            await self.lifecycle.write(stage, noted.marks, publish=True)
            closed = len(await self.inbox.forget(stage, noted))
            CLOSED[stage].inc(closed)
            total += closed
            more = noted.more
        return total
