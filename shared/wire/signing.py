"""Proofs that a peer holds the internal key, so the key itself never leaves the process.

Anyone who can write to Redis can write a node card, and dispatch connects to the link URL a card
names; so a push node signs its card, and dispatch and the node prove the key to each other on
every link handshake instead of presenting it:

* a **card** carries ``proof(key, "card", <its fields>)``: dispatch and collect ignore a card that
  does not verify, so a forged card neither draws dispatch's link nor sends browsers elsewhere;
* dispatch opens a **link** with the headers of a ``LinkRequest``: the node id it means to reach,
  the time, a random nonce and ``proof(key, "link", method, path, node, time, nonce)`` (the path
  percent-decoded, as proxies and clients may re-encode it). The node admits
  it only if the proof holds for the request's own method and path (a captured topic query cannot be
  replayed as a drain), the node id is its own, the time is within ``LINK_SKEW_MS`` of its clock and
  the nonce was not used before (``LinkGuard``); otherwise 401 before the upgrade. The same request
  signs collect's topic queries and a drain;
* the **node** answers with ``proof(key, "node", node, nonce)`` in ``X-Link-Proof``, which dispatch
  checks before it sends any batch: a listener without the key gets nothing.

Every proof is an HMAC-SHA256 of a JSON array whose first element names its purpose, so a proof made
for one purpose is never valid for another, and fields cannot run into each other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from shared.wire.errors import RateLimited, Unauthorized

CARD, LINK, NODE = "card", "link", "node"
LINK_SKEW_MS = 30_000
NONCES_KEPT = 10_000  # requests of one purpose admitted within two skew windows; dispatch opens a few links per node


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
    """What dispatch (or collect, or an operator's drain) presents to ``node`` for ``method`` on ``path``."""

    node: str
    at_ms: int
    nonce: str
    signature: str
    method: str
    path: str

    @classmethod
    def make(cls, key: str, node: str, at_ms: int, method: str, path: str) -> LinkRequest:
        nonce = secrets.token_hex(16)
        return cls(node, at_ms, nonce, proof(key, LINK, method, path, node, at_ms, nonce), method, path)

    def signed_by(self, key: str) -> bool:
        return proven(key, self.signature, LINK, self.method, self.path, self.node, self.at_ms, self.nonce)

    def headers(self) -> dict[str, str]:
        return dict(zip(HEADERS, (self.node, str(self.at_ms), self.nonce, self.signature)))

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], method: str, path: str) -> LinkRequest:
        node, at, nonce, signature = (headers.get(name) for name in HEADERS)
        if not (node and at and nonce and signature):
            raise Unauthorized("missing link authentication headers")
        if not (node + at + nonce + signature).isascii():  # websockets keeps other bytes as surrogates
            raise Unauthorized("link authentication headers must be ASCII")
        try:
            at_ms = int(at)
        except ValueError:
            raise Unauthorized("bad X-Link-Time") from None
        return cls(node, at_ms, nonce, signature, method, path)

    def answer(self, key: str) -> str:
        """The node's proof that it holds the key too, bound to this request's nonce."""
        return proof(key, NODE, self.node, self.nonce)

    def answered(self, key: str, presented: str) -> bool:
        return proven(key, presented, NODE, self.node, self.nonce)


class Nonces:
    """The nonces of one purpose admitted within ``keep_ms``, oldest first: at most ``capacity``, each forgotten in
    O(1) once it is too old to matter (a request is admitted at most ``LINK_SKEW_MS`` either side of its time, so a
    nonce needs keeping for two skews after its admission)."""

    def __init__(self, keep_ms: int, capacity: int) -> None:
        self.keep_ms = keep_ms
        self.capacity = capacity
        self._admitted: OrderedDict[str, int] = OrderedDict()  # nonce -> when admitted (ms)

    def __len__(self) -> int:
        return len(self._admitted)

    def add(self, nonce: str, now_ms: int) -> None:
        """Remember ``nonce``; ``Unauthorized`` if it was seen, ``RateLimited`` while ``capacity`` recent ones are kept."""
        while self._admitted and next(iter(self._admitted.values())) <= now_ms - self.keep_ms:
            self._admitted.popitem(last=False)
        if nonce in self._admitted:
            raise Unauthorized("link nonce already used")
        if len(self._admitted) >= self.capacity:
            raise RateLimited(f"{self.capacity} signed requests of this kind in {self.keep_ms // 1000} s; try again shortly")
        self._admitted[nonce] = now_ms


class LinkGuard:
    """A node's check of signed requests: signed with the key for this method and path, for this node, recent, and
    never seen before. Nonces are kept per purpose, so a flood of one kind (topic queries) never crowds out another
    (the dispatch link, a drain)."""

    def __init__(self, key: str, node_id: str, skew_ms: int = LINK_SKEW_MS, capacity: int = NONCES_KEPT) -> None:
        self.key = key
        self.node_id = node_id
        self.skew_ms = skew_ms
        self.capacity = capacity
        self._nonces: dict[str, Nonces] = {}

    def admit(self, headers: Mapping[str, str], method: str, path: str, purpose: str, now_ms: int) -> LinkRequest:
        """The request if it is admitted, else ``Unauthorized`` naming why (``RateLimited`` past ``capacity`` nonces of
        ``purpose``)."""
        request = LinkRequest.from_headers(headers, method, path)
        if not request.signed_by(self.key):
            raise Unauthorized("bad link signature (or signed for another method or path)")
        if request.node != self.node_id:
            raise Unauthorized("link request for another node")
        if abs(now_ms - request.at_ms) > self.skew_ms:
            raise Unauthorized("link request too old or from the future")
        nonces = self._nonces.get(purpose)
        if nonces is None:
            nonces = self._nonces[purpose] = Nonces(2 * self.skew_ms, self.capacity)
        nonces.add(request.nonce, now_ms)
        return request
