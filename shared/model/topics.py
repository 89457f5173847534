"""Topics: names, who may subscribe, what each namespace keeps, and recovering from a position. Pure logic, no I/O.

A topic is 1-128 characters of letters, digits and ``_ . : @ -``. A *pattern* is a topic name or a
prefix ending in ``:*`` (``room:*`` grants ``room:42`` and ``room:lobby``, not ``room`` itself).
A user may subscribe to a topic its token's ``topics`` claim or the node's ``PUBLIC_TOPICS`` grants.

Every topic message has a ``Position`` in its topic (``BROADCAST`` is a topic here): an offset one
above the previous message's, within an epoch. A subscriber that comes back with its position gets
what it missed when the topic's history still holds all of it (``recover``), else nothing and is told
so. How much history a topic keeps, and whether its subscribers hear joins and leaves, is its
namespace's ``TopicPolicy`` (``Namespaces``, from ``TOPIC_NAMESPACES``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
MAX_PATTERNS = 100


def valid_topic(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def valid_pattern(value: object) -> bool:
    return isinstance(value, str) and (valid_topic(value) or (value.endswith(":*") and valid_topic(value[:-1])))


@dataclass(frozen=True, slots=True)
class Grants:
    """A set of patterns, answering whether a topic matches one of them."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, patterns: Iterable[str]) -> Grants:
        """Patterns already validated (``valid_pattern``); invalid ones grant nothing."""
        good = [p for p in patterns if valid_pattern(p)]
        return cls(frozenset(p for p in good if not p.endswith(":*")), tuple(sorted({p[:-1] for p in good if p.endswith(":*")})))

    def allows(self, topic: str) -> bool:
        return topic in self.names or any(topic.startswith(p) and len(topic) > len(p) for p in self.prefixes)

    def __or__(self, other: Grants) -> Grants:
        return Grants(self.names | other.names, tuple(sorted({*self.prefixes, *other.prefixes})))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a topic's stream stands: the offset of its last message (each message of the topic adds exactly 1) within
    an ``epoch``, a name that changes whenever the topic's history was lost (Redis restarted empty, or the topic idle
    past ``POSITION_SECONDS``), so offsets of two epochs never compare."""

    offset: int
    epoch: str

    def as_json(self) -> dict[str, object]:
        return {"offset": self.offset, "epoch": self.epoch}

    @classmethod
    def parse(cls, value: object) -> Position | None:
        """``{"offset": n >= 0, "epoch": "..."}`` as a position, or None when it is not one."""
        if not isinstance(value, dict):
            return None
        offset, epoch = value.get("offset"), value.get("epoch")
        if type(offset) is not int or offset < 0 or not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
            return None
        return cls(offset, epoch)


@dataclass(frozen=True, slots=True)
class Logged:
    """One message in a topic's history: its offset, id, when it was placed (ms) and its frame as collect encoded it."""

    offset: int
    message_id: str
    at: int
    frame: bytes


def recover(since: Position, current: Position, history: list[Logged]) -> list[Logged] | None:
    """What a subscriber at ``since`` missed, given the topic's ``current`` position and its ``history`` (read
    together with it, in offset order): every message after ``since``, in order, or None when that cannot be given
    whole (another epoch, a position from the future, or history that no longer reaches back to ``since``)."""
    if since.epoch != current.epoch or since.offset > current.offset:
        return None
    missed = [m for m in history if m.offset > since.offset]
    if len(missed) != current.offset - since.offset or (missed and missed[0].offset != since.offset + 1):
        return None
    return missed


@dataclass(frozen=True, slots=True)
class TopicPolicy:
    """What one namespace's topics keep: ``history_size`` messages (0: none, offsets only) for ``history_seconds``,
    and whether subscribers are told who joins and leaves."""

    history_size: int
    history_seconds: int
    join_leave: bool = False


POLICY_FIELDS = {"history_size": int, "history_seconds": int, "join_leave": bool}


def namespace_of(topic: str) -> str:
    """A topic's namespace: its name before the first ``:`` (``room:42`` -> ``room``), or "" for a plain name."""
    name, sep, _ = topic.partition(":")
    return name if sep else ""


def parse_namespaces(raw: str) -> dict[str, dict[str, object]]:
    """``TOPIC_NAMESPACES``: a JSON object of namespace -> overrides, each a subset of ``POLICY_FIELDS``
    (``{"chat": {"history_size": 50, "join_leave": true}, "ticker": {"history_size": 0}}``); ValueError naming what
    is wrong (an unknown field, a wrong type, a size below 0 or an age below 1 s, a name that is no namespace)."""
    try:
        spec = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError("must be a JSON object of namespace -> settings")
    for name, fields in spec.items():
        if not valid_topic(name) or ":" in name:
            raise ValueError(f"has {name!r}, which is not a namespace (a topic name's part before ':')")
        if not isinstance(fields, dict):
            raise ValueError(f"gives {name!r} {fields!r}; expected an object of {', '.join(POLICY_FIELDS)}")
        for key, value in fields.items():
            kind = POLICY_FIELDS.get(key)
            if kind is None:
                raise ValueError(f"gives {name!r} an unknown setting {key!r} (known: {', '.join(POLICY_FIELDS)})")
            if type(value) is not kind or (kind is int and isinstance(value, int) and value < (0 if key == "history_size" else 1)):
                raise ValueError(f"gives {name!r} {key}={value!r}: expected "
                                 + {"history_size": "an integer >= 0", "history_seconds": "an integer >= 1",
                                    "join_leave": "true or false"}[key])
    return spec


@dataclass(frozen=True, slots=True)
class Namespaces:
    """Each topic's policy: its namespace's overrides of the defaults (``TOPIC_HISTORY_SIZE``,
    ``TOPIC_HISTORY_SECONDS``, join/leave off)."""

    default: TopicPolicy
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def policy(self, topic: str) -> TopicPolicy:
        fields = self.overrides.get(namespace_of(topic))
        return replace(self.default, **fields) if fields else self.default  # type: ignore[arg-type]
