"""Topic names, patterns and grants (pure logic)."""

from __future__ import annotations

from shared.model.topics import Grants, valid_pattern, valid_topic


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
