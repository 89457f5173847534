"""The delivery state of a few posts as the model specifies it (``shared.model.poststate``), with the inboxes around
it: what the state machine test checks the invariants on, and what the Redis test compares Redis with."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared.model.message import Message, Pair, index_of, message_id, post_of
from shared.model.poststate import Part, PostState

USERS = ("ann", "bob", "cyd")
FRAME = b'{"type":"message"}'


def catalogue(posts: int, per_post: int, base_ms: int, recipients: list[tuple[str, ...]], lifetimes: list[int]) -> list[Message]:
    """``posts`` posts of ``per_post`` messages: message k goes to ``recipients[k]`` and lives ``lifetimes[k]`` ms."""
    return [Message(message_id(f"{p:02x}{'ab' * 5}", i), recipients[k], FRAME, base_ms + k, base_ms + lifetimes[k])
            for p in range(posts) for i in range(per_post) for k in [p * per_post + i]]


@dataclass
class World:
    """Posts' states and the users' inboxes (message id -> acceptance time), trimmed to ``limit`` like Redis does."""

    limit: int
    posts: dict[str, PostState] = field(default_factory=lambda: defaultdict(PostState))
    inboxes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    trimmed: list[Pair] = field(default_factory=list)

    def open(self, messages: list[Message], now_ms: int) -> None:
        """A part handed over: the posts' state first, then the inbox entries (the order ``Inbox.stage`` keeps);
        messages expired by ``now_ms`` are left out."""
        messages = [m for m in messages if m.expires_ms > now_ms]
        by_post: defaultdict[str, list[Part]] = defaultdict(list)
        for m in messages:
            by_post[m.post].append(Part(m.index, m.users, m.expires_ms))
        for post, parts in by_post.items():
            self.posts[post].open(parts)
        for m in messages:
            for user in m.users:
                self.inboxes[user][m.id] = m.ts
        for user, entries in self.inboxes.items():
            ranked = sorted(entries, key=lambda mid: (entries[mid], mid))
            for mid in ranked[:max(0, len(ranked) - self.limit)]:
                del entries[mid]
                self.trimmed.append((mid, user))

    def close(self, pairs: list[Pair]) -> list[Pair]:
        """Deliveries acked: those in their inbox close and count against their messages."""
        removed = [(m, u) for m, u in pairs if self.inboxes[u].pop(m, None) is not None]
        self.settle(removed)
        return removed

    def settle(self, closed: list[Pair]) -> None:
        per_post: defaultdict[str, Counter[int]] = defaultdict(Counter)
        for m, _ in closed:
            per_post[post_of(m)][index_of(m)] += 1
        for post, counts in per_post.items():
            self.posts[post].close(counts)

    def close_trimmed(self) -> list[Pair]:
        pairs, self.trimmed = self.trimmed, []
        self.settle(pairs)
        return pairs

    def expire(self, now_ms: int) -> list[Pair]:
        """The expiry pass: the expired messages' open deliveries close, then the messages are forgotten."""
        closed: list[Pair] = []
        for post, state in self.posts.items():
            if state.score is None or state.score > now_ms:
                continue
            expired = state.expired(now_ms)
            for i in expired:
                mid = message_id(post, i)
                closed += [(mid, u) for u in state.held[i].recipients if self.inboxes[u].pop(mid, None) is not None]
            state.expire(now_ms, expired)
        return closed

    def entries(self, post: str) -> Counter[int]:
        """How many inbox entries each message of ``post`` has open."""
        return Counter(index_of(m) for entries in self.inboxes.values() for m in entries if post_of(m) == post)

    def broken(self) -> list[str]:
        """Every invariant broken, across posts."""
        return [f"{post}: {b}" for post, state in self.posts.items() for b in state.check(self.entries(post))]
