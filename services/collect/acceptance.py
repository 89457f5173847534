"""Storing posts in MongoDB and handing them to dispatch, with the due-now part going out before the insert.

The order that makes a 202 safe is: an intent in Redis, the insert, the hand-over (``shared/delivery/handover.py``).
The insert is most of a small post's time to its sockets (1.5-2 ms on FerretDB), and nothing in the 202's promise
needs a message to wait for it before it is *sent*: only before it is *answered*. So a post without an
``Idempotency-Key`` whose messages are all due now is handed over first (*early*), then inserted; the 202 waits for
both. It needs no intent: a failure of its hand-over comes before its insert begins. The others keep the insert first:
- a post with an Idempotency-Key may be a retry of one stored, delivered, acked or cancelled since, which the insert
  tells (a duplicate) and a second hand-over would bring back;
- a scheduled message would fire seconds later whatever the insert's answer (and its post's intent must outlive the
  insert, so a post with any keeps the usual order whole).

An early hand-over has a lane of its own, apart from the store's group commit: under load a post would otherwise wait
for the insert running when it came (tens of ms for a few posts of 200) before even its hand-over could start.

If the store refuses or fails an early post (or its hand-over pipeline fails), its deliveries are closed in the inboxes
(``withdraw``): a recipient online at that moment may have it, nobody gets it later, and the answer is 503 ("maybe
delivered", as any 503 is "maybe stored"). After such a failure the posts that come keep the insert first, until one
insert succeeds (as the first posts after a start do, unless the start's index creation reached the store): a store
going down costs at most the posts in flight when it went down. ``early=False`` (``HANDOVER_WHILE_STORING=0``) keeps
it first always, for a business system that needs a 503 to mean "sent to nobody".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.delivery.handover import Handover
from shared.delivery.store import MessageStore
from shared.infra.breaker import CircuitBreaker
from shared.infra.clock import now_ms
from shared.infra.coalesce import Coalescer
from shared.model.message import Message, by_post
from shared.model.priority import TIERS, Priority
from shared.wire.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    """One message of a post as it enters its tier's store lane."""

    message: Message
    handed: bool  # its post was handed over already (early), so it needs no intent and no hand-over after its insert


def goes_early(messages: list[Message], keyed: bool, now: int) -> bool:
    """Whether a post may be handed over before its insert: it has no Idempotency-Key and every message is due by
    ``now``."""
    return not keyed and all(m.due_ms <= now for m in messages)


class Acceptance:
    """Each tier's two lanes: early hand-overs, and the store's group commit. Posts arriving while a lane's write runs
    share its next one (``shared.infra.coalesce``): one pipeline, one insert for all. Each tier has its own, so a high
    post never waits for a large write of low ones; and an early post's hand-over never waits for an insert, its own
    or another post's."""

    def __init__(self, store: MessageStore, handover: Handover, redis_breaker: CircuitBreaker, early: bool = True) -> None:
        self.store = store
        self.handover = handover
        self.redis = redis_breaker
        self.early = early
        self.store_trusted = False  # the store's last write succeeded: early hand-overs are on (off until one does)
        self._handing: dict[Priority, Coalescer[Message, None]] = {tier: Coalescer(self.hand_early) for tier in TIERS}
        self._storing: dict[Priority, Coalescer[Submitted, ServiceError | None]] = {tier: Coalescer(self.write) for tier in TIERS}
        self._on_stream = dict.fromkeys(TIERS, 0)  # early posts in the store's lane: on the stream, which counts them

    async def accept(self, tier: Priority, messages: list[Message], keyed: bool) -> ServiceError | None:
        """Store and hand over one post; the error refusing it, if any. Raises if the store or Redis fails its write."""
        handed = self.early and self.store_trusted and goes_early(messages, keyed, now_ms())
        if handed:
            await self._handing[tier].submit(messages)
            self._on_stream[tier] += 1
        try:
            return next(filter(None, await self._storing[tier].submit([Submitted(m, handed) for m in messages])), None)
        finally:
            if handed:
                self._on_stream[tier] -= 1

    def backlog(self, tier: Priority) -> tuple[int, float]:
        """The tier's posts waiting for a write here and not on the stream yet (an early post, once handed over, is the
        stream's backlog while its insert runs: counted here too, it would count twice toward shedding), and how long
        the oldest has waited (s)."""
        (handing, handing_for), (storing, storing_for) = self._handing[tier].backlog(), self._storing[tier].backlog()
        storing -= self._on_stream[tier]
        return handing + storing, max(handing_for, storing_for if storing else 0.0)

    async def hand_early(self, messages: list[Message]) -> list[None]:
        """Hand over early posts, in one pipeline; if it fails, close what of it may have run (nothing is stored)."""
        try:
            await self.redis.call(lambda: self.handover.complete(messages))
        except Exception:
            await self._withdraw(messages)
            raise
        return [None] * len(messages)

    async def write(self, entries: list[Submitted]) -> list[ServiceError | None]:
        """Store a group commit's posts, the others' intents first and their hand-over after; per message, the error
        refusing its post (a post the store refuses fails alone). Raises if the store or Redis fails the whole write,
        having withdrawn the early posts in it."""
        messages = [e.message for e in entries]
        early = [e.message for e in entries if e.handed]
        going = {m.post for m in early}
        now = now_ms()
        try:
            await self.redis.call(lambda: self.handover.intend([m for m in messages if m.post not in going], now))
        except Exception:
            await self._withdraw(early)  # handed over already, and now not stored
            raise
        try:
            fresh, refusals = await self.store.accept(messages)
        except Exception:
            self.store_trusted = False
            await self._withdraw(early)
            raise
        self.store_trusted = True
        refused = {m.post for m, refusal in zip(messages, refusals) if refusal is not None}
        await self._withdraw([m for m in early if m.post in refused])
        await self.redis.call(lambda: self.handover.complete([m for m in fresh if m.post not in going]))
        stored_posts = {m.post for m in fresh}
        retried = [m for m in messages if m.post not in stored_posts and m.post not in refused]
        if retried:
            await self.redis.call(lambda: self.handover.settle_retried(retried, now))
        if refused:
            await self.redis.call(lambda: self.handover.drop(sorted(refused)))
        return refusals

    async def _withdraw(self, messages: list[Message]) -> None:
        """Close the inbox deliveries of early messages whose posts were not stored, so no replay sends them later."""
        if not messages:
            return
        pairs = [(m.id, user) for m in messages for user in m.users]
        try:
            await self.redis.call(lambda: self.handover.inbox.close(pairs))
        except Exception as exc:  # they stay open: the recipients get a message answered 503, at least once
            log.error("could not withdraw messages handed over before their store failed",
                      extra={"posts": len(by_post(messages)), "error": repr(exc)})
            return
        log.warning("messages handed over while their store failed withdrawn",
                    extra={"posts": len(by_post(messages)), "deliveries": len(pairs)})
