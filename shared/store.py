"""The durable record in MongoDB: ``messages`` (one document per message) and ``events`` (lifecycle).

MongoDB is written, never queried, on the hot path: the hot delivery state lives in Redis
(``shared.inbox``). Every write is an insert, so the store suits FerretDB 1.24, which answers most
queries with a scan and updates slowly (see the README); the queries below run off the hot path:
the status view, the rebuild after Redis lost its data, and the purge of old history.

* ``messages``: ``_id`` = message id; ``frame`` (the payload, encoded once, as its recipients
  receive it: stored once however many recipients), ``users``, ``sender``, ``ts`` and
  ``expires_at``. A duplicate ``_id`` means the post was already accepted (an Idempotency-Key retry).
* ``events``: per delivery and flush window one document ``{m, u, s: {stage: ms}, closed, at}`` holding
  every stage the delivery reached in that window (dispatched, delivered, acked, expired), so the
  usual path costs one insert, not one per stage. ``closed`` marks acked or expired deliveries.

Both carry ``purge_at``; a TTL index drops them where the server has TTL indexes, and dispatch
deletes them otherwise. Any driver failure becomes ``Unavailable`` (503 / retry) through one circuit
breaker: nobody is told a message is stored when the write was not acknowledged.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, AsyncIterator

from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from shared.breaker import CircuitBreaker
from shared.errors import Unavailable
from shared.message import Message, Pair

log = logging.getLogger(__name__)

# Which stage names the state when several are recorded: an ack beats a late expiry.
PRECEDENCE = {"accepted": 0, "dispatched": 1, "delivered": 2, "expired": 3, "acked": 4}
STAGES = tuple(s for s in PRECEDENCE if s != "accepted")  # accepted is the message document itself
CLOSING = ("acked", "expired")
PURGE_AFTER = dt.timedelta(days=30)
DUPLICATE_KEY = 11000


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def message_document(m: Message) -> dict[str, Any]:
    return {"_id": m.id, "sender": m.sender, "users": list(m.users), "frame": m.frame, "ts": m.ts,
            "expires_at": utc(m.expires_ms), "purge_at": utc(m.expires_ms) + PURGE_AFTER}


def message_of(doc: dict[str, Any]) -> Message:
    return Message(doc["_id"], tuple(doc["users"]), doc["frame"], doc["ts"], int(doc["expires_at"].timestamp() * 1000),
                   doc["sender"])


def event_document(pair: Pair, stages: dict[str, int], now: dt.datetime) -> dict[str, Any]:
    return {"m": pair[0], "u": pair[1], "s": stages, "closed": any(s in stages for s in CLOSING), "at": now,
            "purge_at": now + PURGE_AFTER}


def derive(message: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipient of ``message``: the state (by precedence) and each stage's first time in ms."""
    rows = {u: {"user_id": u, "state": "accepted", "accepted_at": message["ts"]} for u in message["users"]}
    for e in events:
        row = rows.get(e["u"])
        if row is None:
            continue
        for stage, at in e["s"].items():
            row[f"{stage}_at"] = min(at, row.get(f"{stage}_at", at))
            if PRECEDENCE[stage] > PRECEDENCE[row["state"]]:
                row["state"] = stage
    return [rows[u] for u in sorted(rows)]


class MessageStore:
    def __init__(self, url: str, database: str = "push", timeout_ms: int = 3000, **client_options: Any) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 2,
            tz_aware=True, **client_options,
        )
        self.messages = self.client[database]["messages"]
        self.events = self.client[database]["events"]
        self.breaker = CircuitBreaker("mongodb", failures=(PyMongoError,))

    async def prepare(self) -> None:
        """Create the indexes the off-path queries use on a real MongoDB (idempotent), TTL where supported."""

        async def create() -> None:
            await self.events.create_index([("m", 1)])
            await self.events.create_index([("closed", 1)])
            await self.messages.create_index([("expires_at", 1)])
            for collection in (self.messages, self.events):
                try:
                    await collection.create_index([("purge_at", 1)], expireAfterSeconds=0)
                except OperationFailure as exc:
                    log.info("no TTL index on this server; dispatch purges old history", extra={"error": exc.code})

        await self.breaker.call(create)

    async def accept(self, messages: list[Message]) -> list[Message]:
        """Insert once MongoDB acknowledges; return the messages not stored before (a retry's are)."""
        if not messages:
            return []

        async def insert() -> set[int]:
            try:
                await self.messages.insert_many([message_document(m) for m in messages], ordered=False)
                return set()
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                return {e["index"] for e in errors}

        seen = await self.breaker.call(insert)
        return [m for i, m in enumerate(messages) if i not in seen]

    async def record(self, stages: dict[Pair, dict[str, int]]) -> None:
        """One insert of one event document per delivery."""
        if stages:
            now = dt.datetime.now(dt.timezone.utc)
            docs = [event_document(pair, s, now) for pair, s in stages.items()]
            await self.breaker.call(lambda: self.events.insert_many(docs, ordered=False))

    async def lifecycle(self, message_id: str, sender: str) -> list[dict[str, Any]]:
        """Per recipient state and stage times, or [] unless ``sender`` posted the message."""

        async def read() -> list[dict[str, Any]]:
            message = await self.messages.find_one({"_id": message_id}, {"users": 1, "ts": 1, "sender": 1})
            if message is None or message["sender"] != sender:
                return []
            return derive(message, await self.events.find({"m": message_id}, {"u": 1, "s": 1}).to_list(None))

        return await self.breaker.call(read)

    async def open_messages(self, now: dt.datetime, page: int) -> AsyncIterator[list[Message]]:
        """Unexpired messages, oldest first, ``page`` at a time (one query, read in batches)."""
        cursor = self.messages.find({"expires_at": {"$gt": now}}, {"purge_at": 0}, batch_size=page).sort("ts", 1)
        while batch := await self.breaker.call(lambda: cursor.to_list(page)):
            yield [message_of(d) for d in batch]

    async def closed_deliveries(self, since: dt.datetime, page: int) -> AsyncIterator[list[Pair]]:
        """Deliveries recorded as acknowledged or expired since ``since`` (no earlier record can close a
        message accepted after it), ``page`` at a time."""
        cursor = self.events.find({"closed": True, "at": {"$gte": since}}, {"m": 1, "u": 1, "_id": 0}, batch_size=page)
        while batch := await self.breaker.call(lambda: cursor.to_list(page)):
            yield [(d["m"], d["u"]) for d in batch]

    async def purge(self, now: dt.datetime) -> int:
        """Delete history past its ``purge_at`` (where no TTL index does it); return how many documents."""

        async def purge() -> int:
            deleted = 0
            for collection in (self.events, self.messages):
                deleted += (await collection.delete_many({"purge_at": {"$lt": now}})).deleted_count
            return deleted

        return await self.breaker.call(purge)

    async def ping(self) -> bool:
        try:
            await self.breaker.call(lambda: self.client.admin.command("ping"))
            return True
        except Unavailable:
            return False

    async def close(self) -> None:
        await self.client.close()
