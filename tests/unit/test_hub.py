"""The push node's hub: the local map user -> sessions, topic subscriptions, and writing frames (no network).

A session's socket is a stand-in holding a real sans-I/O websocket protocol, so the bytes the hub writes are
read back as websocket frames."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from services.push import hub as hub_module
from services.push.hub import Hub, Session
from shared.model.message import BROADCAST
from shared.wire.errors import CloseCode
from tests.waits import until


class FakeTransport:
    """The part of an asyncio transport the hub uses: a write buffer whose backlog the test sets."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.backlog = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return self.backlog


class FakeSocket:
    """Stands in for a server connection: a websocket protocol whose output lands in a ``FakeTransport``."""

    def __init__(self) -> None:
        self.protocol = Protocol(Side.SERVER)
        self.transport = FakeTransport()
        self.send_in_progress = None  # what websockets' broadcast() checks before writing
        self.closed_with: list[tuple[int, str]] = []

    def send_data(self) -> None:
        for data in self.protocol.data_to_send():
            self.transport.write(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed_with.append((code, reason))
        self.protocol.send_close(code, reason)

    def texts(self) -> list[str]:
        """The text frames written to this socket so far, as a client would read them."""
        client = Protocol(Side.CLIENT)
        client.receive_data(bytes(self.transport.written))
        return [e.data.decode() for e in client.events_received() if isinstance(e, Frame) and e.opcode is Opcode.TEXT]


def session(user: str, *, replaying: bool = False, welcomed: bool = True) -> Session:
    return Session(FakeSocket(), user, replaying=replaying, welcomed=welcomed)  # type: ignore[arg-type]


def texts(s: Session) -> list[str]:
    return s.ws.texts()  # type: ignore[attr-defined]


def test_sessions_are_counted_per_user_and_a_removed_one_hands_back_its_topics() -> None:
    """Two sessions of one user count 2 for that user; removing one returns the topics it held and drops those
    left without subscribers; removing it again changes nothing; the last one gone, the user is gone."""
    hub = Hub()
    first, second, other = session("u1"), session("u1"), session("u2")
    for s in (first, second, other):
        hub.add(s)
    hub.subscribe(first, ["a", "b"])
    hub.subscribe(other, ["b"])
    assert (hub.count("u1"), hub.count("u2"), len(hub), hub.connections) == (2, 1, 2, 3)
    assert sorted(hub.remove(first)) == ["a", "b"]
    assert (hub.subscribers("a"), hub.subscribers("b"), sorted(hub.topics())) == (0, 1, ["b"])
    assert hub.remove(first) == [] and hub.connections == 2
    hub.remove(second)
    assert not hub.holds("u1") and hub.count("u1") == 0 and sorted(hub.users()) == ["u2"]


def test_subscribe_and_unsubscribe_report_only_the_topics_that_changed() -> None:
    """Subscribing again to a held topic, or unsubscribing from one not held, reports nothing for it."""
    hub = Hub()
    s = session("u")
    hub.add(s)
    assert hub.subscribe(s, ["a", "b"]) == ["a", "b"]
    assert hub.subscribe(s, ["b", "c"]) == ["c"]
    assert hub.unsubscribe(s, ["c", "d"]) == ["c"]
    assert (hub.subscribers("a"), hub.subscribers("c"), hub.topic_count()) == (1, 0, 2)


def test_a_topics_users_are_listed_once_sorted_and_cut_at_the_limit() -> None:
    """Two sessions of one user list it once; past the limit the list is cut and says so."""
    hub = Hub()
    for user in ("cy", "ann", "ann", "bob"):
        s = session(user)
        hub.add(s)
        hub.subscribe(s, ["room"])
    assert hub.topic_users("room", 10) == (["ann", "bob", "cy"], False)
    assert hub.topic_users("room", 2) == (["ann", "bob"], True)
    assert hub.topic_users("nobody", 2) == ([], False)


def test_a_replaying_session_holds_live_frames_and_writes_after_the_replay_only_those_it_was_not_sent() -> None:
    """Frames delivered during a replay are held; going live writes them in order, skipping one the replay wrote."""
    hub = Hub()
    s = session("u", replaying=True)
    hub.add(s)
    assert hub.deliver("u", "m1", b"F1") and hub.deliver("u", "m2", b"F2")
    assert texts(s) == []
    s.sent.add("m1")  # the replay read m1 from the inbox and wrote it itself
    assert s.go_live() and not s.replaying
    assert texts(s) == ["F2"]


def test_a_frame_delivered_twice_during_a_replay_is_written_once_when_the_session_goes_live() -> None:
    """A message held twice while replaying (dispatch retried its batch after a Redis failure) is written once."""
    hub = Hub()
    s = session("u", replaying=True)
    hub.add(s)
    for message_id, frame in (("m1", b"F1"), ("m2", b"F2"), ("m1", b"F1")):
        hub.deliver("u", message_id, frame)
    assert s.go_live()
    assert texts(s) == ["F1", "F2"]


def test_a_frame_is_written_once_per_socket_until_acknowledged() -> None:
    """A retried batch writes nothing to a socket already sent the message, nor one arriving after its ack (a late
    batch); once acknowledged it no longer counts as unacked."""
    hub = Hub()
    s = session("u")
    hub.add(s)
    hub.deliver("u", "m1", b"F1")
    hub.deliver("u", "m1", b"F1")
    assert texts(s) == ["F1"]
    s.acknowledged(["m1"])
    assert len(s.sent) == 0
    hub.deliver("u", "m1", b"F1")
    assert texts(s) == ["F1"]


def test_held_frames_past_the_limit_make_the_replay_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past HELD_LIMIT the held frames are dropped and going live fails once (the replay runs again, still
    holding); the next attempt goes live."""
    monkeypatch.setattr(hub_module, "HELD_LIMIT", 2)
    hub = Hub()
    s = session("u", replaying=True)
    hub.add(s)
    for n in range(3):
        hub.deliver("u", f"m{n}", f"F{n}".encode())
    assert not s.go_live() and s.replaying and s.held == []
    assert s.go_live() and texts(s) == []


def test_deliver_says_whether_an_open_session_took_the_message() -> None:
    """A user with no session, or only a closing one, does not take it (it waits in the inbox)."""
    hub = Hub()
    assert not hub.deliver("nobody", "m1", b"F1")
    s = session("u")
    hub.add(s)
    s.closing = True
    assert not hub.deliver("u", "m1", b"F1") and texts(s) == []


async def test_a_socket_past_max_buffered_is_closed_with_1013_once_and_written_no_more() -> None:
    """A socket whose client does not read is closed 1013 at the first frame past the limit, once, and neither a
    user frame nor a topic frame is written to it."""
    hub = Hub(max_buffered=100)
    s = session("u")
    hub.add(s)
    hub.subscribe(s, ["news"])
    s.ws.transport.backlog = 101  # type: ignore[attr-defined]
    assert hub.deliver("u", "m1", b"F1")  # taken: the node holds the user, the message waits in the inbox
    assert await hub.publish("t1", b"T1", "news") == 0
    await asyncio.sleep(0)  # the close runs as a task
    assert [code for code, _ in s.ws.closed_with] == [CloseCode.TRY_AGAIN]  # type: ignore[attr-defined]
    assert texts(s) == []


async def test_a_topic_message_reaches_welcomed_open_subscribers_once_per_message_id() -> None:
    """Only welcomed, open sessions subscribed to the topic get it; the same id published again writes nothing."""
    hub = Hub()
    reader, unwelcomed, closing, elsewhere = session("a"), session("b", welcomed=False), session("c"), session("d")
    for s in (reader, unwelcomed, closing, elsewhere):
        hub.add(s)
    for s in (reader, unwelcomed, closing):
        hub.subscribe(s, ["news"])
    hub.subscribe(elsewhere, ["sport"])
    closing.closing = True
    assert await hub.publish("t1", b"T1", "news") == 1
    assert await hub.publish("t1", b"T1", "news") == 0
    assert [texts(s) for s in (reader, unwelcomed, closing, elsewhere)] == [["T1"], [], [], []]


async def test_a_topic_message_placed_again_at_a_new_offset_is_written_there_too() -> None:
    """An id written at offset 101 and placed again at 102 is written at 102 as well: positioned messages are
    admitted once per offset by the sequencer, so dropping the id here would leave subscribers a hole at 102."""
    hub = Hub()
    reader = session("a")
    hub.add(reader)
    hub.subscribe(reader, ["room:3"])
    assert await hub.publish("t1", b"T1@101", "room:3", offset=101) == 1
    assert await hub.publish("t1", b"T1@102", "room:3", offset=102) == 1
    assert texts(reader) == ["T1@101", "T1@102"]


async def test_a_broadcast_reaches_every_welcomed_session_whatever_it_subscribed_to() -> None:
    """A broadcast is written to every welcomed open session, subscribed to anything or nothing, during a replay too."""
    hub = Hub()
    plain, subscribed, replaying, unwelcomed = session("a"), session("b"), session("c", replaying=True), session("d", welcomed=False)
    for s in (plain, subscribed, replaying, unwelcomed):
        hub.add(s)
    hub.subscribe(subscribed, ["news"])
    assert await hub.publish("b1", b"B1", BROADCAST) == 3
    assert [texts(s) for s in (plain, subscribed, replaying, unwelcomed)] == [["B1"], ["B1"], ["B1"], []]


async def test_a_big_topic_is_written_in_slices_with_the_loop_served_in_between(monkeypatch: pytest.MonkeyPatch) -> None:
    """With slices of 2, five subscribers are written 2, 4, then 5 at a time, and another task runs between slices."""
    monkeypatch.setattr(hub_module, "PUBLISH_SLICE", 2)
    hub = Hub()
    sessions = [session(f"u{n}") for n in range(5)]
    for s in sessions:
        hub.add(s)
        hub.subscribe(s, ["big"])
    seen: list[int] = []

    async def watch() -> None:
        while len(seen) < 3:
            seen.append(sum(1 for s in sessions if texts(s)))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # the watcher looks once before the publish starts
    assert await hub.publish("t1", b"T1", "big") == 5
    await watcher
    assert seen == [0, 2, 4]


async def test_published_ids_are_forgotten_past_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node remembers only the last PUBLISHED_MEMORY topic message ids: older ones would be written again."""
    monkeypatch.setattr(hub_module, "PUBLISHED_MEMORY", 2)
    hub = Hub()
    s = session("u")
    hub.add(s)
    for n in range(3):
        await hub.publish(f"t{n}", f"T{n}".encode(), BROADCAST)
    assert await hub.publish("t2", b"T2", BROADCAST) == 0
    assert await hub.publish("t0", b"T0", BROADCAST) == 1


@pytest.mark.parametrize("length", [0, 125, 126, 65_535, 65_536, 200_000])
async def test_a_frame_of_any_length_reaches_the_client_as_a_text_frame_of_the_same_bytes(length: int) -> None:
    """Each payload length class of the websocket header (7-bit, 16-bit, 64-bit) arrives as one text frame whose
    payload is the frame's bytes, quotes and non-ASCII included, for a user and for a topic message."""
    frame = ('é"\\' + "x" * length).encode()[:length]
    hub = Hub(max_buffered=1 << 30, backlog_bytes=1 << 30)
    s = session("u")
    hub.add(s)
    hub.subscribe(s, ["news"])
    hub.deliver("u", "m1", frame)
    await hub.publish("t1", frame, "news")
    assert [t.encode() for t in texts(s)] == [frame, frame]


async def test_a_resume_writes_the_missed_messages_then_the_held_live_ones_after_the_position_then_drops_late_copies() -> None:
    """While a new subscription's position is read, its live frames are held; the resume writes the missed ones, then
    the held ones past the position told, and a live copy of an already written offset arriving later is dropped."""
    hub = Hub()
    s = session("u")
    hub.add(s)
    hub.subscribe(s, ["news"])
    s.await_positions(["news"])
    for offset in (4, 5, 6):  # 4 and 5 were placed before the read, 6 after
        await hub.publish(f"m{offset}", b'{"o":%d}' % offset, "news", offset=offset)
    assert s.ws.texts() == []
    hub.resume(s, "news", [b'{"o":3}', b'{"o":4}', b'{"o":5}'], after=5)
    await hub.publish("m5-late", b'{"o":5}', "news", offset=5)  # sent before the read, arriving after the resume
    await hub.publish("m7", b'{"o":7}', "news", offset=7)
    assert s.ws.texts() == [f'{{"o":{n}}}' for n in (3, 4, 5, 6, 7)]
    assert s.positioning is None and s.floors is None


def test_corked_deliveries_reach_each_socket_in_one_write_in_order() -> None:
    """Inside ``corked``, three messages for one user's two sockets are written at its end, one write per socket, in
    order; outside it each message is a write of its own."""
    hub = Hub()
    tabs = [session("u"), session("u")]
    for s in tabs:
        hub.add(s)
    with hub.corked():
        for n in range(3):
            hub.deliver("u", f"m{n}", b'{"n":%d}' % n)
        assert all(s.ws.transport.writes == 0 for s in tabs)
    assert [(s.ws.texts(), s.ws.transport.writes) for s in tabs] == [(['{"n":0}', '{"n":1}', '{"n":2}'], 1)] * 2
    hub.deliver("u", "m3", b'{"n":3}')
    assert [s.ws.transport.writes for s in tabs] == [2, 2]


def bundling(user: str) -> Session:
    s = session(user)
    s.bundles = True
    return s


def news_hub(bundle_interval: float, *sessions: Session) -> Hub:
    """A hub bundling every ``bundle_interval`` seconds, holding ``sessions``, each subscribed to ``news``."""
    hub = Hub(bundle_interval=bundle_interval)
    for s in sessions:
        hub.add(s)
        hub.subscribe(s, ["news"])
    return hub


async def test_a_socket_that_asked_for_bundles_gets_a_busy_topics_frames_together_at_most_once_per_interval() -> None:
    """With bundles, a topic's first message is written at once and the four following within the interval wait and
    go out as one frame, newline-separated, in order; a socket that did not ask gets five frames; once the topic
    is quiet for an interval, the next message is written at once again."""
    bundled, plain = bundling("u1"), session("u2")
    hub = news_hub(0.05, bundled, plain)
    for n in range(5):
        assert await hub.publish(f"m{n}", b'{"n":%d}' % n, "news", offset=n + 1) == 2
    assert texts(bundled) == ['{"n":0}'] and len(texts(plain)) == 5
    await until(lambda: texts(bundled), lambda t: len(t) == 2, what="the bundle written")
    assert texts(bundled)[1] == "\n".join('{"n":%d}' % n for n in range(1, 5))
    await asyncio.sleep(0.06)
    await hub.publish("m5", b'{"n":5}', "news", offset=6)
    assert texts(bundled)[2:] == ['{"n":5}']


async def test_a_bundle_past_its_byte_bound_is_written_at_once_and_the_next_frame_starts_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame that would take a waiting bundle past ``BUNDLE_BYTES`` writes the bundle first; the frame waits in the
    next one."""
    monkeypatch.setattr(hub_module, "BUNDLE_BYTES", 20)
    s = bundling("u")
    hub = news_hub(10, s)
    for n in range(4):  # 7 bytes each: the first at once, two fit a bundle (7 + 1 + 7), the fourth does not
        await hub.publish(f"m{n}", b'{"n":%d}' % n, "news")
    assert texts(s) == ['{"n":0}', '{"n":1}\n{"n":2}']
    hub.flush_bundles(s)
    assert texts(s)[2:] == ['{"n":3}']


async def test_waiting_bundles_are_flushed_on_demand_and_dropped_with_their_session() -> None:
    """``flush_bundles`` writes a session's waiting frames at once (before an ``unsubscribed`` answer, a close); a
    session removed while its bundle waits is written nothing more, and the bundler ends."""
    kept, gone = bundling("u1"), bundling("u2")
    hub = news_hub(0.05, kept, gone)
    for n in range(3):
        await hub.publish(f"m{n}", b'{"n":%d}' % n, "news")
    hub.flush_bundles(kept)
    assert texts(kept) == ['{"n":0}', '{"n":1}\n{"n":2}']
    hub.remove(gone)
    await until(lambda: hub._bundler, lambda task: task is None, what="the bundler ended")
    assert texts(gone) == ['{"n":0}']


async def test_a_resume_on_a_bundling_socket_keeps_the_recovered_and_live_frames_in_offset_order() -> None:
    """A recovery's missed messages and the live ones held meanwhile go through the socket's bundle in offset order,
    and a late live copy of a recovered offset is still dropped."""
    s = bundling("u")
    hub = news_hub(0.05, s)
    s.await_positions(["news"])
    await hub.publish("m6", b'{"o":6}', "news", offset=6)
    hub.resume(s, "news", [b'{"o":4}', b'{"o":5}'], after=5)
    await hub.publish("m5-late", b'{"o":5}', "news", offset=5)
    await hub.publish("m7", b'{"o":7}', "news", offset=7)
    await until(lambda: texts(s), lambda t: len(t) == 2, what="the bundle written")
    assert "\n".join(texts(s)).split("\n") == [f'{{"o":{n}}}' for n in (4, 5, 6, 7)]
