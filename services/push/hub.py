"""The node's local map of user id -> open sessions, and writing frames to them.

A session starts in *replay*: the node first sends the user's open messages from their inbox,
oldest first (``replay.py``). Live frames arriving meanwhile are held and written after the replay,
so a user's messages arrive in order across it. Every frame written is remembered in ``sent`` until
the client acknowledges it, so neither a replay nor a retried batch writes the same message twice
to one socket. ``sent`` keeps the newest ``SENT_LIMIT`` ids: a socket that never acks forgets its oldest
(counted in ``push_sent_forgotten_total``) rather than growing without bound or being closed, which would
only replay it everything again; one of those could then be written to it twice, which the client drops by
id (the inbox keeps ``INBOX_LIMIT``, 10,000, open messages a user, so older ones are mostly gone anyway).
Held frames are bounded: past ``HELD_LIMIT`` they are dropped and the replay runs once more (every live
message is in the inbox too). A socket whose client stops reading is closed with 1013 once ``max_buffered``
bytes wait in its buffer: what it was not sent waits in its inbox.

A socket whose buffer is backed up (past ``backlog_bytes``, a client reading slowly) gets its new
live frames queued in the node instead, high priority ones ahead of the rest (each kind in arrival
order), and a flusher writes them as its buffer drains. The normal path pays one buffer-size read
per socket write, as before; queued bytes count towards ``max_buffered``.

The hub also keeps topic -> subscribed sessions. A topic (or broadcast) message is written once to
each open session subscribed at that moment, whatever its replay state (it is in no inbox, so it has
no order to keep with the user's messages), in slices of ``PUBLISH_SLICE`` sockets with a yield to
the loop in between, and at most once per message id on this node (a retried batch writes nothing).
While a session's position in a topic is being read (a new subscription, or a recovery), that
topic's live frames are held for it; ``resume`` writes what it missed, then the held frames past the
position it was told, and drops late live copies of offsets already written.

A client that asked for bundles (``?bundle=1``) gets its topic frames (messages, joins and leaves) at most once per
``bundle_interval``: one coming sooner after the last waits in the socket's ``Bundle`` with any others, and the
bundler writes each bundle as one websocket frame, its frames separated by newlines, in the order they came. A quiet
topic's message goes out at once; a busy topic's subscriber pays one write (and its client one frame to read) per
interval instead of one per message, which is most of a topic frame's cost on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from services.push.metrics import BUNDLED, BUNDLES, CONNECTIONS, QUEUED, SENT_FORGOTTEN, SLOW_CLOSED, USERS
from shared.infra.background import Background
from shared.model.message import BROADCAST
from shared.wire.errors import CloseCode

log = logging.getLogger(__name__)

HELD_LIMIT = 1000
PUBLISH_SLICE = 1000  # sockets written between two yields to the loop
PUBLISHED_MEMORY = 100_000  # unpositioned topic message ids remembered, so a retried batch is not written twice
POSITIONING_LIMIT = 10_000  # live frames of one topic held for one socket while its position is read; past it: 1013
FLUSH_INTERVAL = 0.005  # seconds between two passes of the flusher over backed-up sockets
ACKED_LIMIT = 1_000  # acknowledged ids one socket still remembers, so a late batch does not write them again
SENT_LIMIT = 10_000  # unacked message ids one socket remembers (the default INBOX_LIMIT), ~1 MB at most
BUNDLE_BYTES = 64 * 1024  # a bundle this big is written at once, so no client gets a frame much larger
FIN_TEXT = 0x81  # a websocket frame's first byte: the final (only) fragment of a text message
# A server frame's header with a 7-bit, 16-bit or 64-bit payload length (RFC 6455 5.2; no mask).
SHORT_HEADER, MEDIUM_HEADER, LONG_HEADER = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


def wire(frame: bytes) -> bytes:
    """``frame`` (UTF-8 JSON text, as collect encoded it) as a websocket text frame a server sends: a header, then the
    frame's bytes as they are, in one buffer (one write per socket, and one buffer however many sockets take it).
    Unmasked, and compression is off on this server, so the bytes are the same for every socket and can be appended
    to its transport as they are. Nothing else writes partial frames (the node never fragments), so frames cannot
    interleave."""
    length = len(frame)
    if length < 126:
        return SHORT_HEADER.pack(FIN_TEXT, length) + frame
    if length < 65536:
        return MEDIUM_HEADER.pack(FIN_TEXT, 126, length) + frame
    return LONG_HEADER.pack(FIN_TEXT, 127, length) + frame


@dataclass(eq=False, slots=True)
class Waiting:
    """Frames queued in the node for one backed-up socket: high priority ones first when written."""

    urgent: deque[bytes] = field(default_factory=deque)
    rest: deque[bytes] = field(default_factory=deque)
    size: int = 0  # bytes queued

    def add(self, data: bytes, high: bool) -> None:
        (self.urgent if high else self.rest).append(data)
        self.size += len(data)

    def pop(self) -> bytes:
        data = (self.urgent or self.rest).popleft()
        self.size -= len(data)
        return data

    def __len__(self) -> int:
        return len(self.urgent) + len(self.rest)


@dataclass(eq=False, slots=True)
class Bundle:
    """Topic frames waiting for one socket's next bundle write, in arrival order."""

    frames: list[bytes]
    size: int

    def add(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.size += len(frame) + 1

    def wire(self) -> bytes:
        return wire(b"\n".join(self.frames))


NOTHING: OrderedDict[str, None] = OrderedDict()  # never written: the empty start of every ``SentIds``


class SentIds:
    """The ids written to one socket and not acknowledged yet, oldest first, at most ``limit``: past it the oldest is
    forgotten (counted), so a socket that never acks costs bounded memory. The newest ``ACKED_LIMIT`` acknowledged ids
    are still remembered: a batch dispatch sent before the ack and a node writes after it (a node resuming from a
    stall, say) is not written again."""

    __slots__ = ("_acked", "_ids", "limit")

    def __init__(self, limit: int = SENT_LIMIT) -> None:
        # Both start as the one shared empty map, and get one of their own at their first write: an idle socket's
        # costs nothing here (two empty maps per socket were ~0.3 KB of the ~19 KB a connection costs).
        self._ids: OrderedDict[str, None] = NOTHING
        self._acked: OrderedDict[str, None] = NOTHING
        self.limit = limit

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids or message_id in self._acked

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        if self._ids is NOTHING:
            self._ids = OrderedDict()
        self._ids[message_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
            SENT_FORGOTTEN.inc()

    def difference_update(self, message_ids: Iterable[str]) -> list[str]:
        """These ids were acknowledged: no longer counted as unacked, remembered among the newest acked. Returns those
        that were written to this socket and unacked until now."""
        written = []
        if self._acked is NOTHING:
            self._acked = OrderedDict()
        for message_id in message_ids:
            if message_id in self._ids:
                del self._ids[message_id]
                written.append(message_id)
            self._acked[message_id] = None
        while len(self._acked) > ACKED_LIMIT:
            self._acked.popitem(last=False)
        return written


@dataclass(eq=False, slots=True)
class Session:
    ws: ServerConnection
    user_id: str
    replaying: bool = True
    held: list[tuple[str, bytes]] = field(default_factory=list)
    sent: SentIds = field(default_factory=SentIds)
    overflowed: bool = False
    closing: bool = False
    topics: set[str] = field(default_factory=set)
    welcomed: bool = False  # sent its welcome frame: broadcasts reach it from then on, never before the welcome
    waiting: Waiting | None = None  # live frames queued while its buffer is backed up
    # Topics whose live frames wait until their position is known (``Hub.resume``): (offset, frame) each.
    positioning: dict[str, list[tuple[int | None, bytes]]] | None = None  # (None rather than empty: a dict per socket costs)
    # Per topic, the last offset a resume wrote: live frames up to it still on their way (placed before the read of
    # the history, sent after) are dropped; the first one past it ends the watch.
    floors: dict[str, int] | None = None
    # The offsets of the first and the last broadcast written to it live (0: none yet): a recovery of * writes only the
    # missed broadcasts outside them (before its welcome, or placed but not yet on this node: ``broadcast_written``).
    first_broadcast: int = 0
    last_broadcast: int = 0
    bundles: bool = False  # its client reads several topic frames in one websocket frame (asked with ``?bundle=1``)
    topic_written: float = 0.0  # when its last topic frame or bundle was written (loop time), while it takes bundles

    def await_positions(self, topics: Iterable[str]) -> None:
        """Hold the live frames of these topics until ``Hub.resume`` (their position is being read)."""
        self.positioning = self.positioning or {}
        for topic in topics:
            self.positioning.setdefault(topic, [])

    @property
    def open(self) -> bool:
        return self.ws.protocol.state is State.OPEN and not self.closing

    def hold(self, message_id: str, frame: bytes) -> None:
        if len(self.held) < HELD_LIMIT:
            self.held.append((message_id, frame))
        else:
            self.overflowed = True

    def go_live(self) -> bool:
        """Write the held frames not sent yet and go live, with no await in between; False if some were
        dropped (the replay must run again, still holding)."""
        if self.overflowed:
            self.held.clear()
            self.overflowed = False
            return False
        held, self.held = self.held, []
        self.replaying = False
        for message_id, frame in held:
            if message_id not in self.sent:  # the replay wrote it, or it was held twice (a retried batch)
                self.sent.add(message_id)
                broadcast([self.ws], frame, text=True)
        return True

    def broadcast_written(self, offset: int) -> bool:
        """Whether the broadcast at ``offset`` was written to this socket live: broadcasts reach it in offset order
        without holes (``sequencer.py``), from the first written to the last."""
        return self.first_broadcast <= offset <= self.last_broadcast and self.first_broadcast > 0

    def acknowledged(self, message_ids: Iterable[str]) -> list[str]:
        """The client acknowledged these ids; returns those written to this socket (surely this user's deliveries)."""
        return self.sent.difference_update(message_ids)


class Hub:
    def __init__(self, max_buffered: int = 1024 * 1024, backlog_bytes: int = 64 * 1024, bundle_interval: float = 0.0) -> None:
        self._by_user: defaultdict[str, set[Session]] = defaultdict(set)
        self.connections = 0
        self.max_buffered = max_buffered
        self.backlog_bytes = backlog_bytes
        self._backed: dict[Session, None] = {}  # sessions with queued frames, in the order they backed up
        self._flusher: asyncio.Task[None] | None = None
        self._closing = Background()  # close handshakes of slow sockets
        self._by_topic: defaultdict[str, set[Session]] = defaultdict(set)
        self._published: OrderedDict[str, None] = OrderedDict()
        self._corked: dict[Session, list[bytes]] | None = None  # frames gathered per socket inside ``corked``
        self.bundle_interval = bundle_interval  # seconds; 0: no bundles
        self._bundled: dict[Session, Bundle] = {}  # sessions with topic frames waiting for the bundler
        self._bundler: asyncio.Task[None] | None = None
        self.empty = asyncio.Event()  # set while no session is open (a drain waits for it)
        self.empty.set()

    def add(self, session: Session) -> None:
        self._by_user[session.user_id].add(session)
        self.connections += 1
        self.empty.clear()
        self._gauge()

    def remove(self, session: Session) -> list[str]:
        """Forget a closed session; return the topics it was subscribed to (their local counts changed)."""
        sessions = self._by_user.get(session.user_id)
        if sessions is None or session not in sessions:
            return []
        topics = self.unsubscribe(session, list(session.topics))
        self._drop_waiting(session)
        self._bundled.pop(session, None)
        sessions.discard(session)
        if not sessions:
            del self._by_user[session.user_id]
        self.connections -= 1
        if not self.connections:
            self.empty.set()
        self._gauge()
        return topics

    def subscribe(self, session: Session, topics: Iterable[str]) -> list[str]:
        """Add the session to these topics; return those it was not in yet."""
        added = [t for t in topics if t not in session.topics]
        for topic in added:
            session.topics.add(topic)
            self._by_topic[topic].add(session)
        return added

    def unsubscribe(self, session: Session, topics: Iterable[str]) -> list[str]:
        """Remove the session from these topics; return those it was in."""
        removed = [t for t in topics if t in session.topics]
        for topic in removed:
            session.topics.discard(topic)
            subscribers = self._by_topic[topic]
            subscribers.discard(session)
            if not subscribers:
                del self._by_topic[topic]
        return removed

    def subscribers(self, topic: str) -> int:
        """The sessions subscribed to ``topic`` on this node."""
        return len(self._by_topic.get(topic, ()))

    def topic_users(self, topic: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` user ids subscribed to ``topic`` here, sorted, and whether there were more."""
        users = sorted({s.user_id for s in self._by_topic.get(topic, ())})
        return users[:limit], len(users) > limit

    def topics(self) -> list[str]:
        return list(self._by_topic)

    def topic_count(self) -> int:
        return len(self._by_topic)

    def close_slow(self, session: Session, reason: str = "too slow: reconnect to get the rest") -> None:
        """Close a socket whose client does not read (or whose recovery fell too far behind): its unsent messages stay
        in the inbox (or the topic's history) for the next connect, and the node's memory stays bounded (the socket
        stops being written once closing)."""
        if session.closing:
            return
        session.closing = True
        SLOW_CLOSED.inc()
        log.warning("closing a connection that does not keep up", extra={
            "user_id": session.user_id, "bytes": session.ws.transport.get_write_buffer_size(), "reason": reason})
        self._closing.start(session.ws.close(CloseCode.TRY_AGAIN, reason))

    def _gauge(self) -> None:
        CONNECTIONS.set(self.connections)
        USERS.set(len(self._by_user))

    def count(self, user_id: str) -> int:
        """The user's open sessions on this node."""
        return len(self._by_user.get(user_id, ()))

    def holds(self, user_id: str) -> bool:
        return user_id in self._by_user

    def users(self) -> Iterator[str]:
        return iter(list(self._by_user))

    def sessions(self) -> list[Session]:
        return [s for sessions in self._by_user.values() for s in sessions]

    def __len__(self) -> int:
        return len(self._by_user)

    def deliver(self, user_id: str, message_id: str, frame: bytes, high: bool = False) -> bool:
        """Write (or, during replay, hold; while backed up, queue) ``frame`` for every open session of the user,
        without awaiting."""
        data = b""  # ``frame`` on the wire, serialised once the first socket takes it
        taken = False
        for session in self._by_user.get(user_id, ()):
            if not session.open:
                continue
            taken = True
            if message_id in session.sent or (buffered := self._buffered(session)) is None:
                continue
            if session.replaying:
                session.hold(message_id, frame)
                continue
            session.sent.add(message_id)
            data = data or wire(frame)
            self._write(session, data, high, buffered)
        return taken

    def _buffered(self, session: Session) -> int | None:
        """The bytes waiting for the session (its buffer and its queue), or None if past ``max_buffered`` (it is then
        closed and written no more)."""
        buffered = session.ws.transport.get_write_buffer_size() + (session.waiting.size if session.waiting else 0)
        if buffered > self.max_buffered:
            self.close_slow(session)
            self._drop_waiting(session)
            return None
        return buffered

    def _queue(self, session: Session, data: bytes, high: bool) -> None:
        if session.waiting is None:
            session.waiting = Waiting()
            self._backed[session] = None
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
        session.waiting.add(data, high)
        QUEUED.inc()

    def _drop_waiting(self, session: Session) -> None:
        if session.waiting is not None:
            QUEUED.dec(len(session.waiting))
            session.waiting = None
            self._backed.pop(session, None)

    async def _flush(self) -> None:
        """Write the queued frames of backed-up sockets as their buffers drain, high first; end when none is left."""
        try:
            while self._backed:
                await asyncio.sleep(FLUSH_INTERVAL)
                for session in list(self._backed):
                    waiting = session.waiting
                    if waiting is None:
                        continue
                    if not session.open:
                        self._drop_waiting(session)
                        continue
                    transport = session.ws.transport
                    while waiting and transport.get_write_buffer_size() <= self.backlog_bytes:
                        transport.write(waiting.pop())
                        QUEUED.dec()
                    if not waiting:
                        self._drop_waiting(session)
        finally:
            self._flusher = None

    def resume(self, session: Session, topic: str, missed: list[bytes], after: int) -> None:
        """End the wait for ``topic``'s position: write the messages the session ``missed`` (its recovery, in offset
        order), then the live frames held meanwhile that come after offset ``after`` (the position it was told), with
        no await in between, so nothing is lost, doubled or reordered between the two."""
        held = session.positioning.pop(topic, []) if session.positioning else []
        if not session.positioning:
            session.positioning = None
        if not session.open or self._buffered(session) is None:
            return
        later = [(offset, frame) for offset, frame in held if offset is None or offset > after]
        now = asyncio.get_running_loop().time()
        for frame in [*missed, *(frame for _, frame in later)]:
            self._send_topic(session, frame, wire(frame), False, now)
        session.floors = session.floors or {}
        session.floors[topic] = max((offset for offset, _ in later if offset is not None), default=after)

    @staticmethod
    def _past_floor(session: Session, topic: str, offset: int) -> bool:
        """Whether a live frame at ``offset`` comes after what the session's resume of ``topic`` wrote (the first that
        does ends the watch: later ones are placed later still)."""
        assert session.floors is not None
        if offset <= session.floors[topic]:
            return False
        del session.floors[topic]
        if not session.floors:
            session.floors = None
        return True

    def _write(self, session: Session, data: bytes, high: bool, buffered: int) -> None:
        """Append ``data`` to the socket (to its corked bytes, while corked), or queue it while the socket is backed up
        (``buffered`` bytes waiting)."""
        if session.waiting is not None or buffered > self.backlog_bytes:
            self._queue(session, data, high)
        elif self._corked is not None:
            self._corked.setdefault(session, []).append(data)
        else:
            session.ws.transport.write(data)

    def _send_topic(self, session: Session, frame: bytes, data: bytes, high: bool, now: float) -> bool:
        """Write a topic frame (``data``: ``frame`` on the wire) to the session if it is open and keeps up, or add it to
        its bundle when it takes bundles and had a frame less than ``bundle_interval`` ago (or a bundle waits already:
        then the socket is checked when the bundle is written). Whether it was taken."""
        bundle = self._bundled.get(session) if session.bundles else None
        if bundle is not None and bundle.size + len(frame) <= BUNDLE_BYTES:
            bundle.add(frame)
            return True
        if not session.open or (buffered := self._buffered(session)) is None:
            return False
        if session.bundles and self.bundle_interval:
            if bundle is not None or now - session.topic_written < self.bundle_interval:
                if bundle is not None:  # full: written now, and this frame starts the next
                    self.flush_bundles(session)
                self._bundled[session] = Bundle([frame], len(frame))
                if self._bundler is None:
                    self._bundler = asyncio.get_running_loop().create_task(self._bundle())
                return True
            session.topic_written = now
        self._write(session, data, high, buffered)
        return True

    def flush_bundles(self, session: Session | None = None) -> None:
        """Write the waiting bundles now (only ``session``'s, if given): each as one frame, its frames newline-separated
        (serialised once for all the sockets whose bundles hold the same frames, as a busy topic's subscribers' do)."""
        now = asyncio.get_running_loop().time()
        wired: dict[tuple[int, ...], bytes] = {}  # the frames' identities (alive in their bundles) -> the bundle on the wire
        bundles = frames = 0
        for waiting in [session] if session is not None else list(self._bundled):
            bundle = self._bundled.pop(waiting, None)
            if bundle is None or not waiting.open or (buffered := self._buffered(waiting)) is None:
                continue
            key = tuple(map(id, bundle.frames))
            if (data := wired.get(key)) is None:
                data = wired[key] = bundle.wire()
            waiting.topic_written = now
            self._write(waiting, data, False, buffered)
            bundles, frames = bundles + 1, frames + len(bundle.frames)
        BUNDLES.inc(bundles)
        BUNDLED.inc(frames)

    async def _bundle(self) -> None:
        """Every ``bundle_interval``, write each waiting bundle as one frame; end when none is left."""
        try:
            while self._bundled:
                await asyncio.sleep(self.bundle_interval)
                self.flush_bundles()
        finally:
            self._bundler = None

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Within the block (which must not await), frames for one socket are gathered and written at its end in one
        write: a deliver batch carrying several messages for a user costs its socket one send, not one per message."""
        self._corked = {}
        try:
            yield
        finally:
            corked, self._corked = self._corked, None
            for session, chunks in corked.items():
                if session.open:
                    session.ws.transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def announce(self, topic: str, frame: bytes) -> None:
        """Write a notice about ``topic`` (a join or leave) to its open subscribers here (held, like its messages, for a
        subscriber whose position in the topic is being read, so it never precedes the ``subscribed`` answer)."""
        data, now = wire(frame), asyncio.get_running_loop().time()
        for session in list(self._by_topic.get(topic, ())):
            if session.positioning and (held := session.positioning.get(topic)) is not None:
                held.append((None, frame))
            else:
                self._send_topic(session, frame, data, False, now)

    async def publish(self, message_id: str, frame: bytes, topic: str, high: bool = False, offset: int = 0) -> int:
        """Write a topic message to the open sessions subscribed to ``topic`` (every open session for
        ``BROADCAST``), without awaiting any socket (queued for a backed-up one; held for one whose position in the
        topic is being read); return how many were written. A message without a position (``offset`` 0) already
        published is not written again (a retried batch); one with a position always is: the sequencer admits each
        offset once (``sequencer.py``), and the same id placed again at a new offset (the topic's placement guard
        lost with Redis) must not leave a hole in the offsets its subscribers see."""
        if not offset:
            if message_id in self._published:
                return 0
            self._published[message_id] = None
            if len(self._published) > PUBLISHED_MEMORY:
                self._published.popitem(last=False)
        sessions = self.sessions() if topic == BROADCAST else list(self._by_topic.get(topic, ()))
        # One frame for every socket, serialised once (``wire``), each socket's transport just appends it. This
        # skips what websockets' broadcast() redoes per socket (framing), about half the node's CPU per socket.
        data = wire(frame)
        written = 0
        for start in range(0, len(sessions), PUBLISH_SLICE):
            if start:
                await asyncio.sleep(0)  # let the loop serve others between slices of a big topic
            now = asyncio.get_running_loop().time()
            for session in sessions[start:start + PUBLISH_SLICE]:
                if not session.welcomed:
                    continue
                if session.positioning and (held := session.positioning.get(topic)) is not None:
                    held.append((offset, frame))
                    if len(held) > POSITIONING_LIMIT:
                        self.close_slow(session, "too many messages while recovering: reconnect to recover again")
                    continue
                if session.floors and topic in session.floors and not self._past_floor(session, topic, offset):
                    continue
                if self._send_topic(session, frame, data, high, now):
                    written += 1
                    if topic == BROADCAST and offset:
                        session.first_broadcast = session.first_broadcast or offset
                        session.last_broadcast = offset
        return written
