"""Proofs that a peer holds the internal key, so the key itself never leaves the process.

Anyone who can write to Redis can write a node card, and dispatch connects to the link URL a card
names; so a push node signs its card, and dispatch and the node prove the key to each other on
every link handshake instead of presenting it:

* a **card** carries ``proof(key, "card", <its fields>)``: dispatch and collect ignore a card that
  does not verify, so a forged card neither draws dispatch's link nor sends browsers elsewhere;
* dispatch opens a **link** with the headers of a ``LinkRequest``: the node id it means to reach,
  the time, a random nonce and ``proof(key, "link", node, time, nonce)``. The node admits it only if
  the proof holds, the node id is its own, the time is within ``LINK_SKEW_MS`` of its clock and the
  nonce was not used before (``LinkGuard``); otherwise 401 before the upgrade;
* the **node** answers with ``proof(key, "node", node, nonce)`` in ``X-Link-Proof``, which dispatch
  checks before it sends any batch: a listener without the key gets nothing.

Every proof is an HMAC-SHA256 of a JSON array whose first element names its purpose, so a proof made
for one purpose is never valid for another, and fields cannot run into each other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from shared.wire.errors import Unauthorized

CARD, LINK, NODE = "card", "link", "node"
LINK_SKEW_MS = 30_000
NONCES_KEPT = 10_000  # link requests admitted within one skew window; dispatch opens a few per node


def proof(key: str, purpose: str, *parts: str | int) -> str:
    """HMAC-SHA256 under ``key`` of ``[purpose, *parts]``, hex."""
    return hmac.new(key.encode(), orjson.dumps([purpose, *parts]), hashlib.sha256).hexdigest()


def proven(key: str, presented: str, purpose: str, *parts: str | int) -> bool:
    """Whether ``presented`` is the proof of ``parts`` (constant time, whatever characters it holds)."""
    return hmac.compare_digest(presented.encode(), proof(key, purpose, *parts).encode())


HEADERS = ("X-Link-Node", "X-Link-Time", "X-Link-Nonce", "X-Link-Signature")
PROOF_HEADER = "X-Link-Proof"


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What dispatch presents when it opens a link to ``node``."""

    node: str
    at_ms: int
    nonce: str
    signature: str

    @classmethod
    def make(cls, key: str, node: str, at_ms: int) -> LinkRequest:
        nonce = secrets.token_hex(16)
        return cls(node, at_ms, nonce, proof(key, LINK, node, at_ms, nonce))

    def headers(self) -> dict[str, str]:
        return dict(zip(HEADERS, (self.node, str(self.at_ms), self.nonce, self.signature)))

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> LinkRequest:
        node, at, nonce, signature = (headers.get(name) for name in HEADERS)
        if not (node and at and nonce and signature):
            raise Unauthorized("missing link authentication headers")
        if not (node + at + nonce + signature).isascii():  # websockets keeps other bytes as surrogates
            raise Unauthorized("link authentication headers must be ASCII")
        try:
            at_ms = int(at)
        except ValueError:
            raise Unauthorized("bad X-Link-Time") from None
        return cls(node, at_ms, nonce, signature)

    def answer(self, key: str) -> str:
        """The node's proof that it holds the key too, bound to this request's nonce."""
        return proof(key, NODE, self.node, self.nonce)

    def answered(self, key: str, presented: str) -> bool:
        return proven(key, presented, NODE, self.node, self.nonce)


class LinkGuard:
    """A node's check of link requests: signed with the key, for this node, recent, and never seen before."""

    def __init__(self, key: str, node_id: str, skew_ms: int = LINK_SKEW_MS, capacity: int = NONCES_KEPT) -> None:
        self.key = key
        self.node_id = node_id
        self.skew_ms = skew_ms
        self.capacity = capacity
        self._seen: dict[str, int] = {}  # nonce -> until when a request carrying it could still be admitted

    def admit(self, headers: Mapping[str, str], now_ms: int) -> LinkRequest:
        """The request if it is admitted, else ``Unauthorized`` naming why."""
        request = LinkRequest.from_headers(headers)
        if not proven(self.key, request.signature, LINK, request.node, request.at_ms, request.nonce):
            raise Unauthorized("bad link signature")
        if request.node != self.node_id:
            raise Unauthorized("link request for another node")
        if abs(now_ms - request.at_ms) > self.skew_ms:
            raise Unauthorized("link request too old or from the future")
        if request.nonce in self._seen:
            raise Unauthorized("link nonce already used")
        if len(self._seen) >= self.capacity:
            self._seen = {n: until for n, until in self._seen.items() if until >= now_ms}
            if len(self._seen) >= self.capacity:
                raise Unauthorized("too many link requests; try again shortly")
        self._seen[request.nonce] = request.at_ms + self.skew_ms
        return request
