"""What an API key's scope lets it reach: user-id prefixes, topic namespaces, no broadcast when limited (pure logic)."""

from __future__ import annotations

import pytest

from services.collect.scopes import EVERYTHING, Scope, parse_scopes
from shared.model.message import BROADCAST, Message
from shared.wire.errors import NotFound

SHOP = Scope(users=("shop-", "vip-"), topics=("shop", "news"))


def message(users: tuple[str, ...] = (), topic: str | None = None) -> Message:
    return Message("p0", users, b"{}", 0, 1, "shop", topic)


def test_a_scope_reaches_its_prefixes_and_namespaces_only() -> None:
    """Users by prefix; a namespace covers the topic of that name and every ``ns:...`` topic, not a longer name."""
    assert SHOP.allows_user("shop-1") and SHOP.allows_user("vip-7") and not SHOP.allows_user("bill-1")
    assert SHOP.allows_topic("shop") and SHOP.allows_topic("shop:sale") and SHOP.allows_topic("news:eu")
    assert not SHOP.allows_topic("shopping") and not SHOP.allows_topic("billing:x")


def test_a_limited_key_cannot_broadcast_and_an_unlimited_one_can() -> None:
    """A broadcast reaches every user, so any limit forbids it; a key without an entry reaches everything."""
    assert not SHOP.allows_topic(BROADCAST) and not Scope(users=("a-",)).allows_topic(BROADCAST)
    assert EVERYTHING.allows_topic(BROADCAST) and EVERYTHING.allows_user("anyone") and EVERYTHING.allows_topic("any:thing")


def test_a_post_with_one_recipient_outside_the_scope_is_404_naming_it() -> None:
    """All or nothing: one outside recipient or topic refuses the whole post with 404."""
    SHOP.check_messages([message(("shop-1", "vip-2")), message(topic="news")])
    with pytest.raises(NotFound, match="bill-9"):
        SHOP.check_messages([message(("shop-1",)), message(("shop-2", "bill-9"))])
    with pytest.raises(NotFound, match="billing:x"):
        SHOP.check_messages([message(topic="billing:x")])
    with pytest.raises(NotFound, match="broadcast"):
        SHOP.check_messages([message(topic=BROADCAST)])


def test_scopes_parse_from_json_and_refuse_what_they_cannot_mean() -> None:
    """The setting is JSON per sender; absent lists mean everything, ``[]`` nothing; bad shapes are refused by name."""
    scopes = parse_scopes('{"shop": {"users": ["shop-"], "topics": []}, "ops": {}}')
    assert scopes == {"shop": Scope(("shop-",), ()), "ops": Scope()}
    assert not scopes["shop"].allows_topic("shop") and parse_scopes("") == {}
    for raw, reason in [("[1]", "JSON object"), ("{", "not JSON"), ('{"a": {"user": []}}', "'users' and 'topics'"),
                        ('{"a": {"users": "shop-"}}', "list of non-empty strings"), ('{"a": {"users": [""]}}', "non-empty"),
                        ('{"a": {"topics": ["shop:x"]}}', "not namespaces")]:
        with pytest.raises(ValueError, match=reason):
            parse_scopes(raw)
