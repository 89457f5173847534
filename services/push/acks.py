"""Client acknowledgements, closed in Redis in batches: one flush per short window, whoever sent them.

A flush closes the acked deliveries in the users' inboxes (only ids in the acking user's own inbox
count, so nobody can acknowledge someone else's message) and marks those ``acked`` in the
lifecycle. It also marks the acks of messages this node wrote to the acking socket (surely deliveries
to that user: ``SentIds``) that found nothing to close: another socket's ack, on another node, closed
the delivery first, and that node's mark dies with it if it is SIGKILLed before its next lifecycle
flush; the record must not depend on which of a user's tabs acked first. Such a mark reports no
webhook fact (the closing ack's did). While the state is incomplete (Redis came back empty and is being rebuilt), Redis also
holds each ack for the rebuild, which closes and records it once its delivery is reopened
(``Inbox.acknowledge``). A failed flush is kept and retried with backoff.

An ack a failed flush keeps would be lost with the node, and could reach Redis only after a rebuild
has reopened its message and a replay sent it again; so, on the first failure, the acks of messages
this node wrote to the acking socket (surely deliveries to that user: ``SentIds``) are marked ``acked``
in the lifecycle at once, and the rebuild finds them on record in MongoDB.

What waits is bounded: at most ``max_pending`` acks (``MAX_PENDING_ACKS``) are kept while Redis is down;
past that the newest are dropped, counted in ``push_acks_dropped_total`` and logged once per flush attempt.
A dropped ack only leaves its message open in the user's inbox, so it is sent again on a later replay (at
least once; the client drops it by id): the node's memory stays bounded however long Redis is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import NamedTuple

from services.push.metrics import ACKS_DROPPED, ACKS_PENDING
from shared.delivery.inbox import Acked, Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.retry import Backoff
from shared.model.message import Pair

log = logging.getLogger(__name__)

WINDOW_SECONDS = 0.02
MAX_PENDING_ACKS = 100_000  # acks kept for a flush while Redis is down (~150 bytes each: ~15 MB)


class AckFrame(NamedTuple):
    """One ack frame's ids, and which of them this node wrote to the acking socket and has not recorded the ack of."""

    acked: Acked
    written: frozenset[str]


class Acks:
    def __init__(self, inbox: Inbox, lifecycle: LifecycleWriter, max_pending: int = MAX_PENDING_ACKS) -> None:
        self.inbox = inbox
        self.lifecycle = lifecycle
        self.max_pending = max_pending
        self._pending: list[AckFrame] = []
        self._count = 0  # ids in ``_pending``
        self._dropped = 0  # since the last log line
        self._wake = asyncio.Event()

    def add(self, user_id: str, message_ids: tuple[str, ...], written: Collection[str] = ()) -> None:
        """Take a client's acks; ``written``: those of the ids this node wrote to the acking socket."""
        self._keep([AckFrame(Acked(user_id, now_ms(), message_ids), frozenset(written))])
        self._wake.set()

    def _keep(self, frames: list[AckFrame]) -> None:
        """Append these frames to the pending ones, up to ``max_pending`` ids: the ids past it are dropped (counted)."""
        for frame in frames:
            room = self.max_pending - self._count
            ids = frame.acked.ids
            if room < len(ids):
                self._drop(len(ids) - max(room, 0))
                frame = frame._replace(acked=frame.acked._replace(ids=ids[:max(room, 0)]))
            if frame.acked.ids:
                self._pending.append(frame)
                self._count += len(frame.acked.ids)
        ACKS_PENDING.set(self._count)

    def _drop(self, count: int) -> None:
        ACKS_DROPPED.inc(count)
        self._dropped += count

    def pending(self) -> int:
        return self._count

    def _mark(self, by_time: Mapping[int, list[Pair]], report: bool = True) -> None:
        """Mark these acks ``acked`` in the lifecycle, by the time of their frames; ``report``: with their webhook facts."""
        for at, pairs in by_time.items():
            if pairs:
                self.lifecycle.mark("acked", pairs, at, report)

    async def flush(self) -> None:
        frames, self._pending, self._count = self._pending, [], 0
        try:
            closed: set[Pair] = set(await self.inbox.acknowledge([f.acked for f in frames]))
        except REDIS_FAILURES:
            written: defaultdict[int, list[Pair]] = defaultdict(list)
            for (user, at, _), mine in frames:
                written[at] += [(m, user) for m in mine]
            self._mark(written)
            later, self._pending, self._count = self._pending, [], 0  # the failed frames first, then those that came
            self._keep([f._replace(written=frozenset()) for f in frames] + later)  # meanwhile, up to the cap
            raise
        finally:
            ACKS_PENDING.set(self._count)
        acked: defaultdict[int, list[Pair]] = defaultdict(list)
        elsewhere: defaultdict[int, list[Pair]] = defaultdict(list)  # written here, closed by another socket's ack
        for (user, at, ids), mine in frames:
            acked[at] += [(m, user) for m in ids if (m, user) in closed]
            if mine:
                elsewhere[at] += [(m, user) for m in mine if (m, user) not in closed]
        self._mark(acked)
        self._mark(elsewhere, report=False)

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            await asyncio.sleep(WINDOW_SECONDS)
            self._wake.clear()
            try:
                await self.flush()
                backoff.succeeded()
            except REDIS_FAILURES as exc:
                self._wake.set()
                if self._dropped:
                    log.warning("acks dropped past the backlog cap; their messages will be sent again",
                                extra={"count": self._dropped, "cap": self.max_pending})
                    self._dropped = 0
                await backoff.failed(log, "ack flush", exc)
