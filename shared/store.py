"""Messages in MongoDB: one document per message per recipient (a "delivery").

``_id`` is ``"{message_id}:{user_id}"``, so a retried insert cannot store a delivery twice.
Any driver failure becomes ``Unavailable``: callers answer 503 and never claim a message is stored
when the write was not acknowledged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared.errors import Unavailable

ACCEPTED = "accepted"


def delivery_id(message_id: str, user_id: str) -> str:
    return f"{message_id}:{user_id}"


@dataclass(frozen=True, slots=True)
class NewDelivery:
    message_id: str
    user_id: str
    sender: str
    payload: Any
    ts: int
    expires_at: dt.datetime

    def document(self) -> dict[str, Any]:
        return {
            "_id": delivery_id(self.message_id, self.user_id),
            "message_id": self.message_id,
            "user_id": self.user_id,
            "sender": self.sender,
            "payload": self.payload,
            "ts": self.ts,
            "state": ACCEPTED,
            "accepted_at": dt.datetime.fromtimestamp(self.ts / 1000, dt.timezone.utc),
            "expires_at": self.expires_at,
        }


class MessageStore:
    def __init__(self, url: str, database: str = "push", timeout_ms: int = 3000) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 2,
            tz_aware=True,
        )
        self.deliveries = self.client[database]["deliveries"]

    async def prepare(self) -> None:
        """Create the indexes the queries need (idempotent)."""
        try:
            await self.deliveries.create_index([("message_id", 1)])
            await self.deliveries.create_index([("user_id", 1), ("state", 1), ("ts", 1)])
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB: {exc}") from None

    async def insert(self, deliveries: Iterable[NewDelivery]) -> None:
        """Store the deliveries; returns only once MongoDB acknowledged every write."""
        try:
            await self.deliveries.insert_many([d.document() for d in deliveries], ordered=False)
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB: {exc}") from None

    async def find_message(self, message_id: str) -> list[dict[str, Any]]:
        try:
            return [d async for d in self.deliveries.find({"message_id": message_id}).sort("user_id", 1)]
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB: {exc}") from None

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    async def close(self) -> None:
        await self.client.close()
