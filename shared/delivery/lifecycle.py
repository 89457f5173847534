"""Batched, coalesced lifecycle writes: services mark stages as they happen; one loop writes them in bulk.

Marks are kept per delivery until the next flush, so a delivery that is dispatched, delivered and
acknowledged within one window costs one document. Marking never waits on MongoDB, so a slow
database cannot slow delivery. A topic or broadcast message has no recipients to mark: each node
records how many of its sockets it was written to (``count``), merged the same way. A failed flush is kept and retried with backoff; past
``max_pending`` deliveries the oldest marks are dropped with a warning (they only refine the status
view: the delivery state itself lives in Redis).

With a ``WebhookFeed``, the stages webhooks report (delivered, acked, expired) are also kept, as the
marks' own lists (no work per delivery), and at the same flush those of the stages some endpoint wants
become facts, appended to the webhooks stream as one entry (``shared.delivery.webhook_feed``): a
cluster without webhook endpoints pays one SMEMBERS a second. A failed append is kept for the next
flush, up to ``max_pending`` facts.

So a mark lives only in this process until its flush, and a SIGKILL loses what the last second marked. A
caller whose marks must survive it keeps its own durable note of them (dispatch's expired and trimmed
deliveries, noted in Redis by the script that closes them) and calls ``write``, which records them in
MongoDB before returning and, with ``publish``, appends their facts too; it drops its note only then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from shared.delivery.store import MessageStore, NodeCount
from shared.delivery.webhook_feed import WebhookFeed
from shared.infra.retry import Backoff
from shared.model.message import Pair
from shared.model.states import STAGES
from shared.model.webhook_events import Fact
from shared.wire.errors import Unavailable

log = logging.getLogger(__name__)
FACT_STAGES = frozenset({"delivered", "acked", "expired"})  # the stages webhooks report
FLUSH_SECONDS = 1.0  # marks wait this long at most before their bulk write begins


class FactBatch(NamedTuple):
    """One mark's deliveries at a stage webhooks report, kept as marked until a flush turns the wanted ones into facts."""

    stage: str
    pairs: list[Pair]
    at: int


class LifecycleWriter:
    def __init__(self, store: MessageStore, interval: float = FLUSH_SECONDS, max_pending: int = 200_000,
                 feed: WebhookFeed | None = None, node: str = "") -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending
        self.feed = feed
        self.node = node  # named in the delivered facts this writer records
        self._pending: dict[Pair, dict[str, int]] = {}
        self._counts: dict[tuple[str, str], NodeCount] = {}
        self._facts: list[FactBatch] = []  # since the last flush, for the webhooks stream

    def mark(self, stage: str, pairs: Iterable[Pair], at_ms: int | None = None, report: bool = True) -> None:
        """Record that these deliveries reached ``stage`` at ``at_ms`` (now by default); the first time wins.
        ``report=False``: no webhook facts (another mark of the same deliveries reports them)."""
        assert stage in STAGES, stage
        at = at_ms or int(time.time() * 1000)
        if report and self.feed is not None and stage in FACT_STAGES:
            pairs = list(pairs)
            self._facts.append(FactBatch(stage, pairs, at))
        pending = self._pending
        for pair in pairs:
            stages = pending.get(pair)
            if stages is None:
                pending[pair] = {stage: at}
            else:
                stages.setdefault(stage, at)
        if len(pending) > self.max_pending:
            dropped = len(pending) - self.max_pending
            for pair in list(pending)[:dropped]:
                del pending[pair]
            log.warning("lifecycle backlog full; dropping oldest marks", extra={"count": dropped})

    async def write(self, stage: str, marks: Mapping[Pair, int], publish: bool = False) -> None:
        """Record that these deliveries reached ``stage``, each at its own time (ms), in MongoDB before returning (for a
        caller that must not go on until they are on record; ``Unavailable`` if they are not). Their webhook facts go
        with the next flush, or with ``publish`` are appended to the webhooks stream before returning too (one entry;
        the Redis error raised if not), for a caller that keeps its own note of the deliveries until this returns:
        writing them again, under the same times, is one status and one event each."""
        await self.store.record({pair: {stage: at} for pair, at in marks.items()})
        if self.feed is None or stage not in FACT_STAGES or not marks:
            return
        if not publish:
            self._facts += [FactBatch(stage, [pair], at) for pair, at in marks.items()]
        elif stage in await self.feed.wanted_stages():
            await self.feed.append([self._fact(stage, pair, at) for pair, at in marks.items()])

    def count(self, message_id: str, node: str, sockets: int, stages: dict[str, int]) -> None:
        """Record that a topic message reached ``stages`` on ``node`` and was written to ``sockets`` of its sockets."""
        row = self._counts.setdefault((message_id, node), NodeCount())
        row.sockets += sockets
        for stage, at in stages.items():
            row.stages.setdefault(stage, at)

    async def flush(self) -> None:
        """Write the marks to MongoDB, then append their webhook facts: the durable record never waits on Redis (a
        Redis that stalls would hold the marks in this process, to be lost with it)."""
        marks, self._pending = self._pending, {}
        counts, self._counts = self._counts, {}
        try:
            await self.store.record(marks, counts)
        except Unavailable:
            for pair, stages in self._pending.items():  # marked meanwhile: merge into the kept ones
                for stage, at in stages.items():
                    marks.setdefault(pair, {}).setdefault(stage, at)
            self._pending = marks
            counts, self._counts = self._counts, counts
            for (message_id, node), row in counts.items():
                self.count(message_id, node, row.sockets, row.stages)
            raise
        await self._publish_facts()

    async def _publish_facts(self) -> None:
        """Append the wanted facts marked since the last flush to the webhooks stream; keep them if Redis fails."""
        batches, self._facts = self._facts, []
        if self.feed is None or not batches:
            return
        try:
            stages = await self.feed.wanted_stages()
            await self.feed.append([self._fact(b.stage, pair, b.at) for b in batches if b.stage in stages for pair in b.pairs])
        except Exception as exc:  # Redis down: keep them for the next flush, the newest max_pending at most
            self._facts = self._newest(batches + self._facts)
            log.warning("webhook facts not appended; kept for the next flush",
                        extra={"count": sum(len(b.pairs) for b in batches), "error": repr(exc)})

    def _fact(self, stage: str, pair: Pair, at: int) -> Fact:
        """The webhook fact of a delivery reaching ``stage`` at ``at``: a delivery names the node that wrote it."""
        return Fact(stage, pair[0], pair[1], at, self.node if stage == "delivered" else "")

    def _newest(self, batches: list[FactBatch]) -> list[FactBatch]:
        """The newest of ``batches`` holding ``max_pending`` facts at most (the oldest batch cut to fit)."""
        kept: list[FactBatch] = []
        room = self.max_pending
        for batch in reversed(batches):
            if room <= 0:
                break
            kept.append(batch if len(batch.pairs) <= room else batch._replace(pairs=batch.pairs[-room:]))
            room -= len(batch.pairs)
        return kept[::-1]

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
                backoff.succeeded()
            except Unavailable as exc:
                await backoff.failed(log, "lifecycle write", exc)
