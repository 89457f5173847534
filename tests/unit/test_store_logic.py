"""The pure parts of the durable record: post documents, lifecycle coalescing and the status derived from it."""

from __future__ import annotations

import datetime as dt

import bson
import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError, WriteError

from shared.delivery.store import (
    MessageStore,
    NodeCount,
    cancel_document,
    derive,
    derive_counts,
    event_documents,
    messages_of_document,
    outcomes,
    post_bytes,
    post_document,
    refused_by_document,
    rows_of,
)
from shared.model.message import BROADCAST, Message, message_id, messages_of, post_fields, submitted_posts
from shared.wire.errors import InvalidFields

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def post(n: int, users: tuple[str, ...] = ("a", "b")) -> list[Message]:
    return [Message(message_id("p1", i), users, f'{{"n":{i}}}'.encode(), 1000, 9000 + i, "shop") for i in range(n)]


def test_a_post_round_trips_through_its_document_and_its_field_map() -> None:
    """A post's messages come back unchanged from its MongoDB document and from its Redis/stream field map."""
    messages = post(3)
    assert messages_of_document(post_document(messages)) == messages
    fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in post_fields(messages).items()}
    assert messages_of("p1", 1000, fields) == [Message(m.id, m.users, m.frame, m.ts, m.expires_ms) for m in messages]


@pytest.mark.parametrize("messages", [
    [Message(message_id("p1", 0), ("a",), b"F", 1, 5, "")],
    [Message(message_id("p1", i), ("a", "b.c", "d@e"), '{"p":"é😀"}'.encode() * i, 1, 5 + i, "shöp") for i in range(1200)],
    [Message(message_id("01a212271f619d56643f", 0), tuple(f"u{i}" for i in range(1000)), b"x" * 70_000, 2**40, 2**41, "s" * 300)],
], ids=["one", "1200-messages", "1000-recipients"])
def test_post_bytes_bounds_the_stored_document_closely(messages: list[Message]) -> None:
    """The size collect checks against the store's limit is never below the BSON document's, and a few bytes a message above."""
    actual = len(bson.encode(post_document(messages)))
    assert actual <= post_bytes(messages) <= actual + 300 + 12 * len(messages)


def test_two_submissions_of_one_post_in_a_batch_stay_two_posts() -> None:
    """An Idempotency-Key retry sharing a group commit with its first post is its own post, not merged into one."""
    a, b = post(2), [Message(message_id("p2", 0), ("c",), b"G", 1, 5, "shop")]
    assert submitted_posts(a + b + a) == [a, b, a]


def test_only_refused_posts_fail_and_only_new_posts_are_handed_over() -> None:
    """Of one insert's posts, a duplicate is not new but not refused, a refused one fails its own messages only."""
    posts = [post(2), [Message(message_id("p2", 0), ("c",), b"G", 1, 5, "shop")], post(1)]
    fresh, refusals = outcomes(posts, [{"index": 1, "code": 11000, "errmsg": "E11000"},
                                       {"index": 2, "code": 10334, "errmsg": "object to insert too large"}])
    assert fresh == posts[0]
    assert refusals[:3] == [None, None, None] and isinstance(refusals[3], InvalidFields)
    assert "too large" in refusals[3].message


@pytest.mark.parametrize(("error", "refused"), [
    (BulkWriteError({"writeErrors": [{"index": 0, "code": 2, "errmsg": "invalid key"}], "writeConcernErrors": []}), True),
    (BulkWriteError({"writeErrors": [{"index": 0, "code": 10334}, {"index": 3, "code": 11000}], "writeConcernErrors": []}), True),
    (BulkWriteError({"writeErrors": [{"index": 0, "code": 2}], "writeConcernErrors": [{"code": 64}]}), False),
    (BulkWriteError({"writeErrors": [{"index": 0, "code": 2}, {"index": 1, "code": 91}], "writeConcernErrors": []}), False),
    (BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}), False),
    (WriteError("invalid key", 2), True),
    (WriteError("not primary", 10107), False),
    (OperationFailure("internal", 1), False),
    (AutoReconnect("connection reset"), False),
    (NetworkTimeout("timed out"), False),
    (ServerSelectionTimeoutError("no servers"), False),
], ids=["bad-key", "too-large-and-duplicate", "write-concern", "shutdown-among-them", "only-write-concern",
        "one-bad-document", "not-primary", "command-failed", "network", "timeout", "no-server"])
def test_only_documents_the_server_refused_are_the_requests_fault(error: Exception, refused: bool) -> None:
    """Refused documents do not count against MongoDB's breaker; network, timeout and server-state errors do."""
    assert refused_by_document(error) is refused


