"""Holding webhook facts for an ordering window, so that one user's events are queued in the order they happened.

Producers append their facts to ``{webhooks}:events`` a while after the events: a push node and dispatch at their
lifecycle flush (every ``LIFECYCLE_FLUSH_SECONDS``, 1 s, after its MongoDB write), collect's cancels, dispatch's expiries
and the presence watcher's facts at once. So the stream's order is not the order things happened: a delivery a node
flushes 0.9 s after writing it lands behind its expiry, which dispatch appended as soon as it closed it.

So the fan-out holds every fact it reads for ``WEBHOOK_ORDER_WINDOW_MS`` (W) and, at each pass, releases every held fact
whose time (``happened``) is at least W old, sorted by that time. A fact's time is ``Fact.at``, the moment it happened,
except for ``user.offline``: it is decided when its grace ends, ``OFFLINE_GRACE_SECONDS`` after its ``at`` (when the
user's last socket closed), and appended then, so it takes its place at that moment. "W old" is measured against how
far the stream has been read (``read_to``): the clock at the start of a read that came back with all there was, else
the time Redis appended the newest entry read (its id), so a reader catching up on a backlog releases by the stream's
time, not its own clock.

Why an earlier event is never released in a later batch than a later one: let L be released at a pass that has read
the stream up to R, so happened(L) <= R - W, and let E have happened before L. Producers append a fact within W of
its time, so E was appended by happened(E) + W < happened(L) + W <= R, before R: it has been read, and is held or
released already; held, it is due too (happened(E) < R - W) and goes in this batch. Within a batch the facts are sorted
by (time, stream entry, position), and so is each event's queue member (``member``), so one batch's events, all due at
the same score, are read back by ``WebhookQueues.due`` in that order, and the next batch's are due later. So the order
breaks only for a fact appended more than W after it happened: one a producer kept through a Redis outage (or a
MongoDB one: the lifecycle writes MongoDB first) and appended after it, which is released at the first pass that reads
it, after events that happened later. The hosts' clocks must agree to well within W: a clock behind eats into it.

An entry is acknowledged with the release of its last fact (``release`` names it), in the script that queues them
(``shared.delivery.webhook_queue``). A process killed with facts held leaves their entries pending; the next one reads
its pending entries again ("0") and the ``seen`` markers skip the events already queued.

Memory: a fact is due W after its time or after its entry was appended, whichever is earlier (a producer whose clock
runs ahead cannot have its facts held longer), so the window holds the facts appended in the last W of stream time
read, plus the page just read. A reader that falls behind (a backlog after a restart, a slow MongoDB) reads page by
page, each pass releasing what is W older than the newest entry it read: it stays in order and holds no more. No I/O.
"""

from __future__ import annotations

import heapq

from shared.model.webhook_events import Fact


def entry_ms(entry_id: str) -> int:
    """The time (ms) Redis appended a stream entry: the first part of its id."""
    return int(entry_id.partition("-")[0])


def member(happened: int, entry_id: str, position: int) -> str:
    """An event's order key in a queue: its time, then its stream entry's id and its place in the entry, sortable as
    text (fixed width)."""
    ms, _, seq = entry_id.partition("-")
    return f"{happened:013d}-{int(ms):013d}-{int(seq):06d}-{position:05d}"


class OrderWindow:
    """The facts read from the stream and not yet released, by when each is due; see the module docstring."""

    def __init__(self, window_ms: int, offline_grace_ms: int = 0) -> None:
        self.window_ms = window_ms
        self.offline_grace_ms = offline_grace_ms
        self.read_to = 0  # every entry appended before this (ms) has been read
        self._held: list[tuple[int, str, Fact, str]] = []  # heap of (due, member, fact, entry id)
        self._left: dict[str, int] = {}  # entry id -> its facts still held
        self._done: list[str] = []  # entries all released, to acknowledge with the next batch

    def __len__(self) -> int:
        return len(self._held)

    def happened(self, fact: Fact) -> int:
        return fact.at + self.offline_grace_ms if fact.stage == "offline" else fact.at

    def add(self, entry_id: str, facts: list[Fact]) -> None:
        """Hold the facts of one stream entry (none: an entry deleted meanwhile, only to acknowledge)."""
        appended = entry_ms(entry_id)
        for position, fact in enumerate(facts):
            happened = self.happened(fact)
            heapq.heappush(self._held, (min(happened, appended) + self.window_ms, member(happened, entry_id, position),
                                        fact, entry_id))
        if facts:
            self._left[entry_id] = self._left.get(entry_id, 0) + len(facts)
        else:
            self._done.append(entry_id)

    def advance(self, read_to: int) -> None:
        """Every entry appended before ``read_to`` (ms) has been read (and added)."""
        self.read_to = max(self.read_to, read_to)

    def release(self, limit: int) -> tuple[list[tuple[str, Fact]], list[str]]:
        """Up to ``limit`` of the facts due by ``read_to`` (the earliest due first), as ``(member, fact)`` sorted by
        member; and the entries none of whose facts are held any more, to acknowledge with them."""
        out: list[tuple[str, Fact]] = []
        while self._held and self._held[0][0] <= self.read_to and len(out) < limit:
            _, key, fact, entry_id = heapq.heappop(self._held)
            out.append((key, fact))
            self._left[entry_id] -= 1
            if not self._left[entry_id]:
                del self._left[entry_id]
                self._done.append(entry_id)
        acks, self._done = self._done, []
        out.sort(key=lambda held: held[0])
        return out, acks

    def due_in(self, now: int) -> int | None:
        """How long (ms) until the earliest held fact is due, if the stream is read up to the clock; None if none is held."""
        return max(0, self._held[0][0] - now) if self._held else None
