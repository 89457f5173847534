"""Messages in MongoDB: an ``inbox`` of open deliveries and an append-only ``events`` lifecycle log.

A *delivery* is one message for one recipient, ``_id = "{message_id}:{user_id}"`` (user ids cannot
contain ``:``), so a user can only ever acknowledge deliveries addressed to them.

* ``inbox`` holds what a recipient may still receive: inserted when collect accepts, deleted when
  the client acks or the message expires. The replay on connect and the reconciler read only this,
  so their cost follows what is open, not the whole history.
* ``events`` records each stage once (``_id = "{delivery}/{stage}"``; a repeat is a duplicate key,
  so the first time is kept): accepted -> dispatched -> delivered -> acked, or -> expired. Stage
  writes are inserts, never read-modify-write, and the state is derived when read.

Both suit FerretDB on SQLite, which scans a collection for every query (its indexes serve
MongoDB here, and matter on the real server in docker-compose): nothing hot ever updates the large
history. FerretDB has no TTL indexes, so expiry is enforced by code; where the server has them, a
TTL index on ``events.purge_at`` drops history 30 days after a message's expiry.

Any driver failure becomes ``Unavailable`` (503 / retry) through one circuit breaker: nobody is
told a message is stored when the write was not acknowledged.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from shared.breaker import CircuitBreaker
from shared.errors import Unavailable

log = logging.getLogger(__name__)

STAGES = ("accepted", "dispatched", "delivered", "acked", "expired")
# Which stage names the state when several are recorded: an ack beats a late expiry.
PRECEDENCE = {"accepted": 0, "dispatched": 1, "delivered": 2, "expired": 3, "acked": 4}
PURGE_AFTER = dt.timedelta(days=30)
DUPLICATE_KEY = 11000

Mark = tuple[str, dt.datetime, list[str]]


def delivery_id(message_id: str, user_id: str) -> str:
    return f"{message_id}:{user_id}"


def to_ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    message_id: str
    user_id: str
    sender: str
    payload: Any
    ts: int
    expires_ms: int

    @property
    def id(self) -> str:
        return delivery_id(self.message_id, self.user_id)

    @classmethod
    def from_inbox(cls, doc: dict[str, Any]) -> NewDelivery:
        return cls(doc["message_id"], doc["user_id"], doc["sender"], doc["payload"], doc["ts"], to_ms(doc["expires_at"]))

    def inbox_document(self) -> dict[str, Any]:
        return {"_id": self.id, "message_id": self.message_id, "user_id": self.user_id, "sender": self.sender,
                "payload": self.payload, "ts": self.ts, "queued_at": utc(self.ts), "expires_at": utc(self.expires_ms)}


def event(delivery: str, stage: str, at: dt.datetime, **extra: Any) -> dict[str, Any]:
    message_id, _, user_id = delivery.partition(":")
    return {"_id": f"{delivery}/{stage}", "message_id": message_id, "user_id": user_id, "stage": stage, "at": at, **extra}


def derive(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipient: the state (by precedence) and each stage's time in ms, from raw events."""
    by_user: dict[str, dict[str, Any]] = {}
    for e in events:
        entry = by_user.setdefault(e["user_id"], {"user_id": e["user_id"], "state": "accepted"})
        entry[f"{e['stage']}_at"] = to_ms(e["at"])
        if PRECEDENCE[e["stage"]] > PRECEDENCE[entry["state"]]:
            entry["state"] = e["stage"]
    return [by_user[u] for u in sorted(by_user)]


async def insert_new(collection: AsyncCollection, docs: list[dict[str, Any]]) -> set[int]:
    """Insert, ignoring documents already there; return the indexes that were duplicates."""
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
        return set()
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {e["index"] for e in errors}


