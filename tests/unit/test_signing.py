"""The proofs of the internal key: node cards, dispatch's link request and the node's answer."""

from __future__ import annotations

import dataclasses

import pytest

from shared.cluster.routes import NodeCard
from shared.wire.errors import RateLimited, Unauthorized
from shared.wire.signing import CARD, LINK, NODE, LinkGuard, LinkRequest, Nonces, proof, proven

KEY = "k" * 32
NOW = 1_700_000_000_000


def test_a_proof_is_bound_to_its_key_purpose_and_parts() -> None:
    """Another key, another purpose or other parts (even split differently) give another proof."""
    p = proof(KEY, LINK, "n1", 5, "abc")
    assert proven(KEY, p, LINK, "n1", 5, "abc")
    assert not proven("other", p, LINK, "n1", 5, "abc")
    assert not proven(KEY, p, NODE, "n1", 5, "abc")
    assert not proven(KEY, p, LINK, "n1", 5, "abd")
    assert proof(KEY, CARD, "ab", "c") != proof(KEY, CARD, "a", "bc")
    assert not proven(KEY, "ключ", LINK, "n1", 5, "abc")


def test_a_sealed_card_verifies_and_any_changed_field_breaks_it() -> None:
    """A card survives encode/decode; changing any field, or the key, makes it fail."""
    card = NodeCard("n1", "ws://h:1/internal", "ws://h:1/ws", 3, 2, NOW).sealed(KEY)
    assert NodeCard.decode(card.encode()).genuine(KEY)
    assert not card.genuine("other")
    assert not NodeCard("n1", "ws://h:1/internal", "ws://h:1/ws").genuine(KEY)
    changes = {"id": "n2", "link_url": "ws://evil/internal", "public_url": "ws://evil/ws", "connections": 4,
               "users": 3, "updated_ms": NOW + 1}
    for field, value in changes.items():
        assert not dataclasses.replace(card, **{field: value}).genuine(KEY), field
    assert not dataclasses.replace(card, sig=12).genuine(KEY)  # type: ignore[arg-type]


def request_headers(key: str = KEY, node: str = "n1", at: int = NOW, method: str = "GET", path: str = "/internal") -> dict[str, str]:
    return LinkRequest.make(key, node, at, method, path).headers()


def admit(guard: LinkGuard, headers: dict[str, str], now: int, method: str = "GET", path: str = "/internal",
          purpose: str = "link") -> LinkRequest:
    return guard.admit(headers, method, path, purpose, now)


def test_the_guard_admits_a_good_request_once_and_the_answer_proves_the_node() -> None:
    """A signed request for this node, on time, is admitted; its replay is not; the answer verifies only under the key."""
    guard = LinkGuard(KEY, "n1")
    headers = request_headers()
    request = admit(guard, headers, NOW + 29_000)
    assert KEY not in "".join(headers.values())
    sent = LinkRequest.from_headers(headers, "GET", "/internal")
    assert sent.answered(KEY, request.answer(KEY))
    assert not sent.answered(KEY, LinkRequest.make(KEY, "n1", NOW, "GET", "/internal").answer(KEY))  # another nonce
    assert not sent.answered(KEY, sent.answer("other"))
    assert not sent.answered(KEY, "")
    with pytest.raises(Unauthorized, match="already used"):
        admit(guard, headers, NOW)


@pytest.mark.parametrize(("headers", "reason"), [
    (request_headers(key="other"), "bad link signature"),
    ({**request_headers(), "X-Link-Time": str(NOW + 1)}, "bad link signature"),
    (request_headers(node="n2"), "another node"),
    (request_headers(at=NOW - 31_000), "too old"),
    (request_headers(at=NOW + 31_000), "too old"),
    ({k: v for k, v in request_headers().items() if k != "X-Link-Nonce"}, "missing"),
    ({"Authorization": f"Bearer {KEY}"}, "missing"),
    ({**request_headers(), "X-Link-Time": "soon"}, "bad X-Link-Time"),
    ({**request_headers(), "X-Link-Signature": "\udcd0\udcba"}, "ASCII"),
])
def test_the_guard_refuses_bad_requests_naming_why(headers: dict[str, str], reason: str) -> None:
    """A wrong key, a changed field, another node's id, a time off by more than 30 s, or missing headers: 401."""
    with pytest.raises(Unauthorized, match=reason):
        admit(LinkGuard(KEY, "n1"), headers, NOW)


def test_a_proof_made_for_one_method_and_path_is_refused_for_another() -> None:
    """A captured topic query replayed as a drain (or as the link, or as a GET of the drain path) is refused."""
    query = request_headers(path="/internal/topics/news")
    for method, path in [("POST", "/v1/drain"), ("GET", "/internal"), ("GET", "/internal/topics/other")]:
        with pytest.raises(Unauthorized, match="another method or path"):
            admit(LinkGuard(KEY, "n1"), query, NOW, method, path)
    with pytest.raises(Unauthorized, match="another method or path"):
        admit(LinkGuard(KEY, "n1"), request_headers(method="POST", path="/v1/drain"), NOW, "GET", "/v1/drain")
    admit(LinkGuard(KEY, "n1"), query, NOW, "GET", "/internal/topics/news", purpose="topics")


def test_nonces_are_kept_per_purpose_so_a_flood_of_one_kind_leaves_the_others_working() -> None:
    """A purpose full of recent nonces refuses its next request with 429, while the link and a drain are still admitted."""
    guard = LinkGuard(KEY, "n1", capacity=3)
    for _ in range(3):
        admit(guard, request_headers(path="/internal/topics/t"), NOW, path="/internal/topics/t", purpose="topics")
    with pytest.raises(RateLimited, match="3 signed requests"):
        admit(guard, request_headers(path="/internal/topics/t"), NOW, path="/internal/topics/t", purpose="topics")
    admit(guard, request_headers(), NOW)
    admit(guard, request_headers(method="POST", path="/v1/drain"), NOW, "POST", "/v1/drain", purpose="drain")


def test_nonces_are_forgotten_oldest_first_once_two_skews_old() -> None:
    """Memory stays bounded: a nonce is kept two skew windows after its admission (all a replay could use), then dropped."""
    nonces = Nonces(keep_ms=60_000, capacity=2)
    nonces.add("a", NOW)
    nonces.add("b", NOW + 10_000)
    with pytest.raises(RateLimited):
        nonces.add("c", NOW + 59_999)
    with pytest.raises(Unauthorized, match="already used"):
        nonces.add("a", NOW + 59_999)
    nonces.add("c", NOW + 60_000)  # "a" has aged out; "b" is still kept
    assert len(nonces) == 2
    with pytest.raises(Unauthorized, match="already used"):
        nonces.add("b", NOW + 60_000)
