"""Accepted messages and the posts that carry them: plain data, no I/O.

A business system's POST is a *post* of one or more messages. The post is the unit of storage
everywhere (one MongoDB document, one Redis hash, one stream entry), so a post of 1,000 messages
costs a handful of writes, not thousands; a message's id is its post's id plus its position
(``{post}{index:04x}``). A message is stored once, whatever the number of recipients: its frame
(the UTF-8 bytes of the exact JSON text a browser receives, encoded once by collect, never decoded on
the way to the socket) and its recipients. A *delivery* is one message for one recipient, named by the
pair ``(message_id, user_id)``.

A *topic message* has no recipients but a ``topic``: it goes to the sockets subscribed to that
topic when it is dispatched (``BROADCAST``, which no topic name can be, means every socket). It
opens no inbox, so it is never replayed.

The same flat field map describes a post's messages in its Redis hash and its stream entry:
``"{i}"`` the frame of message ``i``, ``"u{i}"`` its recipients joined by ``,`` (user ids cannot
contain one), ``"x{i}"`` its expiry in ms, for a topic message ``"t{i}"`` its topic, and for a message
not of normal priority ``"r{i}"`` its priority (``shared.model.priority``). The hash holding a scheduled
message back (``shared.delivery.schedule``) adds ``"d{i}"``, its due time in ms. ``FIELD_PREFIXES`` lists them
once, for the scripts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

from shared.model.priority import Priority

if TYPE_CHECKING:
    from redis.typing import EncodableT

Pair = tuple[str, str]  # (message_id, user_id): one delivery
INDEX_DIGITS = 4
BROADCAST = "*"  # the topic of a message for every socket (not a valid topic name)


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    users: tuple[str, ...]
    frame: bytes  # the UTF-8 JSON text every recipient's socket is sent (``MessageFrame.encode``)
    ts: int  # ms since epoch, when collect accepted it
    expires_ms: int
    sender: str = ""
    topic: str | None = None  # a topic message (``BROADCAST``: every socket); ``users`` is then empty
    _: KW_ONLY
    due_ms: int = 0  # a scheduled message: when it may reach anyone (ms since epoch); 0: at once
    priority: Priority = Priority.NORMAL
    trace: str = ""  # collect's span for the post (a ``traceparent``), while tracing is on: carried in the stream entry

    @property
    def post(self) -> str:
        return post_of(self.id)

    @property
    def index(self) -> int:
        return index_of(self.id)


def message_id(post: str, index: int) -> str:
    return f"{post}{index:0{INDEX_DIGITS}x}"


def post_of(message_id: str) -> str:
    return message_id[:-INDEX_DIGITS]


def index_of(message_id: str) -> int:
    return int(message_id[-INDEX_DIGITS:], 16)


_MESSAGE_ID = re.compile(f"[0-9a-f]{{{INDEX_DIGITS + 1},64}}")


def is_message_id(value: str) -> bool:
    """Whether ``value`` has a message id's form (hex: a post id, then the index), so ``index_of`` cannot fail on it."""
    return _MESSAGE_ID.fullmatch(value) is not None


def by_post(messages: Iterable[Message]) -> dict[str, list[Message]]:
    posts: defaultdict[str, list[Message]] = defaultdict(list)
    for m in messages:
        posts[m.post].append(m)
    return posts


def submitted_posts(messages: Iterable[Message]) -> list[list[Message]]:
    """A batch's posts as submitted, each a run of messages from position 0. Unlike ``by_post``, two
    submissions of one post (an Idempotency-Key retry sharing a group commit) stay two posts."""
    posts: list[list[Message]] = []
    for m in messages:
        if m.index == 0 or not posts:
            posts.append([])
        posts[-1].append(m)
    return posts


def join_users(users: Iterable[str]) -> str:
    return ",".join(users)


def split_users(field: bytes | str) -> tuple[str, ...]:
    text = field.decode() if isinstance(field, bytes) else field
    return tuple(text.split(",")) if text else ()


# A message's fields in a field map, by prefix before its index: frame, recipients, expiry, topic, priority, and the
# due time a held-back message adds (``shared.delivery.schedule``). A new field of a message is one more prefix here, written
# in ``post_fields`` and read in ``messages_of``: every Lua script that copies or drops a message's fields takes its
# list from ``lua_fields``.
FIELD_PREFIXES = ("", "u", "x", "t", "r", "d")


def lua_fields(index: str, extra: tuple[str, ...] = ()) -> str:
    """A Lua table constructor of message ``index``'s field names (``index`` a Lua expression), ``extra`` prefixes last."""
    return "{" + ", ".join(index if not p else f"'{p}' .. {index}" for p in (*FIELD_PREFIXES, *extra)) + "}"


def post_fields(messages: list[Message]) -> dict[EncodableT, EncodableT]:
    """The field map of one post's messages (see the module docstring)."""
    fields: dict[EncodableT, EncodableT] = {}
    for m in messages:
        i = m.index
        fields[str(i)] = m.frame
        fields[f"u{i}"] = join_users(m.users)
        fields[f"x{i}"] = m.expires_ms
        if m.topic is not None:
            fields[f"t{i}"] = m.topic
        if m.priority is not Priority.NORMAL:
            fields[f"r{i}"] = m.priority.value
    return fields


def messages_of(post: str, ts: int, fields: Mapping[bytes, bytes]) -> list[Message]:
    """The messages a field map describes, in position order (the inverse of ``post_fields``)."""
    indexes = sorted(int(k) for k in fields if k.isdigit())
    return [Message(message_id(post, i), split_users(fields[b"u%d" % i]), fields[b"%d" % i], ts,
                    int(fields[b"x%d" % i]), topic=topic.decode() if (topic := fields.get(b"t%d" % i)) else None,
                    due_ms=int(fields.get(b"d%d" % i, 0)), priority=Priority(fields.get(b"r%d" % i, b"normal").decode()))
            for i in indexes]
