"""What a webhook tells a business system: the event types, the facts services record, and each event's body. No I/O.

A *fact* is what a service saw, as it recorded it: a delivery's stage (``delivered`` by a push node,
``acked``, ``expired`` by dispatch's reconciler), a message ``cancelled`` by collect, or a user going
``online`` / ``offline`` (the webhooks service's presence watcher). Facts travel in batches on a Redis
stream (``shared.delivery.webhook_feed``); the webhooks service turns each into an *event*, the body of
one POST: ``{"type", "timestamp", "data"}`` (Standard Webhooks). An event's id is derived from what it
is about, so the same fact recorded twice (a message replayed to a second socket, two sockets acking)
is one event, sent under one ``webhook-id``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

MESSAGE_EVENTS = ("message.delivered", "message.acked", "message.expired", "message.cancelled")
PRESENCE_EVENTS = ("user.online", "user.offline")
EVENT_TYPES = MESSAGE_EVENTS + PRESENCE_EVENTS
STAGE_EVENTS = {"delivered": "message.delivered", "acked": "message.acked", "expired": "message.expired",
                "cancelled": "message.cancelled", "online": "user.online", "offline": "user.offline"}


@dataclass(frozen=True, slots=True)
class Fact:
    """One thing a service saw: ``stage`` (a key of ``STAGE_EVENTS``) of ``message_id`` for ``user_id`` at ``at`` (ms);
    ``node`` for a delivery, "" otherwise; ``message_id`` "" for presence, ``user_id`` "" for a cancel."""

    stage: str
    message_id: str
    user_id: str
    at: int
    node: str = ""

    @property
    def type(self) -> str:
        return STAGE_EVENTS[self.stage]

    @property
    def event_id(self) -> str:
        """Stable for what the event is about: the same delivery's stage, or a user's change at one moment."""
        about = f"{self.type}|{self.message_id}|{self.user_id}|{self.at if not self.message_id else ''}"
        return "msg_" + hashlib.sha256(about.encode()).hexdigest()[:32]

    def encode(self) -> list[Any]:
        return [self.stage, self.message_id, self.user_id, self.at, self.node]

    @classmethod
    def decode(cls, row: list[Any]) -> Fact:
        return cls(*row)


def encode_facts(facts: list[Fact]) -> bytes:
    return orjson.dumps([f.encode() for f in facts])


def decode_facts(data: bytes | str) -> list[Fact]:
    return [Fact.decode(row) for row in orjson.loads(data)]


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PostFacts:
    """What the webhooks service reads of a post for its messages' events: who sent it, when it was accepted, each
    message's due time (0: at once) and, when an endpoint asks for payloads, each message's frame."""

    sender: str
    accepted_at: int
    due: tuple[int, ...] = ()
    frames: tuple[str | bytes, ...] = ()

    def scheduled(self, index: int) -> bool:
        return index < len(self.due) and self.due[index] > 0

    def payload(self, index: int) -> Any:
        """Message ``index``'s payload, from its frame (``{"type": "message", "id", "payload", "ts"}``)."""
        return orjson.loads(self.frames[index])["payload"]


def event_data(fact: Fact, post: PostFacts | None, last_state: str) -> dict[str, Any]:
    """The ``data`` of the event for ``fact``: ``post`` for a message event, ``last_state`` for an expiry."""
    if fact.stage in ("online", "offline"):
        return {"user_id": fact.user_id, "at": rfc3339(fact.at)}
    if fact.stage == "cancelled":
        return {"message_id": fact.message_id}
    data: dict[str, Any] = {"message_id": fact.message_id, "user_id": fact.user_id}
    if fact.stage == "delivered":
        data |= {"node": fact.node, "delivered_at": rfc3339(fact.at)}
    elif fact.stage == "acked":
        data["acked_at"] = rfc3339(fact.at)
    else:
        assert post is not None
        data |= {"accepted_at": rfc3339(post.accepted_at), "expired_at": rfc3339(fact.at), "last_state": last_state}
    return data


def event_body(fact: Fact, data: dict[str, Any]) -> bytes:
    """The POST body: ``{"type", "timestamp", "data"}``."""
    return orjson.dumps({"type": fact.type, "timestamp": rfc3339(fact.at), "data": data})


def last_state(scheduled: bool, delivered: bool) -> str:
    """The state an expired delivery was in: ``delivered`` once written to a socket, else ``scheduled`` for a scheduled
    message, else ``accepted``."""
    return "delivered" if delivered else "scheduled" if scheduled else "accepted"
