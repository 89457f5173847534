"""The wire protocol as plain typed data, free of I/O.

Two links carry frames:

* browser <-> push node: JSON text frames (``MessageFrame``, ``WelcomeFrame``, ``PongFrame``,
  ``TopicsFrame``, ``PresenceFrame``, ``ReconnectFrame``, ``RefreshedFrame``, ``ExpiringFrame`` out; ``AckFrame``,
  ``PingFrame``, ``SubscribeFrame``, ``UnsubscribeFrame``, ``RefreshFrame`` in);
* dispatch -> push node (internal websocket): ``DeliverBatch`` out, ``BatchResult`` back.

Every frame is a JSON object whose ``type`` is an ``Op`` (a deliver batch: its head); a connection closes with a
``CloseCode`` (``shared.wire.errors`` maps each named error to its code). Every parser (``parse_client_frame`` and the
link frames' ``decode``) reads JSON through ``load_object`` and raises ``MalformedRequest`` naming what is wrong.

A ``MessageFrame`` is encoded once, when collect accepts the message, to the UTF-8 bytes of the JSON text the
browser receives; those bytes travel as they are (Redis, the link, the node's socket write), never decoded and
re-encoded. So a deliver batch is a binary websocket message that carries them unescaped: a 4-byte big-endian
length (``BATCH_HEAD``), a JSON head of that many bytes, ``{"type": "deliver", "batch", "at", "items": [[id, frame
length, ts, [users](, topic(, priority(, [offset, epoch])))], ...]}``, then the items' frames concatenated in order, which the node
slices out by their lengths. A ``BatchResult`` is a JSON object.
"""

from __future__ import annotations

import re
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from shared.model.message import BROADCAST, Message
from shared.model.priority import Priority
from shared.model.topics import Position, valid_topic
from shared.wire.errors import CloseCode, MalformedRequest

__all__ = ["CloseCode", "Op"]  # and the frames below


class Op(StrEnum):
    """A frame's ``type``."""

    MESSAGE = "message"  # node -> browser
    WELCOME = "welcome"
    PONG = "pong"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    ERROR = "error"
    RECONNECT = "reconnect"
    REFRESHED = "refreshed"
    EXPIRING = "expiring"
    JOIN = "join"
    LEAVE = "leave"
    PING = "ping"  # browser -> node
    ACK = "ack"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    REFRESH = "refresh"
    DELIVER = "deliver"  # dispatch -> node
    RESULT = "result"  # node -> dispatch


