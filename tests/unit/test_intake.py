"""collect's validation of posted bodies, its idempotent ids and which posts go out while stored (pure logic)."""

from __future__ import annotations

import orjson
import pytest

from services.collect.acceptance import goes_early
from services.collect.intake import Limits, parse_body
from shared.model.message import BROADCAST
from shared.wire.errors import InvalidFields, PayloadTooLarge

LIMITS = Limits(max_payload_bytes=100, max_batch=3, max_recipients=2, default_ttl_seconds=60, max_deliveries=5)


def test_single_multi_and_batch_bodies_become_messages() -> None:
    """Each accepted shape yields one message per posted message with its recipients and TTL."""
    assert [m.users for m in parse_body({"user_id": "a", "payload": 1}, LIMITS, 0)] == [("a",)]
    assert [m.users for m in parse_body({"user_ids": ["a", "b"], "payload": 1}, LIMITS, 0)] == [("a", "b")]
    batch = parse_body({"messages": [{"user_id": "a", "payload": 1, "ttl_seconds": 5}, {"user_id": "b", "payload": 2}]}, LIMITS, 0)
    assert [(m.users, m.expires_ms) for m in batch] == [(("a",), 5000), (("b",), 60000)]


def test_a_message_frame_is_encoded_once_with_the_payload_as_posted() -> None:
    """The frame a recipient receives carries the id, the payload unchanged and the acceptance time."""
    (message,) = parse_body({"user_ids": ["a", "b"], "payload": {"k": ["é", 1]}}, LIMITS, 42, "shop")
    assert orjson.loads(message.frame) == {"type": "message", "id": message.id, "payload": {"k": ["é", 1]}, "ts": 42}
    assert message.sender == "shop"


def test_payload_limit_counts_utf8_bytes_not_characters() -> None:
    """A payload of 40 three-byte characters is over a 100-byte limit although it has only 40 characters."""
    with pytest.raises(PayloadTooLarge):
        parse_body({"user_id": "a", "payload": "€" * 40}, LIMITS, 0)


@pytest.mark.parametrize(("body", "error"), [
    ({"user_id": "a", "payload": "x" * 200}, PayloadTooLarge),
    ({"messages": [{"user_id": "a", "payload": 1}] * 4}, PayloadTooLarge),
    ({"user_ids": ["a", "b", "c"], "payload": 1}, PayloadTooLarge),
    ({"user_ids": ["a", "a"], "payload": 1}, InvalidFields),
    ({"user_id": "a"}, InvalidFields),
    ({"user_id": "a", "payload": 1, "ttl_seconds": 0}, InvalidFields),
    ({"user_id": "a", "payload": 1, "ttl_seconds": True}, InvalidFields),
    ({"user_id": "a", "payload": 1, "ttl_seconds": 31 * 24 * 3600}, InvalidFields),
    ({"messages": []}, InvalidFields),
    ({"messages": [{"user_ids": ["a", "b"], "payload": 1}] * 3}, PayloadTooLarge),
    ({"topic": "news", "user_id": "a", "payload": 1}, InvalidFields),
    ({"topic": "news", "broadcast": True, "payload": 1}, InvalidFields),
    ({"topic": "room:*", "payload": 1}, InvalidFields),
    ({"topic": "", "payload": 1}, InvalidFields),
    ({"broadcast": 1, "payload": 1}, InvalidFields),
    ({"topic": "news"}, InvalidFields),
])
def test_bodies_breaking_limits_or_fields_are_refused(body: dict, error: type) -> None:
    """Over-limit posts are 413s and bad fields 422s, for the whole post."""
    with pytest.raises(error):
        parse_body(body, LIMITS, 0)


def test_idempotency_key_gives_the_same_ids_per_sender_only() -> None:
    """The same key from the same sender names the same messages; another sender or key names others."""
    body = {"messages": [{"user_id": "a", "payload": 1}, {"user_id": "b", "payload": 2}]}
    first = [m.id for m in parse_body(body, LIMITS, 0, "shop", "k1")]
    assert first == [m.id for m in parse_body(body, LIMITS, 999, "shop", "k1")]
    assert first != [m.id for m in parse_body(body, LIMITS, 0, "billing", "k1")]
    assert first != [m.id for m in parse_body(body, LIMITS, 0, "shop", "k2")]
    assert len(set(first)) == 2


