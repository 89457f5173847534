"""From facts to queued events: read ``{webhooks}:events`` as a consumer group and queue each event for the endpoints
that want it, in the order the events happened.

Facts reach the stream up to a flush after they happened, so the facts read are held for ``WEBHOOK_ORDER_WINDOW_MS``
(``order.py``, which argues why that orders them) and each pass queues those the window releases, in the order they
happened, as one batch (``WEBHOOK_BATCH`` facts at most): message facts of a type some endpoint wants are attributed to
the API key that posted the message (the post's ``sender`` in MongoDB, read once per post by id, an equality filter,
and cached; never a query per event; the deliveries kept only for a later expiry's ``last_state`` read nothing),
presence facts go to every endpoint that wants them, and one script (``shared.delivery.webhook_queue``) queues them
and acknowledges the entries whose last fact they are, at once. A delivery's ``delivered`` fact happened before its
expiry, so it is released in the same batch or an earlier one, and the expiry's ``last_state`` sees it.

A process killed with facts held, or before that script, leaves their entries pending under its consumer name, and the
next one (or this loop after an error, its window emptied) starts by reading them again (from ``0``): nothing is lost,
nothing queued twice (the script skips events already fanned out). One instance runs this loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.webhooks import metrics
from services.webhooks.config import WebhooksConfig
from services.webhooks.order import OrderWindow, entry_ms
from services.webhooks.registry import Registry
from shared.delivery.store import MessageStore
from shared.delivery.webhook_feed import EVENTS_KEY, entries_of
from shared.delivery.webhook_queue import Queued, WebhookQueues, seen_key
from shared.infra.clock import now_ms
from shared.infra.retry import Backoff
from shared.model.message import index_of, post_of
from shared.model.webhook_events import Fact, PostFacts, decode_facts, event_body, event_data, last_state

log = logging.getLogger(__name__)
GROUP, CONSUMER = "webhooks", "webhooks"
CACHED_POSTS = 100_000
ENTRIES_PER_READ = 100  # stream entries (each a flush's facts) per read
IDLE_MS = 1000  # the longest wait for new entries


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Posts:
    """The posts message events need, read from MongoDB by id and kept (without frames) for the next events."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self._cache: OrderedDict[str, PostFacts] = OrderedDict()

    async def read(self, posts: set[str], frames: set[str]) -> dict[str, PostFacts]:
        """``posts`` as MongoDB has them (one missing is left out), with their frames for those in ``frames``."""
        found = {p: self._cache[p] for p in posts - frames if p in self._cache}
        wanted = sorted(posts - set(found))
        docs = await self.store.breaker.call(lambda: asyncio.gather(*(self.store.posts.find_one(
            {"_id": p}, {"sender": 1, "ts": 1, "due": 1, **({"frames": 1} if p in frames else {})}) for p in wanted)))
        for post, doc in zip(wanted, docs):
            if doc is None:
                log.warning("webhook facts about a post MongoDB does not have; skipped", extra={"id": post})
                continue
            facts = PostFacts(doc["sender"], doc["ts"], tuple(doc.get("due") or ()), tuple(doc.get("frames") or ()))
            found[post] = facts
            self._cache[post] = PostFacts(facts.sender, facts.accepted_at, facts.due)
            while len(self._cache) > CACHED_POSTS:
                self._cache.popitem(last=False)
        return found


def read_entries(reply: Any) -> list[tuple[str, list[Fact]]]:
    """The entries of an XREADGROUP reply on one stream, with their facts; one deleted meanwhile has none."""
    return [(i, decode_facts(fields[b"f"]) if fields else []) for i, fields in entries_of(reply, deleted=True)]


