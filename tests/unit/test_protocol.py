"""The wire protocol's encoding and parsing (pure data, no I/O)."""

from __future__ import annotations

import re

import orjson
import pytest

from shared.model.topics import Position
from shared.wire.errors import MalformedRequest
from shared.wire.protocol import (
    AckFrame,
    BatchResult,
    DeliverBatch,
    Delivery,
    ExpiringFrame,
    MessageFrame,
    PingFrame,
    RefreshedFrame,
    RefreshFrame,
    SubscribeFrame,
    TopicsFrame,
    UnsubscribeFrame,
    new_post_id,
    parse_client_frame,
    valid_user_id,
)


def test_message_frame_encodes_the_documented_shape() -> None:
    """A message frame carries type, id, payload and ts."""
    assert orjson.loads(MessageFrame("m1", {"a": [1]}, 5).encode()) == {"type": "message", "id": "m1", "payload": {"a": [1]}, "ts": 5}


@pytest.mark.parametrize(("text", "frame"), [
    ('{"type": "ack", "id": "m1"}', AckFrame(("m1",))),
    ('{"type": "ack", "ids": ["m1", "m2"]}', AckFrame(("m1", "m2"))),
    ('{"type": "ping"}', PingFrame()),
    ('{"type": "subscribe", "topics": ["news", "room:42", "news"]}', SubscribeFrame(("news", "room:42"))),
    ('{"type": "unsubscribe", "topics": ["news"]}', UnsubscribeFrame(("news",))),
])
def test_client_frames_parse(text: str, frame: object) -> None:
    """Ack (single or many ids) and ping frames parse to their dataclasses."""
    assert parse_client_frame(text) == frame


@pytest.mark.parametrize("data", ["nope", "[1]", '{"type": "shout"}', '{"type": "ack"}', '{"type": "ack", "ids": [1]}',
                                  '{"type": "ack", "ids": []}', b"\x00\x01", '{"type": "subscribe"}',
                                  '{"type": "subscribe", "topics": []}', '{"type": "subscribe", "topics": "news"}',
                                  '{"type": "subscribe", "topics": ["room:*"]}', '{"type": "unsubscribe", "topics": [1]}',
                                  '{"type": "subscribe", "topics": [%s]}' % ",".join(f'"t{i}"' for i in range(101))])
def test_garbage_client_frames_are_malformed(data: str | bytes) -> None:
    """Anything but a known frame raises MalformedRequest (closed with 4002)."""
    with pytest.raises(MalformedRequest):
        parse_client_frame(data)


def test_a_refresh_frame_parses_to_its_token() -> None:
    """A refresh frame carries the new token, as it was sent."""
    assert parse_client_frame('{"type": "refresh", "token": "a.b.c"}') == RefreshFrame("a.b.c")


@pytest.mark.parametrize("data", ['{"type": "refresh"}', '{"type": "refresh", "token": ""}', '{"type": "refresh", "token": 5}',
                                  '{"type": "refresh", "token": null}', '{"type": "refresh", "token": ["a.b.c"]}'])
def test_a_refresh_frame_without_a_non_empty_string_token_is_malformed_naming_the_token(data: str) -> None:
    """A refresh whose token is missing, empty or not a string raises MalformedRequest (4002) saying what it needs."""
    with pytest.raises(MalformedRequest, match="refresh needs 'token'"):
        parse_client_frame(data)


def test_refreshed_and_expiring_frames_encode_the_documented_shapes() -> None:
    """refreshed names the new token's expiry in seconds since epoch; expiring the time left in ms."""
    assert orjson.loads(RefreshedFrame(1_900_000_000).encode()) == {"type": "refreshed", "expires_at": 1_900_000_000}
    assert orjson.loads(ExpiringFrame(59_500).encode()) == {"type": "expiring", "expires_in_ms": 59_500}


def test_topics_replies_encode_the_documented_shapes() -> None:
    """subscribed / unsubscribed list their topics; a refusal is an error frame with its code and topics."""
    assert orjson.loads(TopicsFrame("subscribed", ("a",)).encode()) == {"type": "subscribed", "topics": ["a"]}
    assert orjson.loads(TopicsFrame("error", ("b",), "forbidden").encode()) == {"type": "error", "code": "forbidden", "topics": ["b"]}