@pytest.mark.parametrize("key", [None, "k1"])
def test_ids_of_one_post_sort_in_posting_order(key: str | None) -> None:
    """A post's ids sort in the order its messages were given, so a user's inbox replays them in that order."""
    body = {"messages": [{"user_id": "a", "payload": n} for n in range(3)]}
    ids = [m.id for m in parse_body(body, LIMITS, 0, "shop", key)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_a_post_larger_than_one_stored_document_is_refused_before_storing() -> None:
    """Two 9 MB payloads fit the payload limit but not MongoDB's 16 MB per document: a 413 naming the size."""
    roomy = Limits(max_payload_bytes=10 * 2**20, max_batch=3, max_recipients=2, default_ttl_seconds=60)
    body = {"messages": [{"user_id": "a", "payload": "x" * (9 * 2**20)}] * 2}
    with pytest.raises(PayloadTooLarge, match=r"1887\d+-byte document; the store's limit is 16777216"):
        parse_body(body, roomy, 0)
    assert len(parse_body({"messages": body["messages"][:1]}, roomy, 0)) == 1


@pytest.mark.parametrize("users", [{"user_id": None}, {"user_ids": [None]}, {"user_ids": [None, {}]}, {"user_ids": [{}, []]}])
def test_null_or_object_user_ids_are_invalid_fields(users: dict) -> None:
    """A null user id (once taken for 'no bad id', then a 500) or an unhashable one is a 422, found by fuzzing."""
    with pytest.raises(InvalidFields):
        parse_body({**users, "payload": 1}, LIMITS, 0)


def test_topic_and_broadcast_messages_carry_their_topic_in_the_frame() -> None:
    """A topic message names its topic and a broadcast says so, in frame and message, with no recipients, next to user messages."""
    body = {"messages": [{"topic": "room:42", "payload": 1}, {"broadcast": True, "payload": 2}, {"user_id": "a", "payload": 3}]}
    topic, everyone, user = parse_body(body, LIMITS, 7)
    assert (topic.topic, topic.users, everyone.topic, everyone.users, user.topic) == ("room:42", (), BROADCAST, (), None)
    assert orjson.loads(topic.frame) == {"type": "message", "id": topic.id, "topic": "room:42", "payload": 1, "ts": 7}
    assert orjson.loads(everyone.frame) == {"type": "message", "id": everyone.id, "broadcast": True, "payload": 2, "ts": 7}
    assert "topic" not in orjson.loads(user.frame) and "broadcast" not in orjson.loads(user.frame)


NOW = 1_700_000_000_000


@pytest.mark.parametrize("item", [
    {"deliver_at": NOW + 5000, "delay_seconds": 5},
    {"deliver_at": "soon"},
    {"deliver_at": float(NOW + 5000)},
    {"deliver_at": True},
    {"delay_seconds": -1},
    {"delay_seconds": 1.5},
    {"deliver_at": (NOW + 5000) // 1000},  # seconds, not ms: far in the past
    {"deliver_at": NOW - 120_000},
    {"delay_seconds": 60},  # at the message's expiry (ttl 60 s)
    {"delay_seconds": 31 * 24 * 3600, "ttl_seconds": 30 * 24 * 3600},
    {"deliver_at": NOW + 31 * 24 * 3600 * 1000, "ttl_seconds": 30 * 24 * 3600},
])
def test_bad_due_times_are_refused(item: dict) -> None:
    """Both fields, a non-integer, a time in the past or beyond the TTL or 30 days out are 422s, for the whole post."""
    body = {"messages": [{"user_id": "a", "payload": 1}, {"topic": "news", "payload": 2, **item}]}
    with pytest.raises(InvalidFields):
        parse_body(body, LIMITS, NOW)


def test_due_times_from_deliver_at_or_delay_seconds() -> None:
    """deliver_at and delay_seconds set the due time; no field, a zero delay or a slightly past deliver_at mean at once."""
    items = [{"user_id": "a", "payload": 0, "deliver_at": NOW + 1500}, {"broadcast": True, "payload": 1, "delay_seconds": 30},
             {"user_id": "a", "payload": 2}]
    assert [m.due_ms for m in parse_body({"messages": items}, LIMITS, NOW)] == [NOW + 1500, NOW + 30_000, 0]
    items = [{"user_id": "a", "payload": 3, "delay_seconds": 0}, {"user_id": "a", "payload": 4, "deliver_at": NOW - 2000}]
    assert [m.due_ms for m in parse_body({"messages": items}, LIMITS, NOW)] == [0, 0]


def test_only_posts_without_a_key_and_with_every_message_due_now_go_out_while_stored() -> None:
    """A post goes early only if it has no Idempotency-Key and none of its messages is scheduled."""
    now = 1_000_000
    plain = parse_body({"user_id": "a", "payload": 1}, LIMITS, now)
    keyed = parse_body({"user_id": "a", "payload": 2}, LIMITS, now, "shop", "k-1")
    mixed = parse_body({"messages": [{"user_id": "a", "payload": 3}, {"user_id": "b", "payload": 4, "delay_seconds": 5}]},
                       LIMITS, now)
    assert [goes_early(plain, False, now), goes_early(keyed, True, now), goes_early(mixed, False, now)] == [True, False, False]
    assert goes_early(mixed, False, now + 5000)  # the delay has passed: due now
