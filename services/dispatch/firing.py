"""Firing scheduled messages once due: every dispatch instance runs this loop, none holds a lease.

Each pass claims up to ``fire_batch`` due ids in one script call (``shared.delivery.schedule``), so an id goes
to exactly one claimer, then hands them over like collect does for a message due at once (and marks their deliveries ``due``): inboxes
opened and posts appended to the stream, the ids removed from ``schedule:firing`` and their fields
from their posts' hashes, all in one MULTI, so a claimer that dies leaves either everything or
nothing done (what it claimed is claimed again after ``FIRE_GRACE_MS``). A Redis Cluster has no
MULTI across slots: there the same commands go in one plain pipeline, hand-over first, so a claimer
dying in between leaves its claim to be fired again (at least once, never lost). A full page is followed at
once by the next; otherwise the loop sleeps until the next message falls due, at least ``FIRE_INTERVAL_MS``
and at most ``FIRE_IDLE_MS`` (a message scheduled meanwhile for sooner waits that long at worst), so an idle
schedule costs Redis a few calls a second, not one per interval. ``FIRE_CONCURRENCY`` such loops
run in each instance, so one packs its next page while Redis runs another's MULTI (a page's wall
time is about half waiting on Redis).

Every time here is Redis's clock (``TIME`` inside the claim script), not the instance's: instances whose clocks
disagree neither fire early nor take each other's fresh claims for stale ones.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Histogram

from services.dispatch.config import DispatchConfig
from shared.delivery.handover import Handover
from shared.delivery.lifecycle import LifecycleWriter
from shared.infra.clients import is_cluster
from shared.infra.retry import Backoff

log = logging.getLogger(__name__)
FIRED = Counter("dispatch_scheduled_fired_total", "Scheduled messages handed over once due")
LATENESS = Histogram("dispatch_scheduled_lateness_seconds", "From a scheduled message's due time to its hand-over",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))


class Firing:
    def __init__(self, config: DispatchConfig, handover: Handover, lifecycle: LifecycleWriter) -> None:
        self.config = config
        self.handover = handover
        self.lifecycle = lifecycle
        self.schedule = handover.schedule

    async def run(self) -> None:
        await asyncio.gather(*(self.loop() for _ in range(self.config.fire_concurrency)))

    async def loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                fired, wake_ms, now = await self.fire()
                backoff.succeeded()
            except Exception as exc:  # never die silently: log, back off, go on
                await backoff.failed(log, "firing scheduled messages", exc)
                continue
            if fired < self.config.fire_batch:
                await asyncio.sleep(self.pause_ms(wake_ms, now) / 1000)

    def pause_ms(self, wake_ms: int | None, now: int) -> int:
        """How long to sleep after a short page: until ``wake_ms`` (the next due time, None if nothing waits), within
        ``FIRE_INTERVAL_MS`` and ``FIRE_IDLE_MS``."""
        idle = self.config.fire_idle_ms
        return idle if wake_ms is None else min(idle, max(self.config.fire_interval_ms, wake_ms - now))

    async def fire(self) -> tuple[int, int | None, int]:
        """Claim and hand over one page of due messages; return how many ids were claimed, when the next falls due
        and when the claim was made (both on Redis's clock, which every instance shares)."""
        started = time.perf_counter()
        ids, wake_ms, claimed_at = await self.schedule.claim(self.config.fire_batch, self.config.fire_grace_ms)
        if not ids:
            return 0, wake_ms, claimed_at
        messages = await self.schedule.load(ids)
        async with self.handover.redis.pipeline(transaction=not is_cluster(self.handover.redis)) as pipe:
            self.handover.stage(pipe, messages)
            self.schedule.settle(pipe, ids)
            await pipe.execute()
        elapsed = time.perf_counter() - started
        at = claimed_at + int(elapsed * 1000)  # Redis's clock at the hand-over, near enough
        for m in messages:
            LATENESS.observe(max(0, at - m.due_ms) / 1000)
        self.lifecycle.mark("due", [(m.id, u) for m in messages for u in m.users], at)  # a topic message has no recipients
        FIRED.inc(len(messages))
        log.info("fired scheduled messages", extra={"count": len(messages), "claimed": len(ids), "seconds": round(elapsed, 4)})
        return len(ids), wake_ms, claimed_at
