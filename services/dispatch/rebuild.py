"""Rebuilding the hot delivery state in Redis from MongoDB's record, after Redis came back empty.

Two passes, each one query read page by page, so memory stays bounded whatever the backlog: first
every unexpired message is opened again for its recipients, oldest first (a scheduled one not due
yet goes back in the schedule instead, and so does a scheduled topic or broadcast message that fell
due while Redis was down and that no node recorded: it fires at once; a scheduled message due by now
leaves the schedule, which a surviving Redis Cluster master may still hold it in, so it is not fired
too); then every delivery recorded as acknowledged, expired or cancelled since the oldest of them was
accepted is closed again, and the cancelled messages leave the schedule. Putting a scheduled message
back skips the ids a cancel took out since Redis came back (``Schedule.hold``): a page read before
such a cancel does not bring its message back.
The second pass reads the record no sooner than ``MARKS_SETTLE_SECONDS`` after the state was marked
incomplete: an ack a live node closed in Redis just before is marked ``acked`` in MongoDB only at
that node's next lifecycle flush (once a second), and a second pass reading before it would leave
the message open, to be replayed.
Last, the acks Redis held while the state was incomplete (``Inbox.acknowledge``: taken
while it was empty, or closing what the first pass then reopened) are closed again and recorded
``acked`` in MongoDB, their webhook facts appended, before the state is marked complete, so no replay
can send them.

Live traffic goes on meanwhile (new messages go to Redis as usual). The rebuild first marks the
whole state incomplete, whichever buckets were lost, and pauses the schedule: replays wait until a
new epoch marks the state complete at the end, so nobody is sent a message they had acknowledged,
and nothing fires before the cancelled messages are out of the schedule again. Push nodes that
see the epoch change send their open sessions what came back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import FLUSH_SECONDS, LifecycleWriter
from shared.delivery.schedule import Schedule
from shared.delivery.store import MessageStore, utc
from shared.infra.serve import running
from shared.model.message import Message

log = logging.getLogger(__name__)


MARKS_SETTLE_SECONDS = 2 * FLUSH_SECONDS  # a live node's marks taken before the rebuild are in MongoDB by then
PAUSE_MS = 30_000  # the schedule's pause, renewed every third of it: a rebuild that dies lets firing resume after this


class LeaseLost(Exception):
    """Another dispatch instance holds the reconciler lease now; it will rebuild."""


async def unfired_topic_messages(store: MessageStore, due: list[Message]) -> list[Message]:
    """The scheduled topic and broadcast messages among ``due`` that no record says fired (or were cancelled): Redis
    lost them from the schedule before they fired. A user message needs no such test (its inbox is opened again and
    what was acked closed again); a topic message opens no inbox, so it is fired again only if no node recorded it:
    one that fired to no node at all (no subscriber anywhere) is fired again, to the sockets subscribed now."""
    candidates = [m for m in due if m.topic is not None and m.due_ms]
    if not candidates:
        return []
    recorded = await store.recorded([m.id for m in candidates])
    return [m for m in candidates if m.id not in recorded]


async def still_held(held: Callable[[], Awaitable[bool]]) -> None:
    """Go on only while this instance holds the lease; else ``LeaseLost``."""
    if not await held():
        raise LeaseLost


async def keep_paused(schedule: Schedule) -> None:
    """Renew the schedule's pause every third of ``PAUSE_MS`` while the rebuild runs, however long one MongoDB page
    takes: firing must not resume before the cancelled messages are out of the schedule again."""
    while True:
        await asyncio.sleep(PAUSE_MS / 3000)
        await schedule.pause(PAUSE_MS)


async def close_held_acks(inbox: Inbox, lifecycle: LifecycleWriter) -> int:
    """Close the deliveries acked while the state was incomplete, now that the passes reopened them, record exactly
    those ``acked`` in MongoDB (an ack the node could not record: it found nothing to close) and append their
    ``message.acked`` facts to the webhooks stream, then forget the held acks; return how many closed. Only an entry
    in the acking user's own inbox closes, as for any ack. The facts go before the held acks are forgotten, not with
    the next lifecycle flush: a dispatch SIGKILLed after forgetting them would lose those events."""
    acks = await inbox.held_acks()
    if not acks:
        return 0
    closed = set(await inbox.close([pair for pair, _ in acks]))
    await lifecycle.write("acked", {pair: at for pair, at in acks if pair in closed}, publish=True)
    await inbox.forget_held(acks)
    return len(closed)


async def rebuild(store: MessageStore, inbox: Inbox, schedule: Schedule, page: int,
                  held: Callable[[], Awaitable[bool]], lifecycle: LifecycleWriter) -> str:
    """Reopen what MongoDB says is open, then mark the state complete; return the new epoch."""
    started = time.monotonic()
    log.warning("Redis holds no delivery state; rebuilding it from MongoDB")
    # A Redis Cluster master restarted empty loses only its buckets' markers: the others' replays must wait too, or
    # they would read what the first pass reopens before the second closes it again (acked or cancelled messages).
    await inbox.incomplete()
    settled = time.monotonic() + MARKS_SETTLE_SECONDS
    await schedule.pause(PAUSE_MS)
    async with running(keep_paused(schedule)):
        epoch, counts = await reopen(store, inbox, schedule, page, held, lifecycle, settled)
    await schedule.resume()
    log.warning("delivery state rebuilt", extra={**counts, "epoch": epoch, "seconds": round(time.monotonic() - started, 3)})
    return epoch


async def reopen(store: MessageStore, inbox: Inbox, schedule: Schedule, page: int, held: Callable[[], Awaitable[bool]],
                 lifecycle: LifecycleWriter, settled: float) -> tuple[str, dict[str, int]]:
    """The rebuild's passes, ending with the state marked complete: the new epoch, and what was opened, scheduled
    and closed. The second reads the record once the marks taken before the rebuild are on it (``settled``,
    monotonic)."""
    opened = closed = scheduled = 0
    oldest: int | None = None
    async for messages in store.open_messages(dt.datetime.now(dt.UTC), page):
        now = await schedule.now_ms()  # the schedule's clock (Redis's), as firing uses: nothing opened early
        later = [m for m in messages if m.due_ms > now]
        due = [m for m in messages if m.due_ms <= now]
        unfired = await unfired_topic_messages(store, due)
        await inbox.open(due)  # topic messages open no inbox: the unfired ones go back in the schedule, due at once
        # A scheduled message due by now is delivered from its inboxes; one a Redis Cluster master still holds in the
        # schedule (it fell due while firing was paused or down) must not fire again once the schedule resumes.
        await schedule.unschedule([m.id for m in due if m.due_ms and m not in unfired])
        await schedule.hold(later + unfired)
        opened += len(due) - len(unfired)
        scheduled += len(later) + len(unfired)
        oldest = messages[0].ts if oldest is None else oldest
        await still_held(held)
    if oldest is not None:
        await asyncio.sleep(settled - time.monotonic())
        async for pairs, cancelled in store.closed_deliveries(utc(oldest), page):
            closed += len(await inbox.close(pairs))
            await schedule.unschedule(cancelled)
            await still_held(held)
    closed += await close_held_acks(inbox, lifecycle)
    return await inbox.complete(), {"messages": opened, "scheduled": scheduled, "closed": closed}
