"""What each business system may reach: user-id prefixes and topic namespaces per API key. Pure logic, no I/O.

``COLLECT_API_SCOPES`` maps a sender (the name in ``COLLECT_API_KEYS``) to its scope, as JSON::

    {"shop": {"users": ["shop-", "vip-"], "topics": ["shop", "news"]}, "billing": {"users": ["bill-"], "topics": []}}

* ``users``: the user-id prefixes the key may post to and ask presence of; absent: every user.
* ``topics``: the namespaces (a topic ``ns`` or ``ns:anything``) the key may post to and ask about; absent:
  every topic; ``[]``: none. A key limited in either way cannot broadcast (a broadcast reaches everyone).

A key without an entry reaches everything, as before. Outside its scope, posting, presence and topic
queries answer 404: the key cannot even learn whether the user or topic exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from shared.model.message import BROADCAST, Message
from shared.model.topics import valid_topic
from shared.wire.errors import NotFound


@dataclass(frozen=True, slots=True)
class Scope:
    users: tuple[str, ...] | None = None  # user-id prefixes; None: every user
    topics: tuple[str, ...] | None = None  # topic namespaces; None: every topic

    @property
    def limited(self) -> bool:
        return self.users is not None or self.topics is not None

    def allows_user(self, user_id: str) -> bool:
        return self.users is None or user_id.startswith(self.users)

    def allows_topic(self, topic: str) -> bool:
        if topic == BROADCAST:
            return not self.limited
        return self.topics is None or any(topic == ns or topic.startswith(f"{ns}:") for ns in self.topics)

    def check_users(self, user_ids: Iterable[str]) -> None:
        outside = next((u for u in user_ids if not self.allows_user(u)), None)
        if outside is not None:
            raise NotFound(f"no user {outside!r} for this API key")

    def check_topic(self, topic: str) -> None:
        if not self.allows_topic(topic):
            raise NotFound("broadcast is not allowed for this API key" if topic == BROADCAST else f"no topic {topic!r} for this API key")

    def check_messages(self, messages: Iterable[Message]) -> None:
        """``NotFound`` naming the first recipient or topic of a post outside the scope."""
        for m in messages:
            if m.topic is not None:
                self.check_topic(m.topic)
            else:
                self.check_users(m.users)


EVERYTHING = Scope()


def parse_scopes(raw: str) -> dict[str, Scope]:
    """``COLLECT_API_SCOPES`` (see the module docstring); ``ValueError`` naming what is wrong."""
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError('must be a JSON object: {"<sender>": {"users": [...], "topics": [...]}}')
    scopes = {}
    for sender, entry in document.items():
        if not isinstance(entry, dict) or not set(entry) <= {"users", "topics"}:
            raise ValueError(f"has an entry for {sender!r} that is not an object of 'users' and 'topics'")
        users, topics = entry.get("users"), entry.get("topics")
        for name, values in (("users", users), ("topics", topics)):
            if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) and v for v in values)):
                raise ValueError(f"{sender}.{name} must be a list of non-empty strings")
        bad = [t for t in topics or () if ":" in t or not valid_topic(t)]
        if bad:
            raise ValueError(f"{sender}.topics has names that are not namespaces (no ':'): {', '.join(bad)}")
        scopes[sender] = Scope(None if users is None else tuple(users), None if topics is None else tuple(topics))
    return scopes