def link_message(head: object, frames: bytes = b"", head_length: int | None = None) -> bytes:
    """A deliver batch as the link carries it, built by hand: the head's length (or ``head_length``), head, frames."""
    data = head if isinstance(head, bytes) else orjson.dumps(head)
    return (len(data) if head_length is None else head_length).to_bytes(4, "big") + data + frames


def test_deliver_batch_and_result_round_trip() -> None:
    """The dispatch link frames decode to what was encoded."""
    batch = DeliverBatch(7, 1234, (Delivery("m", b'{"x":1}', 3, ("u", "v")),))
    assert DeliverBatch.decode(batch.encode()) == batch
    traced = DeliverBatch(8, 1234, batch.items, ("00-" + "a" * 32 + "-" + "b" * 16 + "-01",))
    assert DeliverBatch.decode(traced.encode()) == traced and b'"tp"' not in batch.encode()
    assert BatchResult.decode(BatchResult(7, 2).encode()) == BatchResult(7, 2)


def test_a_deliver_batch_is_a_length_a_json_head_naming_each_frames_length_then_the_frames() -> None:
    """The documented layout: a 4-byte big-endian head length, the head with a topic as a fifth item only, then the
    frames concatenated in item order."""
    batch = DeliverBatch(1, 2, (Delivery("m", b"FF", 3, ("u",)), Delivery("t", b"TTT", 3, (), "news")))
    head = orjson.dumps({"type": "deliver", "batch": 1, "at": 2, "items": [["m", 2, 3, ["u"]], ["t", 3, 3, [], "news"]]})
    assert batch.encode() == link_message(head, b"FFTTT")
    assert DeliverBatch.decode(batch.encode()) == batch


def test_a_frame_with_quotes_and_non_ascii_text_crosses_the_link_byte_for_byte() -> None:
    """A frame's bytes appear in the batch as they are (no JSON escaping) and come out identical, so the node
    writes exactly what collect encoded."""
    frame = MessageFrame("m1", {"say": 'he said "héllo" \\ 😀', "sep": "\u2028", "nul": "\u0000"}, 5, "room:1").encode()
    data = DeliverBatch(9, 9, (Delivery("m1", frame, 5, (), "room:1"), Delivery("m2", b"", 5, ("u",)))).encode()
    assert data.endswith(frame)
    [delivered, empty] = DeliverBatch.decode(data).items
    assert delivered.frame == frame and type(delivered.frame) is bytes and empty.frame == b""


GOOD_HEAD = {"type": "deliver", "batch": 1, "at": 2, "items": [["m", 1, 3, ["u"]]]}


@pytest.mark.parametrize(("data", "says"), [
    (link_message(GOOD_HEAD, b"F").decode(), "binary message, not str"),
    (b"", "4-byte length"),
    (b"\x00\x00\x01", "4-byte length"),
    (link_message(GOOD_HEAD, b"F", head_length=10_000), "runs past its end"),
    (link_message(b"{not json", b""), "not valid JSON"),
    (link_message([1, 2], b""), "must be a JSON object"),
    (link_message({**GOOD_HEAD, "type": "result"}, b"F"), "needs 'type': 'deliver'"),
    (link_message({**GOOD_HEAD, "batch": "1"}, b"F"), "needs 'type': 'deliver'"),
    (link_message({"type": "deliver", "batch": 1, "items": []}), "needs 'type': 'deliver'"),
    (link_message({**GOOD_HEAD, "items": [["m", -1, 3, ["u"]]]}, b""), "needs 'type': 'deliver'"),
    (link_message({**GOOD_HEAD, "items": [["m", 1.0, 3, ["u"]]]}, b"F"), "needs 'type': 'deliver'"),
    (link_message(GOOD_HEAD, b""), "add up to 1 bytes, but 0 follow"),
    (link_message(GOOD_HEAD, b"FF"), "add up to 1 bytes, but 2 follow"),
    (link_message({**GOOD_HEAD, "items": []}, b"F"), "add up to 0 bytes, but 1 follow"),
    (link_message({**GOOD_HEAD, "tp": "00-ab"}, b"F"), "a list of traceparents"),
    (link_message({**GOOD_HEAD, "tp": [1]}, b"F"), "a list of traceparents"),
])
def test_a_malformed_deliver_batch_is_refused_saying_what_is_wrong(data: str | bytes, says: str) -> None:
    """Text instead of binary, a short header, a head running past the end or not a deliver head, and frame lengths
    that do not add up to the bytes after the head each raise MalformedRequest naming the fault."""
    with pytest.raises(MalformedRequest, match=re.escape(says)):
        DeliverBatch.decode(data)


