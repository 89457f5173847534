"""The proofs of the internal key: node cards, dispatch's link request and the node's answer."""

from __future__ import annotations

import dataclasses

import pytest

from shared.cluster.routes import NodeCard
from shared.wire.errors import Unauthorized
from shared.wire.signing import CARD, LINK, NODE, LinkGuard, LinkRequest, proof, proven

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


def request_headers(key: str = KEY, node: str = "n1", at: int = NOW) -> dict[str, str]:
    return LinkRequest.make(key, node, at).headers()


def test_the_guard_admits_a_good_request_once_and_the_answer_proves_the_node() -> None:
    """A signed request for this node, on time, is admitted; its replay is not; the answer verifies only under the key."""
    guard = LinkGuard(KEY, "n1")
    headers = request_headers()
    request = guard.admit(headers, NOW + 29_000)
    assert KEY not in "".join(headers.values())
    sent = LinkRequest.from_headers(headers)
    assert sent.answered(KEY, request.answer(KEY))
    assert not sent.answered(KEY, LinkRequest.make(KEY, "n1", NOW).answer(KEY))  # another nonce
    assert not sent.answered(KEY, LinkRequest.from_headers(headers).answer("other"))
    assert not sent.answered(KEY, "")
    with pytest.raises(Unauthorized, match="already used"):
        guard.admit(headers, NOW)


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
        LinkGuard(KEY, "n1").admit(headers, NOW)


def test_the_guard_forgets_nonces_past_the_window_and_refuses_when_full_of_recent_ones() -> None:
    """Memory stays bounded: expired nonces are dropped when full; if all are recent, further requests wait."""
    guard = LinkGuard(KEY, "n1", capacity=2)
    guard.admit(request_headers(at=NOW), NOW)
    guard.admit(request_headers(at=NOW), NOW)
    with pytest.raises(Unauthorized, match="too many"):
        guard.admit(request_headers(at=NOW), NOW)
    guard.admit(request_headers(at=NOW + 30_001), NOW + 30_001)
    assert len(guard._seen) == 1
