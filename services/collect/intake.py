"""Turning a business system's POST body into messages: validation, limits, ids, frames. Pure logic, no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from shared.delivery.store import MAX_DOCUMENT_BYTES, post_bytes
from shared.model.message import BROADCAST, Message, message_id
from shared.model.priority import TIERS, Priority
from shared.model.topics import valid_topic
from shared.wire.errors import InvalidFields, PayloadTooLarge
from shared.wire.protocol import MessageFrame, new_post_id, valid_user_id

MAX_IDEMPOTENCY_KEY = 200
MAX_TTL_SECONDS = 30 * 24 * 3600  # history is purged 30 days on: nothing may wait longer
MAX_DELAY_SECONDS = 30 * 24 * 3600  # nor be scheduled further out
PAST_TOLERANCE_MS = 60_000  # a deliver_at this far in the past is clock skew (sent at once); further, a mistake
PRIORITIES = [tier.value for tier in TIERS]


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int
    max_batch: int
    max_recipients: int
    default_ttl_seconds: int
    max_deliveries: int = 100_000


def post_ids(count: int, now_ms: int, sender: str, idempotency_key: str | None) -> list[str]:
    """Ids for a post's messages: the post's id and their position, so one user's messages from one post
    sort in posting order. With an Idempotency-Key, the same sender and key always name the same post, so
    a retry stores nothing new; without, the ids also sort by acceptance time."""
    if idempotency_key is None:
        base = new_post_id(now_ms)
    else:
        base = hashlib.sha256(f"{sender}\0{idempotency_key}".encode()).hexdigest()[:18]
    return [message_id(base, i) for i in range(count)]


def parse_body(body: dict[str, Any], limits: Limits, now_ms: int, sender: str = "", idempotency_key: str | None = None) -> list[Message]:
    """Validate a whole post (single, multi-recipient, topic, broadcast or ``{"messages": [...]}`` of any of
    them): all or nothing.

    Each message's frame is encoded here, once, to bytes that travel unchanged to every recipient's socket. Each message
    has a ``priority`` (default normal); a post of mixed priorities travels (and is shed) at its most urgent one.
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidFields(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    if "messages" in body:
        items = body["messages"]
        if not isinstance(items, list) or not items:
            raise InvalidFields("'messages' must be a non-empty list")
        if len(items) > limits.max_batch:
            raise PayloadTooLarge(f"{len(items)} messages in one post; the limit is {limits.max_batch}")
        where = [f"messages[{i}]." for i in range(len(items))]
    else:
        items, where = [body], [""]
    ids = post_ids(len(items), now_ms, sender, idempotency_key)
    messages = [_message(item, limits, now_ms, prefix, mid, sender) for item, prefix, mid in zip(items, where, ids)]
    deliveries = sum(len(m.users) for m in messages)
    if deliveries > limits.max_deliveries:
        raise PayloadTooLarge(f"{deliveries} deliveries (messages x recipients) in one post; the limit is {limits.max_deliveries}")
    stored = post_bytes(messages)
    if stored > MAX_DOCUMENT_BYTES:
        raise PayloadTooLarge(f"the post would be a {stored}-byte document; the store's limit is {MAX_DOCUMENT_BYTES} "
                              "(send its messages in several posts)")
    return messages


def _message(item: Any, limits: Limits, now_ms: int, where: str, mid: str, sender: str) -> Message:
    if not isinstance(item, dict):
        raise InvalidFields(f"{where or 'body'} must be an object")
    if "payload" not in item:
        raise InvalidFields(f"{where}payload is required")
    topic = _topic(item, where)
    if topic is not None:
        users = []
    elif "user_id" in item:
        users = [item["user_id"]]
    elif isinstance(item.get("user_ids"), list) and item["user_ids"]:
        users = item["user_ids"]
    else:
        raise InvalidFields(f"{where}user_id or a non-empty user_ids list is required")
    if len(users) > limits.max_recipients:
        raise PayloadTooLarge(f"{where}user_ids has {len(users)} entries; the limit is {limits.max_recipients}")
    bad = [u for u in users if not valid_user_id(u)]  # checked before set(): a null or object id is no sentinel or key
    if bad or len(set(users)) != len(users):
        got = repr(bad[0]) if bad else "a duplicate"
        raise InvalidFields(f"{where}user ids must be unique, 1-128 characters of letters, digits and _ . @ - (got {got})")
    ttl = item.get("ttl_seconds", limits.default_ttl_seconds)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise InvalidFields(f"{where}ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS} (30 days)")
    expires_ms = now_ms + ttl * 1000
    due_ms = due_time(item, now_ms, expires_ms, where)
    priority = item.get("priority", Priority.NORMAL.value)
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise InvalidFields(f"{where}priority must be one of {', '.join(PRIORITIES)}")
    frame = MessageFrame(mid, item["payload"], now_ms, topic).encode()
    if len(frame) > limits.max_payload_bytes:
        raise PayloadTooLarge(f"{where}payload is {len(frame)} bytes in its frame; the limit is {limits.max_payload_bytes}")
    return Message(mid, tuple(users), frame, now_ms, expires_ms, sender, topic, due_ms=due_ms, priority=Priority(priority))


def due_time(item: dict[str, Any], now_ms: int, expires_ms: int, where: str = "") -> int:
    """When a message may be delivered, from ``deliver_at`` (ms since epoch) or ``delay_seconds``: 0 for at once
    (neither given, a zero delay, or a ``deliver_at`` up to ``PAST_TOLERANCE_MS`` ago)."""
    if "deliver_at" in item and "delay_seconds" in item:
        raise InvalidFields(f"{where}give deliver_at or delay_seconds, not both")
    if "delay_seconds" in item:
        delay = item["delay_seconds"]
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= MAX_DELAY_SECONDS:
            raise InvalidFields(f"{where}delay_seconds must be an integer from 0 to {MAX_DELAY_SECONDS} (30 days)")
        due = now_ms + delay * 1000
    elif "deliver_at" in item:
        due = item["deliver_at"]
        if not isinstance(due, int) or isinstance(due, bool):
            raise InvalidFields(f"{where}deliver_at must be an integer: ms since the epoch")
        if due < now_ms - PAST_TOLERANCE_MS:
            raise InvalidFields(f"{where}deliver_at is in the past (it is ms since the epoch, not seconds)")
        if due > now_ms + MAX_DELAY_SECONDS * 1000:
            raise InvalidFields(f"{where}deliver_at is more than 30 days out")
    else:
        return 0
    if due <= now_ms:
        return 0
    if due >= expires_ms:
        raise InvalidFields(f"{where}the due time is past the message's expiry (ttl_seconds from now)")
    return due


def _topic(item: dict[str, Any], where: str) -> str | None:
    """The topic of a topic or broadcast message (``BROADCAST``), or None for a message to users."""
    if "topic" not in item and "broadcast" not in item:
        return None
    if sum(k in item for k in ("user_id", "user_ids", "topic", "broadcast")) != 1:
        raise InvalidFields(f"{where}a message has exactly one of user_id, user_ids, topic or broadcast")
    if "broadcast" in item:
        if item["broadcast"] is not True:
            raise InvalidFields(f"{where}broadcast must be true")
        return BROADCAST
    if not valid_topic(item["topic"]):
        raise InvalidFields(f"{where}topic must be 1-128 characters of letters, digits and _ . : @ -")
    return str(item["topic"])