def load_object(data: str | bytes | memoryview, what: str = "frame") -> dict[str, Any]:
    """``data`` as a JSON object, or ``MalformedRequest`` saying it is not JSON or not an object."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class MessageFrame:
    """A message as the browser receives it; ``id`` lets clients drop duplicates. A topic message names its
    ``topic``; a broadcast (topic ``BROADCAST``) says ``"broadcast": true``. Once dispatched, a topic message also
    carries its ``position`` in its topic (``with_position``)."""

    id: str
    payload: Any
    ts: int
    topic: str | None = None
    position: Position | None = None

    def encode(self) -> bytes:
        """The frame's JSON text as UTF-8 bytes: what every recipient's socket is sent, as a text frame."""
        head: dict[str, Any] = {"type": Op.MESSAGE, "id": self.id}
        if self.topic == BROADCAST:
            head["broadcast"] = True
        elif self.topic is not None:
            head["topic"] = self.topic
        frame = orjson.dumps({**head, "payload": self.payload, "ts": self.ts})
        return frame if self.position is None else with_position(frame, self.position)


def with_position(frame: bytes, position: Position) -> bytes:
    """A topic message's frame (a JSON object, as collect encoded it) with its ``offset`` and ``epoch`` added last:
    the bytes are extended, never decoded (an epoch is hex, so it needs no escaping)."""
    return b"%s,\"offset\":%d,\"epoch\":\"%s\"}" % (frame[:-1], position.offset, position.epoch.encode())


@dataclass(frozen=True, slots=True)
class WelcomeFrame:
    """Sent once the node has registered the connection's route, so a client knows it is reachable; ``bundle_ms`` when
    the client asked for bundles and gets them: its topic frames may then come several to a websocket frame,
    newline-separated, at most one such frame per ``bundle_ms``."""

    user_id: str
    node: str
    bundle_ms: int = 0

    def encode(self) -> str:
        return orjson.dumps({"type": Op.WELCOME, "user_id": self.user_id, "node": self.node,
                             **({"bundle_ms": self.bundle_ms} if self.bundle_ms else {})}).decode()


@dataclass(frozen=True, slots=True)
class PingFrame:
    """An application-level ping: browsers cannot send websocket pings themselves."""


@dataclass(frozen=True, slots=True)
class PongFrame:
    def encode(self) -> str:
        return '{"type":"pong"}'


@dataclass(frozen=True, slots=True)
class AckFrame:
    """The client confirms it has handled these message ids."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubscribeFrame:
    """The client asks for the messages of these topics (``BROADCAST`` among them: the broadcasts' position), and for
    those in ``recover`` every message after the position it gives."""

    topics: tuple[str, ...]
    recover: dict[str, Position] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnsubscribeFrame:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopicsFrame:
    """The node's answer to a (un)subscribe: ``subscribed`` / ``unsubscribed`` topics, or an ``error`` with its
    ``code`` (``forbidden``: not granted; ``limit``: past the node's topics per connection) naming the topics refused.
    ``subscribed`` gives each topic's current ``positions`` and, for those the client asked to recover, whether every
    message it missed follows (``recovered``)."""

    type: Op  # SUBSCRIBED, UNSUBSCRIBED or ERROR
    topics: tuple[str, ...]
    code: str | None = None
    positions: dict[str, Position] | None = None
    recovered: dict[str, bool] | None = None

    def encode(self) -> str:
        head: dict[str, Any] = {"type": self.type} if self.code is None else {"type": self.type, "code": self.code}
        head["topics"] = list(self.topics)
        if self.positions is not None:
            head["positions"] = {t: p.as_json() for t, p in self.positions.items()}
        if self.recovered:
            head["recovered"] = self.recovered
        return orjson.dumps(head).decode()


@dataclass(frozen=True, slots=True)
class PresenceFrame:
    """A ``join`` (the user's first socket, on any node, subscribed to the topic) or a ``leave`` (their last one left
    it), sent to the topic's subscribers where its namespace has join/leave on."""

    type: Op  # JOIN or LEAVE
    topic: str
    user_id: str

    def encode(self) -> bytes:
        return orjson.dumps({"type": self.type, "topic": self.topic, "user_id": self.user_id})

    @classmethod
    def decode_all(cls, data: bytes) -> list[PresenceFrame]:
        """The frames a node announced together (a JSON array of encoded frames)."""
        return [cls(Op(f["type"]), f["topic"], f["user_id"]) for f in orjson.loads(data)]


@dataclass(frozen=True, slots=True)
class ReconnectFrame:
    """A draining node's advice: close this socket in ``after_ms`` and connect to ``url`` (another live node's
    public URL), or to any node from the directory when there is no ``url``."""

    after_ms: int
    url: str | None = None

    def encode(self) -> str:
        head: dict[str, Any] = {"type": Op.RECONNECT, "after_ms": self.after_ms}
        return orjson.dumps(head if self.url is None else {**head, "url": self.url}).decode()


@dataclass(frozen=True, slots=True)
class RefreshFrame:
    """The client replaces its connection's token (the same user's) without reconnecting."""

    token: str


@dataclass(frozen=True, slots=True)
class RefreshedFrame:
    """The node's answer to a refresh: the new token holds until ``expires_at`` (seconds since epoch)."""

    expires_at: int

    def encode(self) -> str:
        return orjson.dumps({"type": Op.REFRESHED, "expires_at": self.expires_at}).decode()