class Fanout:
    def __init__(self, redis: Redis, store: MessageStore, registry: Registry, queues: WebhookQueues,
                 config: WebhooksConfig) -> None:
        self.redis = redis
        self.registry = registry
        self.queues = queues
        self.config = config
        self.posts = Posts(store)

    def window(self) -> OrderWindow:
        return OrderWindow(self.config.order_window, int(self.config.offline_grace * 1000))

    async def run(self) -> None:
        backoff, window, cursor = Backoff(), self.window(), "0"
        while True:
            try:
                await ensure_group(self.redis, EVENTS_KEY, GROUP)
                cursor = await self.read(window, cursor)
                while True:
                    released, acks = window.release(self.config.batch)
                    if not released and not acks:
                        break
                    await self.fan_out(released, acks)
                backoff.succeeded()
            except Exception as exc:  # never die silently: the entries stay pending and are read again, from the start
                window, cursor = self.window(), "0"
                await backoff.failed(log, "webhook fan-out", exc)

    async def read(self, window: OrderWindow, cursor: str) -> str:
        """Read a page of entries into ``window`` and return the next cursor: first this consumer's pending entries past
        ``cursor`` (those a killed process, or this loop before an error, left unacknowledged), then (``>``) new ones,
        waiting for them until the first held fact is due at most."""
        started = now_ms()
        due_in = window.due_in(started)
        block = None if cursor != ">" or due_in == 0 else IDLE_MS if due_in is None else min(IDLE_MS, due_in)
        entries = read_entries(await self.redis.xreadgroup(GROUP, CONSUMER, {EVENTS_KEY: cursor}, count=ENTRIES_PER_READ,
                                                           block=block))
        for entry_id, facts in entries:
            window.add(entry_id, facts)
        if entries:
            window.advance(entry_ms(entries[-1][0]))
        if cursor != ">":
            return entries[-1][0] if entries else ">"
        if len(entries) < ENTRIES_PER_READ:
            window.advance(started)  # all there was: every entry appended before this read has been read
        return ">"

    async def fan_out(self, facts: list[tuple[str, Fact]], acks: list[str]) -> None:
        """Queue the events of ``facts`` (``(member, fact)``, in the order they happened) and acknowledge ``acks``."""
        await self.registry.refresh()
        endpoints = [e for e in self.registry.endpoints.values() if not e.disabled]
        # only the posts of events some endpoint wants: a delivery recorded just for a later expiry's last state
        # (every delivery, whenever message.expired is wanted) reads no post
        wanted = {t for e in endpoints for t in e.events}
        about = [f for _, f in facts if f.message_id and f.type in wanted]
        payload_senders = {e.sender for e in endpoints if e.include_payload}
        posts = await self.posts.read({post_of(f.message_id) for f in about}, set()) if about else {}
        if payload_senders:
            with_frames = {p for p, facts_ in posts.items() if facts_.sender in payload_senders}
            posts |= await self.posts.read(with_frames, with_frames) if with_frames else {}
        delivered = await self.delivered_before([f for _, f in facts if f.stage == "expired"])
        delivered |= {(f.message_id, f.user_id) for _, f in facts if f.stage == "delivered"}
        events: list[tuple[str, str, list[tuple[str, bytes]]]] = []
        counted: list[str] = []
        for key, fact in facts:
            post = posts.get(post_of(fact.message_id)) if fact.message_id else None
            if fact.message_id and post is None:
                events.append((fact.event_id, key, []))  # nobody to tell (no endpoint wants it, or the post is gone)
                continue
            targets = [e for e in endpoints if e.wants(fact.type, post.sender if post else None)]
            scheduled = post is not None and post.scheduled(index_of(fact.message_id))
            data = event_data(fact, post, last_state(scheduled, (fact.message_id, fact.user_id) in delivered))
            order = fact.user_id or fact.message_id
            bodies = {e.id: Queued.stored(fact.event_id, order, event_body(fact, self.with_payload(data, post, fact, e.include_payload)))
                      for e in targets}
            events.append((fact.event_id, key, list(bodies.items())))
            counted += [fact.type] if targets else []
        fresh, dropped = await self.queues.fan_out(GROUP, acks, events, now_ms(), self.config.queue_limit)
        for event_type in counted:
            metrics.EVENTS.labels(event_type).inc()
        for endpoint_id, n in dropped.items():
            metrics.DROPPED.labels(endpoint_id).inc(n)
            log.warning("webhook queue full; oldest events moved to the failure list", extra={"endpoint": endpoint_id, "count": n})
        self.registry.poke({ep for _, _, targets in events for ep, _ in targets})
        log.debug("webhook facts fanned out", extra={"count": len(facts), "fresh": fresh})

    @staticmethod
    def with_payload(data: dict[str, Any], post: PostFacts | None, fact: Fact, include: bool) -> dict[str, Any]:
        if not include or post is None or not post.frames:
            return data
        return {**data, "payload": post.payload(index_of(fact.message_id))}

    async def delivered_before(self, expired: list[Fact]) -> set[tuple[str, str]]:
        """Those of the ``expired`` deliveries whose ``delivered`` event was fanned out before (one pipeline)."""
        if not expired:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for f in expired:
                pipe.exists(seen_key(Fact("delivered", f.message_id, f.user_id, 0).event_id))
            found = await pipe.execute()
        return {(f.message_id, f.user_id) for f, seen in zip(expired, found) if seen}
