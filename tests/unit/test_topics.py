"""Topic names, patterns, grants, namespaces and recovery from a position (pure logic)."""

from __future__ import annotations

import re

import pytest

from shared.model.topics import (
    Grants,
    Logged,
    Namespaces,
    Position,
    TopicPolicy,
    parse_namespaces,
    recover,
    valid_pattern,
    valid_topic,
)


def test_topic_names_are_short_and_plain() -> None:
    """Letters, digits and _ . : @ - up to 128 characters; nothing else, not empty, not a pattern."""
    assert valid_topic("news") and valid_topic("room:42") and valid_topic("a" * 128)
    assert not any(valid_topic(t) for t in ("", "a" * 129, "room:*", "has space", "ü", 7, None))


def test_a_pattern_is_a_name_or_a_prefix_ending_in_colon_star() -> None:
    """'room:*' and 'news' are patterns; '*', 'room*' and 'room:*:x' are not."""
    assert valid_pattern("room:*") and valid_pattern("news")
    assert not any(valid_pattern(p) for p in ("*", "room*", "room:*:x", ":*x", 3))


def test_a_prefix_grants_every_topic_under_it_but_not_the_prefix_itself() -> None:
    """'room:*' grants room:42 and room:lobby, not room or roomy; a name grants only itself."""
    grants = Grants.of(["room:*", "news"])
    assert grants.allows("room:42") and grants.allows("room:lobby") and grants.allows("news")
    assert not any(grants.allows(t) for t in ("room", "room:", "roomy", "news:x", "sports"))


def test_grants_combine_and_ignore_invalid_patterns() -> None:
    """A token's grants or'ed with the node's public ones allow either; an invalid pattern allows nothing."""
    grants = Grants.of(["vip:*"]) | Grants.of(["lobby", "bad pattern", "*"])
    assert grants.allows("vip:1") and grants.allows("lobby")
    assert not grants.allows("bad pattern") and not grants.allows("anything")


def logged(*offsets: int) -> list[Logged]:
    return [Logged(o, f"m{o}", 0, b"{}") for o in offsets]


def test_recovery_gives_every_message_after_the_position_in_order_when_history_reaches_back() -> None:
    """From offset 3 of epoch e with the topic at 6, the history's 4, 5 and 6 are what was missed; at 6, nothing."""
    assert [m.offset for m in recover(Position(3, "e"), Position(6, "e"), logged(2, 3, 4, 5, 6)) or []] == [4, 5, 6]
    assert recover(Position(6, "e"), Position(6, "e"), logged(5, 6)) == []


@pytest.mark.parametrize(("since", "history"), [
    (Position(3, "old"), logged(4, 5, 6)),  # another epoch: offsets do not compare
    (Position(7, "e"), logged(4, 5, 6)),  # a position from the future
    (Position(2, "e"), logged(4, 5, 6)),  # history no longer reaches back to 3
    (Position(3, "e"), logged(4, 6)),  # a hole (an entry dropped by age)
])
def test_recovery_is_refused_whenever_it_could_not_be_whole(since: Position, history: list[Logged]) -> None:
    """Another epoch, a future position, or history that misses any message after the position: no recovery."""
    assert recover(since, Position(6, "e"), history) is None


def test_namespaces_override_the_defaults_of_their_topics_only() -> None:
    """``chat:1`` takes chat's overrides over the defaults; a plain name and another namespace take the defaults."""
    spaces = Namespaces(TopicPolicy(100, 300), parse_namespaces('{"chat": {"history_size": 5, "join_leave": true}}'))
    assert spaces.policy("chat:1") == TopicPolicy(5, 300, True)
    assert spaces.policy("chat") == spaces.policy("room:chat") == TopicPolicy(100, 300, False)


@pytest.mark.parametrize(("raw", "says"), [
    ("[1]", "JSON object"), ("{", "not JSON"), ('{"a:b": {}}', "not a namespace"),
    ('{"chat": {"size": 1}}', "unknown setting 'size'"), ('{"chat": {"history_size": -1}}', ">= 0"),
    ('{"chat": {"history_seconds": 0}}', ">= 1"), ('{"chat": {"join_leave": 1}}', "true or false"),
    ('{"chat": 5}', "expected an object"),
])
def test_a_bad_namespaces_setting_is_refused_naming_what_is_wrong(raw: str, says: str) -> None:
    """Every way TOPIC_NAMESPACES can be wrong is a ValueError that says how."""
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_namespaces(raw)