def test_a_post_document_stores_each_payload_once_whatever_the_recipients() -> None:
    """A message to 1,000 users keeps one frame in the document, and its expiry is the post's latest."""
    doc = post_document([Message(message_id("p1", 0), tuple(f"u{i}" for i in range(1000)), b"F", 1, 5, "shop")])
    assert doc["frames"] == ["F"] and doc["users"][0].count(",") == 999


def test_lifecycle_rows_group_by_post_and_flag_closing_stages() -> None:
    """Marks for two posts become two documents, their rows stored as JSON text; only the one holding an ack or expiry
    says closed."""
    stages = {(message_id("p1", 0), "a"): {"dispatched": 1, "delivered": 2, "acked": 3},
              (message_id("p1", 1), "a"): {"delivered": 2},
              (message_id("p2", 0), "b"): {"delivered": 4}}
    docs = {d["p"]: d for d in event_documents(stages, NOW)}
    assert isinstance(docs["p1"]["rows"], str)
    assert rows_of(docs["p1"]) == [{"i": 0, "u": "a", "s": {"dispatched": 1, "delivered": 2, "acked": 3}},
                                   {"i": 1, "u": "a", "s": {"delivered": 2}}]
    assert (docs["p1"]["closed"], docs["p2"]["closed"]) == (True, False)


def test_status_takes_each_stage_first_time_and_the_highest_state_per_recipient() -> None:
    """Rows from several windows merge: the earliest time per stage, acked beats expired, rows of other messages ignored."""
    doc = post_document(post(2))
    events = [{"rows": [{"i": 0, "u": "a", "s": {"delivered": 20}}, {"i": 1, "u": "a", "s": {"acked": 99}}]},
              {"rows": [{"i": 0, "u": "a", "s": {"delivered": 15, "acked": 30}}, {"i": 0, "u": "b", "s": {"expired": 40}}]},
              {"rows": [{"i": 0, "u": "mallory", "s": {"acked": 5}}]}]
    assert derive(doc, 0, events) == [
        {"user_id": "a", "state": "acked", "accepted_at": 1000, "delivered_at": 15, "acked_at": 30},
        {"user_id": "b", "state": "expired", "accepted_at": 1000, "expired_at": 40},
    ]


class RecordingStore:
    """Stands in for MongoDB in this unit test: keeps what one flush would insert."""

    def __init__(self) -> None:
        self.flushed: list[dict] = []
        self.counted: list[dict] = []

    async def record(self, stages: dict, counts: dict) -> None:
        self.flushed.append(stages)
        self.counted.append(counts)


async def test_lifecycle_marks_coalesce_per_delivery_keeping_the_first_time() -> None:
    """Three stages of one delivery marked in one window flush as one entry; a repeated stage keeps its first time."""
    from shared.delivery.lifecycle import LifecycleWriter

    store = RecordingStore()
    writer = LifecycleWriter(store)  # type: ignore[arg-type]
    pair = (message_id("p1", 0), "a")
    writer.mark("dispatched", [pair], 1)
    writer.mark("delivered", [pair], 2)
    writer.mark("delivered", [pair], 5)
    writer.mark("acked", [pair], 3)
    await writer.flush()
    await writer.flush()
    assert store.flushed == [{pair: {"dispatched": 1, "delivered": 2, "acked": 3}}, {}]


def test_topic_messages_round_trip_and_only_posts_with_one_store_topics() -> None:
    """Topic and broadcast messages keep their topic through the document and the field map; a post of user
    messages only gets no ``topics`` list."""
    messages = [Message(message_id("p2", 0), (), b"T", 1, 5, "shop", "news"), Message(message_id("p2", 1), ("a",), b"U", 1, 5, "shop"),
                Message(message_id("p2", 2), (), b"B", 1, 5, "shop", BROADCAST)]
    assert messages_of_document(post_document(messages)) == messages
    fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in post_fields(messages).items()}
    assert [m.topic for m in messages_of("p2", 1, fields)] == ["news", None, BROADCAST]
    assert "topics" not in post_document(post(2))