@pytest.mark.parametrize("items", [[["m", 1, 3]], [["m", 1, 3, ["u"], "news", "x"]], [["m", 1, 3, [], 5]],
                                   [["m", 1, 3, "u"]], [["m", 1, 3, [7]]], [[5, 1, 3, ["u"]]], [["m", 1, "3", ["u"]]],
                                   [["m", 1, 3, ["u"], None, "urgent"]], [{"m": 1, "F": 2, "t": 3, "u": 4}], [["m"]], "mFtu"])
def test_deliver_batch_decode_refuses_other_item_shapes(items: object) -> None:
    """Items of another length, a non-list of users or a non-string user, a non-string id or topic, a non-integer ts
    or a non-list item are malformed."""
    with pytest.raises(MalformedRequest, match="needs 'type': 'deliver'"):
        DeliverBatch.decode(link_message({"type": "deliver", "batch": 1, "at": 2, "items": items}, b"F"))


def test_message_ids_sort_by_time_and_are_unique() -> None:
    """Ids made later sort later; ids made in the same millisecond differ."""
    assert new_post_id(1000) < new_post_id(1001)
    assert len({new_post_id(5) for _ in range(1000)}) == 1000


def test_user_ids_allow_only_safe_characters() -> None:
    """User ids may not contain ':' (it joins keys), spaces, or be empty or too long."""
    assert valid_user_id("alice.smith@example-1_2")
    assert not any(valid_user_id(v) for v in ["", "a:b", "a b", "x" * 129, 5, None])


def test_dispatch_splits_batches_under_the_frame_limit() -> None:
    """Batches to a node stay under the byte limit, keep order, and an oversized item travels alone."""
    from services.dispatch.forwarder import chunk_by_bytes

    items = [Delivery(f"m{i}", b"x" * size, 0, ("u",)) for i, size in enumerate([100, 100, 500, 100])]
    chunks = chunk_by_bytes(items, 450)
    assert [[d.message_id for d in c] for c in chunks] == [["m0", "m1"], ["m2"], ["m3"]]


def test_dispatch_sizes_batches_by_utf8_bytes() -> None:
    """Frames of multi-byte characters are counted in bytes, so two 150-character emoji frames do not share a 400-byte batch."""
    from services.dispatch.forwarder import chunk_by_bytes

    items = [Delivery(f"m{i}", ("\U0001F600" * 150).encode(), 0, ("u",)) for i in range(2)]
    assert all(d.encoded_size() > 600 for d in items)
    assert [len(c) for c in chunk_by_bytes(items, 400)] == [1, 1]


def test_dispatch_groups_each_message_per_node_with_only_that_nodes_recipients() -> None:
    """A message for users on two nodes becomes one delivery per node naming the users there; unrouted users and
    expired messages go nowhere."""
    from services.dispatch.forwarder import per_node
    from shared.delivery.stream import StreamEntry
    from shared.model.message import Message

    entries = [StreamEntry("1-0", [Message("m1", ("a", "b", "c"), b"F1", 5, 99), Message("m9", ("a",), b"F9", 5, 10)]),
               StreamEntry("2-0", [Message("m2", ("b",), b"F2", 6, 99)])]
    work = per_node(entries, {"a": ["n1"], "b": ["n1", "n2"]}, now_ms=50)
    assert work == {
        "n1": {"1-0": [Delivery("m1", b"F1", 5, ("a", "b"))], "2-0": [Delivery("m2", b"F2", 6, ("b",))]},
        "n2": {"1-0": [Delivery("m1", b"F1", 5, ("b",))], "2-0": [Delivery("m2", b"F2", 6, ("b",))]},
    }


