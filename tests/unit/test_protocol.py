"""The wire protocol's encoding and parsing (pure data, no I/O)."""

from __future__ import annotations

import orjson
import pytest

from shared.wire.errors import MalformedRequest
from shared.wire.protocol import (
    AckFrame,
    BatchResult,
    DeliverBatch,
    Delivery,
    MessageFrame,
    PingFrame,
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


def test_topics_replies_encode_the_documented_shapes() -> None:
    """subscribed / unsubscribed list their topics; a refusal is an error frame with its code and topics."""
    assert orjson.loads(TopicsFrame("subscribed", ("a",)).encode()) == {"type": "subscribed", "topics": ["a"]}
    assert orjson.loads(TopicsFrame("error", ("b",), "forbidden").encode()) == {"type": "error", "code": "forbidden", "topics": ["b"]}


def test_deliver_batch_and_result_round_trip() -> None:
    """The dispatch link frames decode to what was encoded."""
    batch = DeliverBatch(7, 1234, (Delivery("m", '{"x":1}', 3, ("u", "v")),))
    assert DeliverBatch.decode(batch.encode()) == batch
    assert BatchResult.decode(BatchResult(7, 2).encode()) == BatchResult(7, 2)


def test_deliver_batch_carries_a_topic_as_a_fifth_item_only() -> None:
    """A topic delivery round-trips with its topic; a user delivery keeps the four-item shape."""
    batch = DeliverBatch(1, 2, (Delivery("m", "F", 3, ("u",)), Delivery("t", "T", 3, (), "news")))
    assert orjson.loads(batch.encode())["items"] == [["m", "F", 3, ["u"]], ["t", "T", 3, [], "news"]]
    assert DeliverBatch.decode(batch.encode()) == batch


@pytest.mark.parametrize("items", [[["m", "F", 3]], [["m", "F", 3, ["u"], "news", "x"]], [["m", "F", 3, [], 5]],
                                   [["m", "F", 3, "u"]], [{"m": 1, "F": 2, "t": 3, "u": 4}], "mFtu"])
def test_deliver_batch_decode_refuses_other_shapes(items: object) -> None:
    """Items of another length, a non-list of users, a non-string topic or a non-list item are malformed."""
    with pytest.raises(MalformedRequest):
        DeliverBatch.decode(orjson.dumps({"type": "deliver", "batch": 1, "at": 2, "items": items}))


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

    items = [Delivery(f"m{i}", "x" * size, 0, ("u",)) for i, size in enumerate([100, 100, 500, 100])]
    chunks = chunk_by_bytes(items, 400)
    assert [[d.message_id for d in c] for c in chunks] == [["m0", "m1"], ["m2"], ["m3"]]


def test_dispatch_sizes_batches_by_utf8_bytes() -> None:
    """Frames of multi-byte characters are counted in bytes, so two 150-character emoji frames do not share a 400-byte batch."""
    from services.dispatch.forwarder import chunk_by_bytes

    items = [Delivery(f"m{i}", "\U0001F600" * 150, 0, ("u",)) for i in range(2)]
    assert all(d.encoded_size() > 600 for d in items)
    assert [len(c) for c in chunk_by_bytes(items, 400)] == [1, 1]


def test_dispatch_groups_each_message_per_node_with_only_that_nodes_recipients() -> None:
    """A message for users on two nodes becomes one delivery per node naming the users there; unrouted users and
    expired messages go nowhere."""
    from services.dispatch.forwarder import per_node
    from shared.delivery.stream import StreamEntry
    from shared.model.message import Message

    entries = [StreamEntry("1-0", [Message("m1", ("a", "b", "c"), "F1", 5, 99), Message("m9", ("a",), "F9", 5, 10)]),
               StreamEntry("2-0", [Message("m2", ("b",), "F2", 6, 99)])]
    work = per_node(entries, {"a": ["n1"], "b": ["n1", "n2"]}, now_ms=50)
    assert work == {
        "n1": {"1-0": [Delivery("m1", "F1", 5, ("a", "b"))], "2-0": [Delivery("m2", "F2", 6, ("b",))]},
        "n2": {"1-0": [Delivery("m1", "F1", 5, ("b",))], "2-0": [Delivery("m2", "F2", 6, ("b",))]},
    }


def test_dispatch_sends_a_topic_message_once_to_each_holding_node_and_a_broadcast_to_every_live_node() -> None:
    """A topic message goes to the nodes holding its subscribers (none: nowhere), a broadcast to every live node,
    each once and naming no users; an expired one goes nowhere."""
    from services.dispatch.forwarder import per_node
    from shared.delivery.stream import StreamEntry
    from shared.model.message import BROADCAST, Message

    entries = [StreamEntry("1-0", [Message("t1", (), "T", 5, 99, topic="news"), Message("t2", (), "Q", 5, 99, topic="quiet"),
                                   Message("b1", (), "B", 5, 99, topic=BROADCAST), Message("b0", (), "O", 5, 10, topic=BROADCAST)])]
    work = per_node(entries, {}, 50, {"news": {"n2": 3}}, ["n1", "n2"])
    assert work == {"n1": {"1-0": [Delivery("b1", "B", 5, (), BROADCAST)]},
                    "n2": {"1-0": [Delivery("t1", "T", 5, (), "news"), Delivery("b1", "B", 5, (), BROADCAST)]}}


def test_the_largest_accepted_message_fits_one_batch_and_the_nodes_link_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message at collect's default payload and recipient limits, all quotes (each escaped twice on the link),
    is sized at least as large as it encodes, and alone fits dispatch's batch budget and a node's frame limit."""
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
    encoded = len(DeliverBatch(2**40, 2**45, (item,)).encode())
    assert len(m.frame.encode()) > collect.max_payload_bytes - 200, "the payload is at its limit"
    assert encoded > 2 * collect.max_payload_bytes, "the frame's quotes are escaped again inside the batch"
    assert encoded <= item.encoded_size() + 80  # the batch's envelope around its one item
    assert item.encoded_size() <= dispatch.batch_bytes < push.max_frame_bytes - 1000
