"""Webhook endpoints: stored in MongoDB (collection ``webhooks``), one document each, owned by the API key that made it.

A document: ``_id`` (``ep_`` and 24 hex digits), ``sender`` (the API key's name), ``url``,
``events`` (the types it wants), ``include_payload``, ``secrets`` (``[{"secret": "whsec_...", "until":
ms}]``, newest first; ``until`` 0 for the current one, and a rotated-out one's end of life, 24 h
after the rotation), ``disabled`` (the reason, once an attempt was answered 410) and ``created``.

The collection is small (a few endpoints per business system) and read whole only when an endpoint
changes: every change here recomputes ``{webhooks}:types`` and bumps ``{webhooks}:version``
(``shared.delivery.webhook_feed``), which the webhooks service watches instead of polling MongoDB.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from pushcluster.webhooks import new_secret
from shared.delivery.webhook_feed import TYPES_KEY, VERSION_KEY
from shared.infra.breaker import CircuitBreaker
from shared.infra.clients import REDIS_FAILURES
from shared.wire.errors import Unavailable

ROTATION_OVERLAP_MS = 24 * 3600 * 1000  # a rotated-out secret keeps signing this long, beside the new one


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    sender: str
    url: str
    events: tuple[str, ...]
    include_payload: bool
    secrets: tuple[tuple[str, int], ...]  # (secret, until ms; 0: current), newest first
    disabled: str = ""
    created: int = 0

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Endpoint:
        return cls(doc["_id"], doc["sender"], doc["url"], tuple(doc["events"]), bool(doc.get("include_payload")),
                   tuple((s["secret"], s["until"]) for s in doc["secrets"]), doc.get("disabled") or "", doc.get("created", 0))

    def signing_secrets(self, now: int) -> list[str]:
        """The secrets that sign an attempt at ``now``: the current one and those rotated out less than 24 h ago."""
        return [secret for secret, until in self.secrets if not until or until > now]

    def wants(self, event_type: str, sender: str | None) -> bool:
        """Whether this endpoint gets an event of ``event_type`` about a message ``sender`` posted (None: presence)."""
        return not self.disabled and event_type in self.events and (sender is None or sender == self.sender)

    def public(self) -> dict[str, Any]:
        """What the API shows of it (never a secret but at creation and rotation)."""
        return {"id": self.id, "url": self.url, "events": list(self.events), "include_payload": self.include_payload,
                "disabled": self.disabled or None, "created": self.created}


class EndpointStore:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str, redis: Redis, breaker: CircuitBreaker) -> None:
        self.collection = client[database]["webhooks"]
        self.redis = redis
        self.breaker = breaker

    async def create(self, sender: str, url: str, events: list[str], include_payload: bool, now: int) -> tuple[Endpoint, str]:
        secret = new_secret()
        doc = {"_id": f"ep_{secrets.token_hex(12)}", "sender": sender, "url": url, "events": events,
               "include_payload": include_payload, "secrets": [{"secret": secret, "until": 0}], "disabled": "", "created": now}
        await self.breaker.call(lambda: self.collection.insert_one(doc))
        await self.announce()
        return Endpoint.of(doc), secret

    async def owned(self, sender: str) -> list[Endpoint]:
        docs = await self.breaker.call(lambda: self.collection.find({"sender": sender}).to_list(None))
        return sorted((Endpoint.of(d) for d in docs), key=lambda e: (e.created, e.id))

    async def get(self, endpoint_id: str, sender: str) -> Endpoint | None:
        doc = await self.breaker.call(lambda: self.collection.find_one({"_id": endpoint_id}))
        return Endpoint.of(doc) if doc is not None and doc["sender"] == sender else None

    async def everything(self) -> list[Endpoint]:
        docs = await self.breaker.call(lambda: self.collection.find({}).to_list(None))
        return [Endpoint.of(d) for d in docs]

    async def delete(self, endpoint: Endpoint) -> None:
        await self.breaker.call(lambda: self.collection.delete_one({"_id": endpoint.id}))
        await self.announce()

    async def rotate(self, endpoint: Endpoint, now: int) -> str:
        """A new current secret; the others sign on until 24 h from now (or their own earlier end)."""
        secret = new_secret()
        end = now + ROTATION_OVERLAP_MS
        kept = [{"secret": s, "until": min(until, end) if until else end} for s, until in endpoint.secrets
                if not until or until > now]
        update = {"$set": {"secrets": [{"secret": secret, "until": 0}, *kept]}}
        await self.breaker.call(lambda: self.collection.update_one({"_id": endpoint.id}, update))
        await self.announce()
        return secret

    async def disable(self, endpoint_id: str, reason: str) -> None:
        await self.breaker.call(lambda: self.collection.update_one({"_id": endpoint_id}, {"$set": {"disabled": reason}}))
        await self.announce()

    async def announce(self) -> None:
        """Tell producers which types are wanted and the webhooks service that an endpoint changed."""
        wanted = sorted({t for e in await self.everything() if not e.disabled for t in e.events})
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(TYPES_KEY)
                if wanted:
                    pipe.sadd(TYPES_KEY, *wanted)
                pipe.incr(VERSION_KEY)
                await pipe.execute()
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc, "the endpoint is stored, its change not yet announced") from exc