def test_dispatch_sends_a_topic_message_once_to_each_holding_node_and_a_broadcast_to_every_live_node() -> None:
    """A topic message goes to the nodes holding its subscribers (none: nowhere), a broadcast to every live node,
    each once and naming no users; an expired one goes nowhere."""
    from services.dispatch.forwarder import per_node
    from shared.delivery.stream import StreamEntry
    from shared.model.message import BROADCAST, Message

    entries = [StreamEntry("1-0", [Message("t1", (), b"T", 5, 99, topic="news"), Message("t2", (), b"Q", 5, 99, topic="quiet"),
                                   Message("b1", (), b"B", 5, 99, topic=BROADCAST), Message("b0", (), b"O", 5, 10, topic=BROADCAST)])]
    work = per_node(entries, {}, 50, {"news": {"n2": 3}}, ["n1", "n2"])
    assert work == {"n1": {"1-0": [Delivery("b1", b"B", 5, (), BROADCAST)]},
                    "n2": {"1-0": [Delivery("t1", b"T", 5, (), "news"), Delivery("b1", b"B", 5, (), BROADCAST)]}}


def test_a_positioned_topic_message_carries_its_offset_and_epoch_in_its_frame_and_across_the_link() -> None:
    """A topic message given a position has ``offset`` and ``epoch`` added to its frame (still the frame collect
    encoded, extended), and its offset crosses the link in the batch head."""
    from shared.model.message import Message

    frame = MessageFrame("t1", {"q": "\"x\""}, 5, "news").encode()
    delivery = Delivery.of(Message("t1", (), frame, 5, 99, topic="news"), position=Position(42, "k3x9"))
    assert orjson.loads(delivery.frame) == {**orjson.loads(frame), "offset": 42, "epoch": "k3x9"}
    assert delivery.frame == MessageFrame("t1", {"q": "\"x\""}, 5, "news", Position(42, "k3x9")).encode()
    assert DeliverBatch.decode(DeliverBatch(1, 2, (delivery,)).encode()).items == (delivery,)
    assert delivery.position == Position(42, "k3x9") and delivery.head()[6] == [42, "k3x9"]


def test_a_subscribe_may_recover_positions_of_its_own_topics_and_the_broadcasts() -> None:
    """``recover`` maps topics of the subscribe (``*`` among them) to positions; anything else is malformed."""
    frame = parse_client_frame('{"type": "subscribe", "topics": ["news", "*"], "recover": {"*": {"offset": 3, "epoch": "e"}}}')
    assert frame == SubscribeFrame(("news", "*"), {"*": Position(3, "e")})
    for recover in ('{"room": {"offset": 1, "epoch": "e"}}', '{"news": {"offset": -1, "epoch": "e"}}',
                    '{"news": {"offset": 1}}', '[]'):
        with pytest.raises(MalformedRequest):
            parse_client_frame(f'{{"type": "subscribe", "topics": ["news"], "recover": {recover}}}')


def test_the_largest_accepted_message_fits_one_batch_and_the_nodes_link_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message at collect's default payload and recipient limits, all quotes (escaped once, in its frame, and not
    again on the link), is sized at least as large as it encodes, and alone fits dispatch's batch budget and a node's
    frame limit."""
    from services.collect.config import CollectConfig
    from services.collect.intake import Limits, parse_body
    from services.dispatch.config import DispatchConfig
    from services.push.config import PushConfig

    monkeypatch.setenv("APP_ENV", "development")
    collect, dispatch, push = CollectConfig.from_env(), DispatchConfig.from_env(), PushConfig.from_env()
    limits = Limits(collect.max_payload_bytes, collect.max_batch, collect.max_recipients, collect.message_ttl_seconds)
    users = [f"{n:04d}".ljust(128, "u") for n in range(collect.max_recipients)]
    [m] = parse_body({"user_ids": users, "payload": '"' * (collect.max_payload_bytes // 2 - 60)}, limits, 1)
    item = Delivery(m.id, m.frame, m.ts, m.users)
    encoded = DeliverBatch(2**40, 2**45, (item,)).encode()
    assert len(m.frame) > collect.max_payload_bytes - 200, "the payload is at its limit"
    assert encoded.endswith(m.frame), "the frame's quotes are not escaped again inside the batch"
    assert len(encoded) <= item.encoded_size() + 90  # the batch's length and envelope around its one item
    assert item.encoded_size() <= dispatch.batch_bytes < push.max_frame_bytes - 1000
