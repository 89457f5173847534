"""A post's delivery state as pure data: the specification the Redis scripts of ``shared.delivery.inbox`` implement.

A post is one POST's messages; the messages for users are *held* in the post's hash while a
recipient may still be sent them. The post's messages reach this state in *parts*: those due at
once when collect hands the post over, each scheduled one when it fires (``shared.delivery.schedule``), all
of them again when dispatch rebuilds Redis from MongoDB. So nothing here is per post: every count
and expiry is per message.

Per held message ``i`` the hash keeps its frame, recipients, expiry ``x`` and ``n``, how many of its
deliveries may still be open; the post keeps ``h``, how many messages it holds. The post has one
entry in its bucket's expiry index, scored ``score``. A message no longer held keeps its fields
until it expires or the post holds nothing (then the whole hash goes in one DEL, rather than one
HDEL per message closed); nothing reads them, since a replay reads only ids still in an inbox.

Transitions (each one Lua script in ``shared.delivery.inbox``, named there):

* ``open`` -- a part is handed over: its messages are held (again), ``n += recipients``, and the
  score becomes the earliest of the score and the part's expiries (a later part never delays and a
  short-lived part never advances another's expiry: each message expires by its own ``x``). A
  message already expired is never opened: once forgotten on expiry, held again it would start a
  new count that a trim of its old entries, counted later, would take below its open entries;
* ``close`` -- deliveries acked or trimmed: ``n -= closed`` for each message still held; a message
  whose ``n`` falls to 0 is no longer held; a post holding none leaves the index;
* ``expire`` -- messages whose ``x`` passed (their deliveries already closed) are forgotten; the
  post is scored by its earliest expiry left, or leaves the index.

Invariants (``check``), given that a part's ``open`` runs before its inbox entries are added:

1. ``n`` never undercounts: ``n[i] >= `` the open inbox entries of message ``i``. An undercount would
   forget a frame some recipient still owes (a lost message); an overcount (a part opened twice,
   say a hand-over finished again by the reconciler) only keeps the frame until it expires.
2. Every held message is in the index no later than its expiry: ``score <= x[i]``.
3. A post holding nothing has no index entry, and one holding something has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class Held:
    """One message's delivery state while its post holds it."""

    recipients: tuple[str, ...]
    expires_ms: int
    open: int = 0  # ``n``: deliveries that may still be open


@dataclass(frozen=True, slots=True)
class Part:
    """A message handed over: its position in the post, its recipients and its expiry."""

    index: int
    recipients: tuple[str, ...]
    expires_ms: int


@dataclass(slots=True)
class PostState:
    held: dict[int, Held] = field(default_factory=dict)
    score: int | None = None  # the post's score in the expiry index; None: not in it

    def open(self, parts: Iterable[Part]) -> None:
        """A part handed over; a message in it twice (two submissions of one post in one batch) opens once, as its
        inbox entries are written once."""
        parts = list({p.index: p for p in parts}.values())
        for p in parts:
            previous = self.held.get(p.index)
            self.held[p.index] = Held(p.recipients, p.expires_ms, (previous.open if previous else 0) + len(p.recipients))
        if parts:
            earliest = min(p.expires_ms for p in parts)
            self.score = earliest if self.score is None else min(self.score, earliest)

    def close(self, closed: Mapping[int, int]) -> None:
        """``closed[i]`` deliveries of message ``i`` left their inboxes (acked or trimmed)."""
        for i, count in closed.items():
            held = self.held.get(i)
            if held is None:
                continue
            held.open -= count
            if held.open <= 0:
                del self.held[i]
        if not self.held:
            self.score = None

    def expired(self, now_ms: int) -> list[int]:
        """The held messages whose expiry has passed."""
        return sorted(i for i, h in self.held.items() if h.expires_ms <= now_ms)

    def expire(self, now_ms: int, indexes: Iterable[int]) -> None:
        """Forget these messages if their expiry has passed (their deliveries were closed first); score the post again."""
        for i in indexes:
            held = self.held.get(i)
            if held is not None and held.expires_ms <= now_ms:
                del self.held[i]
        self.score = min((h.expires_ms for h in self.held.values()), default=None)

    def check(self, entries: Mapping[int, int]) -> list[str]:
        """The invariants broken, given how many inbox entries each message has open (empty: all hold)."""
        broken = [f"message {i}: n={h.open} < {entries.get(i, 0)} open entries"
                  for i, h in self.held.items() if h.open < entries.get(i, 0)]
        broken += [f"message {i}: {n} open entries but not held" for i, n in entries.items() if n and i not in self.held]
        if self.held and (self.score is None or self.score > min(h.expires_ms for h in self.held.values())):
            broken.append(f"score {self.score} later than the earliest expiry held")
        if not self.held and self.score is not None:
            broken.append("holds nothing but is still in the expiry index")
        return broken
