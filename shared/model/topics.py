"""Topic names and who may subscribe to them. Pure logic, no I/O.

A topic is 1-128 characters of letters, digits and ``_ . : @ -``. A *pattern* is a topic name or a
prefix ending in ``:*`` (``room:*`` grants ``room:42`` and ``room:lobby``, not ``room`` itself).
A user may subscribe to a topic its token's ``topics`` claim or the node's ``PUBLIC_TOPICS`` grants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
