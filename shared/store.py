"""Messages in MongoDB: one document per message per recipient (a "delivery"), with its lifecycle.

``_id`` is ``"{message_id}:{user_id}"``, so a retried insert cannot store a delivery twice, and a
user can only ever acknowledge deliveries addressed to them.

Lifecycle: accepted -> dispatched -> delivered -> acked, or -> expired. Each stage keeps its own
time (``<stage>_at``, first time only); ``state`` follows ``rank`` upward only, so stage updates
that arrive out of order (a node's "delivered" before dispatch's "dispatched") cannot move a
delivery backwards. FerretDB has no TTL indexes, so expiry is enforced by queries; where the server
has them, a TTL index on ``purge_at`` removes documents long after they stopped mattering.

Any driver failure becomes ``Unavailable`` (503 / retry): nobody is told a message is stored when
the write was not acknowledged. One circuit breaker guards every call.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, UpdateMany
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from shared.breaker import CircuitBreaker
from shared.errors import Unavailable

log = logging.getLogger(__name__)

STAGES = ("accepted", "dispatched", "delivered", "acked", "expired")
RANK = {stage: rank for rank, stage in enumerate(STAGES)}
OPEN_STATES = ["accepted", "dispatched", "delivered"]
PURGE_AFTER = dt.timedelta(days=30)
DUPLICATE_KEY = 11000


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
    def from_document(cls, doc: dict[str, Any]) -> NewDelivery:
        return cls(doc["message_id"], doc["user_id"], doc["sender"], doc["payload"], doc["ts"], to_ms(doc["expires_at"]))

    def document(self) -> dict[str, Any]:
        accepted, expires = utc(self.ts), utc(self.expires_ms)
        return {
            "_id": self.id, "message_id": self.message_id, "user_id": self.user_id, "sender": self.sender,
            "payload": self.payload, "ts": self.ts, "state": "accepted", "rank": 0, "accepted_at": accepted,
            "queued_at": accepted, "expires_at": expires, "purge_at": expires + PURGE_AFTER,
        }


class MessageStore:
    def __init__(self, url: str, database: str = "push", timeout_ms: int = 3000) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 2,
            tz_aware=True,
        )
        self.deliveries = self.client[database]["deliveries"]
        self.breaker = CircuitBreaker("mongodb", failures=(PyMongoError,))

    async def prepare(self) -> None:
        """Create the indexes the queries need (idempotent), and a TTL index where supported."""

        async def create() -> None:
            await self.deliveries.create_index([("message_id", 1)])
            await self.deliveries.create_index([("user_id", 1), ("ts", 1)])
            await self.deliveries.create_index([("rank", 1), ("queued_at", 1)])
            await self.deliveries.create_index([("expires_at", 1)])
            try:
                await self.deliveries.create_index([("purge_at", 1)], expireAfterSeconds=0)
            except OperationFailure as exc:
                log.info("no TTL index on this server; expiry is enforced by queries", extra={"error": exc.code})

        await self.breaker.call(create)

    async def insert(self, deliveries: list[NewDelivery]) -> list[NewDelivery]:
        """Store the deliveries once MongoDB acknowledges; return those not stored before (retries)."""

        async def insert() -> list[NewDelivery]:
            try:
                await self.deliveries.insert_many([d.document() for d in deliveries], ordered=False)
                return deliveries
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                duplicates = {e["index"] for e in errors}
                return [d for i, d in enumerate(deliveries) if i not in duplicates]

        return await self.breaker.call(insert)

    async def advance(self, marks: list[tuple[str, dt.datetime, list[str]]]) -> None:
        """Apply (stage, time, ids) marks in one bulk write: record first stage times, raise state by rank."""
        ops = []
        for stage, at, ids in marks:
            if ids:
                ops.append(UpdateMany({"_id": {"$in": ids}, f"{stage}_at": {"$exists": False}}, {"$set": {f"{stage}_at": at}}))
                ceiling = RANK["acked"] if stage == "expired" else RANK[stage]  # acked never expires
                ops.append(UpdateMany({"_id": {"$in": ids}, "rank": {"$lt": ceiling}},
                                      {"$set": {"state": stage, "rank": RANK[stage]}}))
        if ops:
            await self.breaker.call(lambda: self.deliveries.bulk_write(ops, ordered=False))

    async def pending_for(self, user_id: str, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """What the user has not acknowledged and may still receive, oldest first."""
        query = {"user_id": user_id, "state": {"$in": OPEN_STATES}, "expires_at": {"$gt": now}}
        projection = {"message_id": 1, "payload": 1, "ts": 1}
        return await self.breaker.call(lambda: self.deliveries.find(query, projection).sort([("ts", 1), ("_id", 1)]).to_list(limit))

    async def stale_accepted(self, before: dt.datetime, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """Deliveries accepted, unexpired, but not taken from the stream since ``before``: lost hand-overs."""
        query = {"rank": 0, "queued_at": {"$lt": before}, "expires_at": {"$gt": now}}
        projection = {"message_id": 1, "user_id": 1, "sender": 1, "payload": 1, "ts": 1, "expires_at": 1}
        return await self.breaker.call(lambda: self.deliveries.find(query, projection).sort("queued_at", 1).to_list(limit))

    async def requeued(self, ids: list[str], at: dt.datetime) -> None:
        await self.breaker.call(lambda: self.deliveries.update_many({"_id": {"$in": ids}}, {"$set": {"queued_at": at}}))

    async def expire_due(self, now: dt.datetime) -> int:
        """Mark every open delivery past its expiry as expired; it is never delivered after this."""
        query = {"state": {"$in": OPEN_STATES}, "expires_at": {"$lte": now}}
        update = {"$set": {"state": "expired", "rank": RANK["expired"], "expired_at": now}}
        result = await self.breaker.call(lambda: self.deliveries.update_many(query, update))
        return result.modified_count

    async def find_message(self, message_id: str, sender: str) -> list[dict[str, Any]]:
        query = {"message_id": message_id, "sender": sender}
        return await self.breaker.call(lambda: self.deliveries.find(query, {"payload": 0}).sort("user_id", 1).to_list(None))

    async def ping(self) -> bool:
        try:
            await self.breaker.call(lambda: self.client.admin.command("ping"))
            return True
        except Unavailable:
            return False

    async def close(self) -> None:
        await self.client.close()
