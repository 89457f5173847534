"""Turning a business system's POST body into postings: validation, limits, ids. Pure logic, no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import InvalidFields, PayloadTooLarge
from shared.protocol import Delivery, MessageFrame, new_message_id, valid_user_id
from shared.store import NewDelivery


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int
    max_batch: int
    max_recipients: int
    default_ttl_seconds: int


@dataclass(frozen=True, slots=True)
class Posting:
    """One accepted message: an id, its recipients and the frame every recipient receives."""

    message_id: str
    user_ids: tuple[str, ...]
    payload: Any
    ts: int
    ttl_seconds: int

    @property
    def frame(self) -> str:
        return MessageFrame(self.message_id, self.payload, self.ts).encode()

    def records(self, sender: str) -> list[NewDelivery]:
        expires = dt.datetime.fromtimestamp(self.ts / 1000 + self.ttl_seconds, dt.timezone.utc)
        return [NewDelivery(self.message_id, u, sender, self.payload, self.ts, expires) for u in self.user_ids]

    def deliveries(self) -> list[Delivery]:
        frame = self.frame
        return [Delivery(self.message_id, u, frame, self.ts) for u in self.user_ids]


def parse_body(body: dict[str, Any], limits: Limits, now_ms: int) -> list[Posting]:
    """Validate a whole post (single, multi-recipient or ``{"messages": [...]}``): all or nothing."""
    if "messages" in body:
        items = body["messages"]
        if not isinstance(items, list) or not items:
            raise InvalidFields("'messages' must be a non-empty list")
        if len(items) > limits.max_batch:
            raise PayloadTooLarge(f"{len(items)} messages in one post; the limit is {limits.max_batch}")
        return [_posting(item, limits, now_ms, f"messages[{i}].") for i, item in enumerate(items)]
    return [_posting(body, limits, now_ms, "")]


def _posting(item: Any, limits: Limits, now_ms: int, where: str) -> Posting:
    if not isinstance(item, dict):
        raise InvalidFields(f"{where or 'body'} must be an object")
    if "payload" not in item:
        raise InvalidFields(f"{where}payload is required")
    if "user_id" in item:
        users = [item["user_id"]]
    elif isinstance(item.get("user_ids"), list) and item["user_ids"]:
        users = item["user_ids"]
    else:
        raise InvalidFields(f"{where}user_id or a non-empty user_ids list is required")
    if len(users) > limits.max_recipients:
        raise PayloadTooLarge(f"{where}user_ids has {len(users)} entries; the limit is {limits.max_recipients}")
    bad = next((u for u in users if not valid_user_id(u)), None)
    if bad is not None or len(set(users)) != len(users):
        raise InvalidFields(f"{where}user ids must be unique, 1-128 characters of letters, digits and _ . @ - (got {bad!r})")
    ttl = item.get("ttl_seconds", limits.default_ttl_seconds)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise InvalidFields(f"{where}ttl_seconds must be a positive integer")
    size = len(orjson.dumps(item["payload"]))
    if size > limits.max_payload_bytes:
        raise PayloadTooLarge(f"{where}payload is {size} bytes; the limit is {limits.max_payload_bytes}")
    return Posting(new_message_id(now_ms), tuple(users), item["payload"], now_ms, ttl)