async def test_topic_counts_add_up_per_node_and_derive_a_status_of_counts() -> None:
    """A node's counts of one topic message merge within a window; the status sums sockets over windows, counts
    distinct nodes and keeps each stage's first time, ignoring user rows and other messages."""
    from shared.delivery.lifecycle import LifecycleWriter

    store = RecordingStore()
    writer = LifecycleWriter(store)  # type: ignore[arg-type]
    topic = message_id("p3", 1)
    writer.count(topic, "n1", 2, {"dispatched": 10, "delivered": 12})
    writer.count(topic, "n1", 0, {"dispatched": 11})
    writer.count(topic, "n2", 3, {"dispatched": 10, "delivered": 14})
    await writer.flush()
    assert store.counted == [{(topic, "n1"): NodeCount(2, {"dispatched": 10, "delivered": 12}),
                              (topic, "n2"): NodeCount(3, {"dispatched": 10, "delivered": 14})}]
    doc = post_document([Message(message_id("p3", 0), ("a",), b"U", 5, 9, "shop"), Message(topic, (), b"T", 5, 9, "shop", "news")])
    events = event_documents({(message_id("p3", 0), "a"): {"delivered": 7}}, NOW, store.counted[0])
    events += event_documents({}, NOW, {(topic, "n2"): NodeCount(1, {"dispatched": 9})})
    assert derive_counts(doc, 1, events) == {"topic": "news", "stages": {"accepted": 5, "dispatched": 9, "delivered": 12},
                                             "nodes": 2, "sockets": 6}
    assert [r["user_id"] for r in derive(doc, 0, events)] == ["a"]


def test_a_scheduled_message_shows_its_due_time_then_its_cancellation() -> None:
    """A scheduled message's document keeps its due time; its status is scheduled until a cancellation row closes it,
    per recipient for a user message and as a stage for a broadcast."""
    to_users = Message(message_id("p3", 0), ("a", "b"), b"F", 1000, 90_000, "shop", due_ms=5000)
    broadcast = Message(message_id("p3", 1), (), b"G", 1000, 90_000, "shop", BROADCAST, due_ms=6000)
    now = Message(message_id("p3", 2), ("a",), b"H", 1000, 90_000, "shop")
    doc = post_document([to_users, broadcast, now])
    assert messages_of_document(doc) == [to_users, broadcast, now]
    assert [r["state"] for r in derive(doc, 0, [])] == ["scheduled", "scheduled"]
    assert derive(doc, 0, [])[0]["scheduled_at"] == 5000 and derive(doc, 2, [])[0]["state"] == "accepted"
    at = int(NOW.timestamp() * 1000)
    events = [cancel_document(to_users, at, NOW), cancel_document(broadcast, at, NOW)]
    assert all(e["closed"] for e in events)
    assert [r["state"] for r in derive(doc, 0, events)] == ["cancelled", "cancelled"]
    counts = derive_counts(doc, 1, events)
    assert counts["stages"] == {"accepted": 1000, "scheduled": 6000, "cancelled": at}
    assert counts["nodes"] == counts["sockets"] == 0


def test_a_cancel_recorded_twice_shows_once_at_its_first_time() -> None:
    """collect's record and dispatch's reconciler finishing the same cancel (a later write, under the noted time or,
    for an older record, a later one) leave one ``cancelled`` state at the first time, per recipient and for a topic
    message alike."""
    to_users = Message(message_id("p4", 0), ("a", "b"), b"F", 1000, 90_000, "shop", due_ms=5000)
    topic = Message(message_id("p4", 1), (), b"G", 1000, 90_000, "shop", "news", due_ms=6000)
    doc = post_document([to_users, topic])
    later = NOW + dt.timedelta(seconds=20)
    for message, index in ((to_users, 0), (topic, 1)):
        events = [cancel_document(message, 3000, NOW), cancel_document(message, 3000, later),
                  cancel_document(message, 4000, later)]
        for order in (events, events[::-1]):
            if index == 0:
                assert [(r["state"], r["cancelled_at"]) for r in derive(doc, 0, order)] == [("cancelled", 3000)] * 2
            else:
                assert derive_counts(doc, 1, order)["stages"]["cancelled"] == 3000


async def test_a_post_is_stored_journaled_with_the_urls_other_write_concern_kept() -> None:
    """The posts collection asks for j: true whatever the URL says, and keeps the URL's w (majority on a replica set);
    lifecycle events keep the URL's write concern as it is."""
    majority, plain = MessageStore("mongodb://127.0.0.1:1/?w=majority&wtimeoutMS=5000"), MessageStore("mongodb://127.0.0.1:1/")
    try:
        assert majority.posts.write_concern.document == {"w": "majority", "wtimeout": 5000, "j": True}
        assert majority.events.write_concern.document == {"w": "majority", "wtimeout": 5000}
        assert plain.posts.write_concern.document == {"j": True}
    finally:
        await majority.close()
        await plain.close()