@dataclass(frozen=True, slots=True)
class ExpiringFrame:
    """Sent once per token, ``EXPIRING_NOTICE_SECONDS`` before it expires, so a client with a way to get a new one
    can refresh before the node closes the socket (4001)."""

    expires_in_ms: int

    def encode(self) -> str:
        return orjson.dumps({"type": Op.EXPIRING, "expires_in_ms": self.expires_in_ms}).decode()


MAX_ACK_IDS = 1000
MAX_FRAME_TOPICS = 100
ClientFrame = AckFrame | PingFrame | SubscribeFrame | UnsubscribeFrame | RefreshFrame


def _topics(obj: dict[str, Any]) -> tuple[str, ...]:
    topics = obj.get("topics")
    if (not isinstance(topics, list) or not 0 < len(topics) <= MAX_FRAME_TOPICS
            or not all(t == BROADCAST or valid_topic(t) for t in topics)):
        raise MalformedRequest(f"{obj['type']} needs 'topics': 1 to {MAX_FRAME_TOPICS} topic names "
                               f"(letters, digits and _ . : @ -, or {BROADCAST} for the broadcasts)")
    return tuple(dict.fromkeys(topics))


def _recover(obj: dict[str, Any], topics: tuple[str, ...]) -> dict[str, Position]:
    """A subscribe's ``recover``: topic -> ``{"offset", "epoch"}``, each topic among those subscribed."""
    recover = obj.get("recover", {})
    if not isinstance(recover, dict):
        raise MalformedRequest("subscribe's 'recover' must be an object of topic -> {\"offset\", \"epoch\"}")
    positions = {}
    for topic, value in recover.items():
        if topic not in topics:
            raise MalformedRequest(f"subscribe recovers {topic[:130]!r}, which is not among its 'topics'")
        position = Position.parse(value)
        if position is None:
            raise MalformedRequest(f"subscribe's 'recover' for {topic!r} needs 'offset' (an integer >= 0) and 'epoch' (a string)")
        positions[topic] = position
    return positions


def parse_client_frame(data: str | bytes) -> ClientFrame:
    """Decode a browser frame (``bytes`` are a binary frame) or raise ``MalformedRequest`` naming what is wrong."""
    if isinstance(data, bytes):
        raise MalformedRequest("binary frames are not accepted")
    return parse_client_text(data)


