"""Storing a group commit's posts in MongoDB and handing them to dispatch, with the due-now part going out before the
insert.

The order that makes a 202 safe is: an intent in Redis, the insert, the hand-over (``shared/delivery/handover.py``).
The insert is most of a small post's time to its sockets (1.5-2 ms on FerretDB), and nothing in the 202's promise
needs a message to wait for it before it is *sent*: only before it is *answered*. So a post without an
``Idempotency-Key`` whose messages are all due now is handed over first (*early*), in the pipeline that records the
other posts' intents, then inserted; the 202 waits for both. It needs no intent: a failure of that pipeline comes
before its insert begins. The others keep the insert first:
- a post with an Idempotency-Key may be a retry of one stored, delivered, acked or cancelled since, which the insert
  tells (a duplicate) and a second hand-over would bring back;
- a scheduled message would fire seconds later whatever the insert's answer (and its post's intent must outlive the
  insert, so a post with any keeps the usual order whole).

If the store refuses or fails an early post (or that pipeline fails), its deliveries are closed in the inboxes (``withdraw``): a recipient
online at that moment may have it, nobody gets it later, and the answer is 503 ("maybe delivered", as any 503 is
"maybe stored"). After such a failure the next writes keep the insert first, until one insert succeeds (as the first
writes after a start do): a store going down costs at most the posts of the write it went down under.
``early=False`` (``HANDOVER_WHILE_STORING=0``) keeps it first always, for a business system that needs a 503 to mean
"sent to nobody".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.delivery.handover import Handover
from shared.delivery.store import MessageStore
from shared.infra.breaker import CircuitBreaker
from shared.infra.clock import now_ms
from shared.model.message import Message, by_post
from shared.wire.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    """One message of a post as it enters a write lane."""

    message: Message
    keyed: bool  # its post came with an Idempotency-Key


def early_posts(entries: list[Submitted], now: int) -> set[str]:
    """The posts that may be handed over while their insert runs: without a key, every message due by ``now``."""
    late = {e.message.post for e in entries if e.keyed or e.message.due_ms > now}
    return {e.message.post for e in entries} - late


class Acceptance:
    def __init__(self, store: MessageStore, handover: Handover, redis_breaker: CircuitBreaker, early: bool = True) -> None:
        self.store = store
        self.handover = handover
        self.redis = redis_breaker
        self.early = early
        self.store_trusted = False  # the last insert succeeded: early hand-overs are on (off until the first does)

    async def write(self, entries: list[Submitted]) -> list[ServiceError | None]:
        """Store and hand over a group commit's posts; per message, the error refusing its post (a post the store
        refuses fails alone, the others are handed over). Raises if the store or Redis fails the whole write."""
        messages = [e.message for e in entries]
        now = now_ms()
        going = early_posts(entries, now) if self.early and self.store_trusted else set()
        early = [m for m in messages if m.post in going]
        try:
            await self.redis.call(lambda: self.handover.intend([m for m in messages if m.post not in going], now, handing=early))
        except Exception:
            await self._withdraw(early)  # the pipeline may have run in part (or on a master its replicas did not confirm)
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
