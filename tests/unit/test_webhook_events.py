"""Webhook events from recorded facts: stable ids for the same fact, each type's data, and the expiry's last state."""

from __future__ import annotations

import orjson

from shared.model.webhook_events import Fact, PostFacts, event_body, event_data, last_state

POST = PostFacts("demo", 1_700_000_000_000, (0, 1_700_000_100_000), ('{"type":"message","id":"a","payload":[1],"ts":1}',))


def test_the_same_delivery_recorded_twice_is_one_event_id() -> None:
    """A delivery's stage keeps its id whatever time or node recorded it; another stage or user is another id."""
    first, again = Fact("delivered", "p0000", "u1", 1, "n1"), Fact("delivered", "p0000", "u1", 99, "n2")
    assert first.event_id == again.event_id
    assert first.event_id != Fact("acked", "p0000", "u1", 1).event_id != Fact("delivered", "p0000", "u2", 1).event_id
    assert Fact("offline", "", "u1", 5).event_id != Fact("offline", "", "u1", 6).event_id  # presence: one per change


def test_each_event_type_carries_the_data_the_contract_names() -> None:
    """delivered names the node, acked its time, expired its acceptance, expiry and last state; presence the user."""
    at = 1_700_000_001_000
    assert event_data(Fact("delivered", "m", "u", at, "n1"), POST, "") == {
        "message_id": "m", "user_id": "u", "node": "n1", "delivered_at": "2023-11-14T22:13:21.000Z"}
    assert set(event_data(Fact("acked", "m", "u", at), POST, "")) == {"message_id", "user_id", "acked_at"}
    assert event_data(Fact("expired", "m", "u", at), POST, "delivered") == {
        "message_id": "m", "user_id": "u", "accepted_at": "2023-11-14T22:13:20.000Z", "expired_at": "2023-11-14T22:13:21.000Z",
        "last_state": "delivered"}
    assert event_data(Fact("cancelled", "m", "", at), POST, "") == {"message_id": "m"}
    assert event_data(Fact("online", "", "u", at), None, "") == {"user_id": "u", "at": "2023-11-14T22:13:21.000Z"}
    body = orjson.loads(event_body(Fact("online", "", "u", at), {"user_id": "u"}))
    assert body == {"type": "user.online", "timestamp": "2023-11-14T22:13:21.000Z", "data": {"user_id": "u"}}


def test_an_expired_deliverys_last_state() -> None:
    """delivered once written to a socket; else scheduled for a scheduled message; else accepted; payloads from frames."""
    assert last_state(POST.scheduled(1), delivered=True) == "delivered"
    assert last_state(POST.scheduled(1), delivered=False) == "scheduled"
    assert last_state(POST.scheduled(0), delivered=False) == "accepted"
    assert POST.payload(0) == [1]
