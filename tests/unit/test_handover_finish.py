"""Which of a post's deliveries the reconciler hands over again when it finishes a hand-over an intent left behind."""

from __future__ import annotations

from shared.delivery.handover import unrecorded
from shared.model.message import Message

MID = "01a250a6a27216e96aed0001"


def message(users: tuple[str, ...] = ("ann", "bob", "cy"), topic: str | None = None) -> Message:
    return Message(MID, users, b"{}", 1, 2, topic=topic, due_ms=5)


def test_a_message_no_row_names_is_handed_over_whole() -> None:
    """With no lifecycle row, the message goes again as it is."""
    m = message()
    assert unrecorded(m, ()) is m


def test_only_the_recipients_no_row_names_are_handed_over_again() -> None:
    """Recipients with a row (fired, delivered, acked, cancelled) are left out; the others keep the message and its due time."""
    left = unrecorded(message(), {"bob"})
    assert left is not None and left.users == ("ann", "cy") and left.due_ms == 5 and left.id == MID


def test_a_message_every_recipient_of_which_has_a_row_is_not_handed_over() -> None:
    """A message fired to all (every recipient's ``due`` row) comes back to nobody."""
    assert unrecorded(message(), {"ann", "bob", "cy"}) is None


def test_a_topic_message_with_any_row_is_not_handed_over_and_one_without_is() -> None:
    """A topic message's rows name no user: any of them (a node's count, its cancellation) means it went."""
    topical = message(users=(), topic="news")
    assert unrecorded(topical, {""}) is None
    assert unrecorded(topical, ()) is topical
