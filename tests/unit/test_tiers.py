"""Priority tiers: the field's validation, its round trips, and the shedding decision (pure logic)."""

from __future__ import annotations

import pytest

from services.collect.intake import Limits, parse_body
from services.collect.shedding import Threshold, retry_after, shed_tiers
from shared.delivery.store import messages_of_document, post_document
from shared.delivery.stream import Backlog
from shared.model.message import Message, message_id, messages_of, post_fields
from shared.model.priority import Priority, post_tier
from shared.wire.errors import InvalidFields, Overloaded
from shared.wire.protocol import DeliverBatch, Delivery

LIMITS = Limits(max_payload_bytes=100, max_batch=3, max_recipients=2, default_ttl_seconds=60)
HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
THRESHOLDS = {LOW: Threshold(100, 2000), NORMAL: Threshold(1000, 10_000)}
NOW = 1_000_000


def backlog(high: tuple[int, int] = (0, 0), normal: tuple[int, int] = (0, 0), low: tuple[int, int] = (0, 0)) -> dict[Priority, Backlog]:
    """Each tier's (entries, age of the oldest in ms) as a sampled backlog."""
    return {tier: Backlog(n, NOW - age if n else None) for tier, (n, age) in ((HIGH, high), (NORMAL, normal), (LOW, low))}


def test_priority_defaults_to_normal_and_a_mixed_post_travels_at_its_most_urgent() -> None:
    """A message without a priority is normal; a post with a high message among low ones is a high post."""
    assert [m.priority for m in parse_body({"user_id": "a", "payload": 1}, LIMITS, 0)] == [NORMAL]
    post = parse_body({"messages": [{"user_id": "a", "payload": 1, "priority": "low"},
                                    {"user_id": "b", "payload": 2, "priority": "high"}]}, LIMITS, 0)
    assert [m.priority for m in post] == [LOW, HIGH]
    assert post_tier(m.priority for m in post) is HIGH


@pytest.mark.parametrize("priority", ["urgent", "HIGH", 1, None, ["high"]])
def test_an_unknown_priority_is_refused(priority: object) -> None:
    """Only "high", "normal" and "low" are priorities."""
    with pytest.raises(InvalidFields, match="priority"):
        parse_body({"user_id": "a", "payload": 1, "priority": priority}, LIMITS, 0)


def test_priority_round_trips_through_the_document_the_field_map_and_the_deliver_batch() -> None:
    """A post's priorities come back from MongoDB and the stream; a node's delivery carries a priority only when not normal."""
    messages = [Message(message_id("p1", i), ("a",), b"F", 1, 9, "shop", priority=p) for i, p in enumerate((HIGH, NORMAL, LOW))]
    assert messages_of_document(post_document(messages)) == messages
    assert "priorities" not in post_document([Message(message_id("p1", 0), ("a",), b"F", 1, 9, "shop")])
    fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in post_fields(messages).items()}
    assert [m.priority for m in messages_of("p1", 1, fields)] == [HIGH, NORMAL, LOW]
    batch = DeliverBatch(1, 2, (Delivery("m", b"F", 3, ("u",), None, HIGH), Delivery("n", b"F", 3, ("u",)),
                                Delivery("t", b"T", 3, (), "news", LOW)))
    assert [d.head() for d in batch.items] == [["m", 1, 3, ["u"], None, "high"], ["n", 1, 3, ["u"]], ["t", 1, 3, [], "news", "low"]]
    assert DeliverBatch.decode(batch.encode()) == batch


def test_nothing_is_shed_under_the_thresholds() -> None:
    """Backlogs under every threshold refuse no tier."""
    assert shed_tiers(backlog(normal=(50, 500), low=(50, 1500)), THRESHOLDS, NOW) == frozenset()


def test_low_is_shed_first_counting_the_backlog_ahead_of_it() -> None:
    """Low is shed once the entries waiting ahead of a new low post (all tiers) pass its threshold, normal is not yet."""
    assert shed_tiers(backlog(high=(40, 10), normal=(40, 10), low=(21, 10)), THRESHOLDS, NOW) == {LOW}
    assert shed_tiers(backlog(normal=(1, 2500)), THRESHOLDS, NOW) == {LOW}  # an old normal entry delays low too


def test_normal_is_shed_past_its_larger_thresholds_and_high_never() -> None:
    """Past normal's thresholds both normal and low are refused; no backlog refuses high."""
    assert shed_tiers(backlog(high=(10**6, 10**6)), THRESHOLDS, NOW) == {NORMAL, LOW}
    assert shed_tiers(backlog(normal=(5, 11_000)), THRESHOLDS, NOW) == {NORMAL, LOW}


def test_a_tier_is_shed_whenever_a_more_urgent_one_is() -> None:
    """Even with thresholds configured upside down, low is refused while normal is."""
    upside_down = {LOW: Threshold(10**6, 10**6), NORMAL: Threshold(10, 10**6)}
    assert shed_tiers(backlog(normal=(11, 0)), upside_down, NOW) == {NORMAL, LOW}


def test_retry_after_is_the_age_of_the_backlog_ahead_in_whole_seconds() -> None:
    """A shed post is told to wait about as long as the oldest entry ahead of it has waited, at least 1 s, at most 60 s."""
    assert retry_after(backlog(normal=(5, 2500), low=(5, 200)), LOW, NOW) == 3
    assert retry_after(backlog(low=(5, 100_000)), NORMAL, NOW) == 1
    assert retry_after(backlog(high=(5, 100_000)), NORMAL, NOW) == 60


def test_overloaded_is_a_429_with_retry_after() -> None:
    """The shedding error answers 429 ``overloaded`` and carries its Retry-After header."""
    error = Overloaded("shed", 3)
    assert (error.status, error.code, error.headers()) == (429, "overloaded", {"Retry-After": "3"})