class MessageStore:
    def __init__(self, url: str, database: str = "push", timeout_ms: int = 3000) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 2,
            tz_aware=True,
        )
        self.inbox = self.client[database]["inbox"]
        self.events = self.client[database]["events"]
        self.breaker = CircuitBreaker("mongodb", failures=(PyMongoError,))

    async def prepare(self) -> None:
        """Create the indexes the queries need (idempotent), and a TTL index where supported."""

        async def create() -> None:
            await self.inbox.create_index([("user_id", 1), ("ts", 1)])
            await self.inbox.create_index([("queued_at", 1)])
            await self.inbox.create_index([("expires_at", 1)])
            await self.events.create_index([("message_id", 1)])
            try:
                await self.events.create_index([("purge_at", 1)], expireAfterSeconds=0)
            except OperationFailure as exc:
                log.info("no TTL index on this server; expiry is enforced by code", extra={"error": exc.code})

        await self.breaker.call(create)

    async def accept(self, deliveries: list[NewDelivery], retry: bool = False) -> list[NewDelivery]:
        """Store deliveries once MongoDB acknowledges; return those not stored before.

        ``retry`` (an Idempotency-Key was given): first drop deliveries already accepted, even ones
        since acked and gone from the inbox, so a retry never delivers twice.
        """

        async def accept() -> list[NewDelivery]:
            todo = deliveries
            if retry:
                seen = {e["_id"] async for e in self.events.find({"_id": {"$in": [f"{d.id}/accepted" for d in todo]}}, {"_id": 1})}
                todo = [d for d in todo if f"{d.id}/accepted" not in seen]
            open_already = await insert_new(self.inbox, [d.inbox_document() for d in todo])
            await insert_new(self.events, [event(d.id, "accepted", utc(d.ts), sender=d.sender,
                                                 purge_at=utc(d.expires_ms) + PURGE_AFTER) for d in todo])
            return [d for i, d in enumerate(todo) if i not in open_already]

        return await self.breaker.call(accept)

    async def record(self, marks: list[Mark]) -> None:
        """Write lifecycle marks: one insert of events, then one delete of acked and expired inbox entries."""

        async def record() -> None:
            await insert_new(self.events, [event(d, stage, at) for stage, at, ids in marks for d in ids])
            closed = [d for stage, _, ids in marks if stage in ("acked", "expired") for d in ids]
            if closed:
                await self.inbox.delete_many({"_id": {"$in": closed}})

        await self.breaker.call(record)

    async def pending_for(self, user_id: str, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """What the user has not acknowledged and may still receive, oldest first."""
        query = {"user_id": user_id, "expires_at": {"$gt": now}}
        cursor = self.inbox.find(query, {"message_id": 1, "payload": 1, "ts": 1}).sort([("ts", 1), ("_id", 1)])
        return await self.breaker.call(lambda: cursor.to_list(limit))

    async def stale_undispatched(self, before: dt.datetime, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """Open deliveries queued before ``before`` that dispatch never took: lost hand-overs to re-queue.

        Two reads (open deliveries, then their dispatched events) rather than a flag updated in
        place: FerretDB rewrites each updated document with a scan of its own.
        """

        async def stale() -> list[dict[str, Any]]:
            query = {"queued_at": {"$lt": before}, "expires_at": {"$gt": now}}
            docs = await self.inbox.find(query).sort("queued_at", 1).to_list(None)
            if not docs:
                return []
            marks = [f"{d['_id']}/dispatched" for d in docs]
            seen = {e["_id"] async for e in self.events.find({"_id": {"$in": marks}}, {"_id": 1})}
            return [d for d, mark in zip(docs, marks) if mark not in seen][:limit]

        return await self.breaker.call(stale)

    async def requeued(self, ids: list[str], at: dt.datetime) -> None:
        await self.breaker.call(lambda: self.inbox.update_many({"_id": {"$in": ids}}, {"$set": {"queued_at": at}}))

    async def due_to_expire(self, now: dt.datetime, limit: int) -> list[str]:
        docs = await self.breaker.call(lambda: self.inbox.find({"expires_at": {"$lte": now}}, {"_id": 1}).to_list(limit))
        return [d["_id"] for d in docs]

    async def lifecycle(self, message_id: str, sender: str) -> list[dict[str, Any]]:
        """Per recipient state and stage times, or [] unless ``sender`` posted the message."""
        events = await self.breaker.call(lambda: self.events.find({"message_id": message_id}).to_list(None))
        if not any(e["stage"] == "accepted" and e.get("sender") == sender for e in events):
            return []
        return derive(events)

    async def count_open(self, now: dt.datetime) -> int:
        """Deliveries not yet acknowledged and not expired (the offline inbox and in-flight)."""
        return await self.breaker.call(lambda: self.inbox.count_documents({"expires_at": {"$gt": now}}))

    async def ping(self) -> bool:
        try:
            await self.breaker.call(lambda: self.client.admin.command("ping"))
            return True
        except Unavailable:
            return False

    async def close(self) -> None:
        await self.client.close()