def parse_client_text(text: str | bytes) -> ClientFrame:
    """Decode a browser's text frame, as text or as its UTF-8 bytes, or raise ``MalformedRequest``."""
    obj = load_object(text)
    kind = obj.get("type")
    if kind == Op.PING:
        return PingFrame()
    if kind == Op.ACK:
        ids = obj.get("ids", [obj["id"]] if "id" in obj else None)
        if not isinstance(ids, list) or not ids or len(ids) > MAX_ACK_IDS:
            raise MalformedRequest(f"ack needs 'id' or 'ids' (1 to {MAX_ACK_IDS} strings)")
        if not all(isinstance(i, str) for i in ids):
            raise MalformedRequest("ack ids must be strings")
        return AckFrame(tuple(ids))
    if kind == Op.SUBSCRIBE:
        topics = _topics(obj)
        return SubscribeFrame(topics, _recover(obj, topics))
    if kind == Op.UNSUBSCRIBE:
        return UnsubscribeFrame(_topics(obj))
    if kind == Op.REFRESH:
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise MalformedRequest("refresh needs 'token': the new token, a non-empty string")
        return RefreshFrame(token)
    raise MalformedRequest(f"unknown frame type {kind!r}")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, until when (seconds since epoch), and the topic patterns it may subscribe to."""

    user_id: str
    expires_at: int
    topics: tuple[str, ...] = ()


BATCH_HEAD = struct.Struct(">I")  # a deliver batch's first bytes: the length of its JSON head
# Per item of a deliver batch's head besides its strings: brackets, commas, the id's quotes, the topic's quotes (or a
# null), a priority, the frame's length and the ts (each up to 20 characters), and a position (an offset up to 20, an
# epoch up to 16, with its brackets and quotes).
ITEM_OVERHEAD = 104
DELIVER_SHAPE = ("a deliver batch's head needs 'type': 'deliver', 'batch', 'at' and 'items' "
                 "[[id, frame length, ts, [users](, topic(, priority(, [offset, epoch])))], ...], and 'tp' if any, a list of traceparents")


def _integer(value: object) -> int:
    """``value`` if it is an integer (not a bool, not a float), else TypeError."""
    if type(value) is not int:
        raise TypeError("not an integer")
    return value


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for the users of one node: the frame their sockets receive (UTF-8 JSON text, as collect encoded it),
    and its acceptance time (ms). A topic message names no users but its ``topic`` (``BROADCAST``: every socket of the
    node) and its ``position`` there (which its frame carries too). ``priority`` orders the frames waiting for a
    backed-up socket."""

    message_id: str
    frame: bytes
    ts: int
    users: tuple[str, ...]
    topic: str | None = None
    priority: Priority = Priority.NORMAL
    position: Position | None = None

    @classmethod
    def of(cls, message: Message, users: Iterable[str] = (), position: Position | None = None) -> Delivery:
        """``message`` for ``users`` of one node (none for a topic message, which has its ``position``)."""
        if position is None:
            return cls(message.id, message.frame, message.ts, tuple(users), message.topic, message.priority)
        return cls(message.id, with_position(message.frame, position), message.ts, (), message.topic, message.priority,
                   position)

    def head(self) -> list[Any]:
        """The item in a deliver batch's head: ``[id, frame length, ts, [users]]``, then the topic (or null) only when
        there is one or a priority other than normal, then that priority, then a topic message's position as
        ``[offset, epoch]``. The frame follows the head."""
        item = [self.message_id, len(self.frame), self.ts, list(self.users)]
        if self.position is not None:
            return [*item, self.topic, self.priority.value, [self.position.offset, self.position.epoch]]
        if self.priority is not Priority.NORMAL:
            return [*item, self.topic, self.priority.value]
        return item if self.topic is None else [*item, self.topic]

    def encoded_size(self) -> int:
        """An upper bound of the bytes this item takes in a deliver batch, without encoding it: its frame's bytes, as
        they are, and its head item, whose id, users and topic are ASCII that JSON does not escape (hex message ids,
        ``valid_user_id``, ``valid_topic``): their lengths, with quotes and a comma per user, and ``ITEM_OVERHEAD``."""
        return len(self.frame) + len(self.message_id) + len(self.topic or "") + sum(len(u) + 3 for u in self.users) + ITEM_OVERHEAD

    @classmethod
    def decode(cls, item: Any, frames: memoryview, offset: int) -> Delivery:
        """The inverse of ``head``, its frame sliced from ``frames`` at ``offset`` (cut short where ``frames`` ends: the
        batch checks that the lengths add up); TypeError or ValueError unless ``item`` is one of its shapes."""
        if type(item) is not list or len(item) not in (4, 5, 6, 7):
            raise TypeError("not a delivery")
        message_id, length, ts, users = item[:4]
        if type(message_id) is not str or type(length) is not int or length < 0 or type(ts) is not int or type(users) is not list:
            raise TypeError("not a delivery")
        for user in users:
            if type(user) is not str:
                raise TypeError("user ids are strings")
        topic = item[4] if len(item) >= 5 else None
        if (topic is not None or len(item) == 5) and type(topic) is not str:
            raise TypeError("a topic is a string")
        position = None
        if len(item) == 7:
            if type(item[6]) is not list or len(item[6]) != 2 or type(item[6][1]) is not str:
                raise TypeError("a position is [offset, epoch]")
            position = Position(_integer(item[6][0]), item[6][1])
        return cls(message_id, bytes(frames[offset:offset + length]), ts, tuple(users), topic,
                   Priority(item[5]) if len(item) >= 6 else Priority.NORMAL, position)


