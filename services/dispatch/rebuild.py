"""Rebuilding the hot delivery state in Redis from MongoDB's record, after Redis came back empty.

Two passes, each one query read page by page, so memory stays bounded whatever the backlog: first
every unexpired message is opened again for its recipients, oldest first; then every delivery on
record as acknowledged or expired is closed again. Live traffic goes on meanwhile (new messages go
to Redis as usual); a user who connects between the two passes may be sent a message they had
already acknowledged, which at-least-once delivery allows (clients drop duplicates by id).
Finally a new epoch marks the state complete; push nodes that see it change send their open
sessions what came back.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Awaitable, Callable

from shared.inbox import Inbox
from shared.store import MessageStore

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another dispatch instance holds the reconciler lease now; it will rebuild."""


async def rebuild(store: MessageStore, inbox: Inbox, page: int, held: Callable[[], Awaitable[bool]]) -> str:
    """Reopen what MongoDB says is open, then mark the state complete; return the new epoch."""
    started = time.monotonic()
    log.warning("Redis holds no delivery state; rebuilding it from MongoDB")
    opened = closed = 0
    async for messages in store.open_messages(dt.datetime.now(dt.timezone.utc), page):
        await inbox.open(messages)
        opened += len(messages)
        if not await held():
            raise LeaseLost
    async for pairs in store.closed_deliveries(page):
        closed += len(await inbox.close(pairs))
        if not await held():
            raise LeaseLost
    epoch = await inbox.complete()
    log.warning("delivery state rebuilt", extra={"messages": opened, "closed": closed, "epoch": epoch,
                                                 "seconds": round(time.monotonic() - started, 3)})
    return epoch
