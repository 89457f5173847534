"""Rebuilding the hot delivery state in Redis from MongoDB's record, after Redis came back empty.

Two passes, each one query read page by page, so memory stays bounded whatever the backlog: first
every unexpired message is opened again for its recipients, oldest first (a scheduled one not due
yet goes back in the schedule instead); then every delivery recorded as acknowledged, expired or
cancelled since the oldest of them was accepted is closed again, and the cancelled messages leave
the schedule.

Live traffic goes on meanwhile (new messages go to Redis as usual). Replays wait until a new epoch
marks the state complete at the end, so nobody is sent a message they had acknowledged; push nodes
that see the epoch change send their open sessions what came back.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from shared.inbox import Inbox
from shared.schedule import Schedule
from shared.store import MessageStore, utc

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another dispatch instance holds the reconciler lease now; it will rebuild."""


async def rebuild(store: MessageStore, inbox: Inbox, schedule: Schedule, page: int,
                  held: Callable[[], Awaitable[bool]]) -> str:
    """Reopen what MongoDB says is open, then mark the state complete; return the new epoch."""
    started = time.monotonic()
    log.warning("Redis holds no delivery state; rebuilding it from MongoDB")
    opened = closed = scheduled = 0
    oldest: int | None = None
    async for messages in store.open_messages(dt.datetime.now(dt.UTC), page):
        now = await schedule.now_ms()  # the schedule's clock (Redis's), as firing uses: nothing opened early
        later = [m for m in messages if m.due_ms > now]
        await inbox.open([m for m in messages if m.due_ms <= now])
        await schedule.hold(later)
        opened += len(messages) - len(later)
        scheduled += len(later)
        oldest = messages[0].ts if oldest is None else oldest
        if not await held():
            raise LeaseLost
    if oldest is not None:
        async for pairs, cancelled in store.closed_deliveries(utc(oldest), page):
            closed += len(await inbox.close(pairs))
            await schedule.unschedule(cancelled)
            if not await held():
                raise LeaseLost
    epoch = await inbox.complete()
    log.warning("delivery state rebuilt", extra={"messages": opened, "scheduled": scheduled, "closed": closed, "epoch": epoch,
                                                 "seconds": round(time.monotonic() - started, 3)})
    return epoch
