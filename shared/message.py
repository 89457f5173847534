"""An accepted message as every service holds it: plain data, no I/O.

A message is stored once, whatever the number of recipients: its frame (the exact text a browser
receives, encoded once by collect) and its recipients travel together through MongoDB, the Redis
inboxes, the stream and the link to the push nodes. A *delivery* is one message for one recipient,
named by the pair ``(message_id, user_id)``.
"""

from __future__ import annotations

from dataclasses import dataclass

Pair = tuple[str, str]  # (message_id, user_id): one delivery


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    users: tuple[str, ...]
    frame: str
    ts: int  # ms since epoch, when collect accepted it
    expires_ms: int
    sender: str = ""

    def pairs(self) -> list[Pair]:
        return [(self.id, u) for u in self.users]


def join_users(users: tuple[str, ...] | list[str]) -> str:
    """Recipients as one field (user ids cannot contain ``,``)."""
    return ",".join(users)


def split_users(field: bytes | str) -> tuple[str, ...]:
    text = field.decode() if isinstance(field, bytes) else field
    return tuple(text.split(",")) if text else ()