@dataclass(frozen=True, slots=True)
class DeliverBatch:
    """dispatch -> node: write these messages to their users' sockets; ``at`` is when dispatch sent it (ms); ``trace``
    the ``traceparent`` of each traced stream entry the batch carries (``shared.infra.tracing``), usually none."""

    batch: int
    at: int
    items: tuple[Delivery, ...]
    trace: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """A binary message: the head's length (``BATCH_HEAD``), the JSON head, then each item's frame, in order."""
        head = orjson.dumps({"type": Op.DELIVER, "batch": self.batch, "at": self.at, "items": [d.head() for d in self.items],
                             **({"tp": self.trace} if self.trace else {})})
        return b"".join((BATCH_HEAD.pack(len(head)), head, *(d.frame for d in self.items)))

    @classmethod
    def decode(cls, data: str | bytes) -> DeliverBatch:
        """The inverse of ``encode``, strict: ``MalformedRequest`` names what is wrong (text instead of binary, a short
        header, a head that is not one, or frame lengths that do not add up to the bytes after the head)."""
        if not isinstance(data, bytes):
            raise MalformedRequest(f"a deliver batch is a binary message, not {type(data).__name__}")
        view = memoryview(data)
        if len(view) < BATCH_HEAD.size:
            raise MalformedRequest(f"a deliver batch starts with its head's {BATCH_HEAD.size}-byte length; got {len(view)} bytes")
        start = BATCH_HEAD.size + BATCH_HEAD.unpack_from(view)[0]
        if start > len(view):
            raise MalformedRequest(f"a deliver batch's head of {start - BATCH_HEAD.size} bytes runs past its end "
                                   f"({len(view) - BATCH_HEAD.size} bytes follow the length)")
        obj = load_object(view[BATCH_HEAD.size:start], "a deliver batch's head")
        end, items = start, []
        try:
            heads = obj["items"]
            if obj["type"] != Op.DELIVER or type(heads) is not list:
                raise TypeError("not a deliver batch's head")
            batch, at = _integer(obj["batch"]), _integer(obj["at"])
            trace = obj.get("tp", [])
            if type(trace) is not list or not all(type(t) is str for t in trace):
                raise TypeError("tp is not a list of traceparents")
            for item in heads:
                items.append(Delivery.decode(item, view, end))
                end += item[1]
        except (KeyError, TypeError, ValueError):
            raise MalformedRequest(DELIVER_SHAPE) from None
        if end != len(view):
            raise MalformedRequest(f"a deliver batch's {len(items)} frame lengths add up to {end - start} bytes, "
                                   f"but {len(view) - start} follow its head")
        return cls(batch, at, tuple(items), tuple(trace))


@dataclass(frozen=True, slots=True)
class BatchResult:
    """node -> dispatch: the batch is accepted; ``delivered`` counts the (message, user) pairs written to a socket,
    plus the sockets topic messages were written to."""

    batch: int
    delivered: int

    def encode(self) -> bytes:
        return orjson.dumps({"type": Op.RESULT, "batch": self.batch, "delivered": self.delivered})

    @classmethod
    def decode(cls, data: str | bytes) -> BatchResult:
        obj = load_object(data)
        try:
            return cls(int(obj["batch"]), int(obj["delivered"]))
        except (KeyError, TypeError, ValueError):
            raise MalformedRequest("result frame needs 'batch' and 'delivered'") from None


def new_post_id(ms: int) -> str:
    """A unique post id that sorts by acceptance time (hex milliseconds, then 32 random bits)."""
    return f"{ms:012x}{secrets.token_hex(4)}"


USER_ID_PATTERN = r"[A-Za-z0-9_.@-]{1,128}"
_USER_ID = re.compile(USER_ID_PATTERN)


def valid_user_id(value: object) -> bool:
    """User ids are 1-128 characters of letters, digits and ``_ . @ -`` (so ``:`` can join keys)."""
    return isinstance(value, str) and _USER_ID.fullmatch(value) is not None
