"""Asking auth who a token belongs to, with a cache so a reconnect storm does not hammer auth.

Tokens not in the cache are verified in batches: connects that arrive while a request to auth is
out share the next one (``{"tokens": [...]}``), so a storm costs auth a few requests, not one per socket.
The cache keeps a 16-byte digest of each token, not the token (a JWT is a few hundred bytes, and a node
caches as many as it holds sockets).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import aiohttp

from shared.infra.coalesce import Coalescer
from shared.wire.errors import Unauthorized, Unavailable
from shared.wire.protocol import Identity

BATCH = 1000  # auth's limit per request


class TokenVerifier:
    def __init__(self, auth_url: str, session: aiohttp.ClientSession, cache_size: int) -> None:
        self.url = auth_url.rstrip("/") + "/v1/verify"
        self.session = session
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._asks: Coalescer[str, Identity | Unauthorized] = Coalescer(self._ask_auth)

    async def verify(self, token: str | None) -> Identity:
        """The token's identity, from the cache while unexpired, else from auth (refused -> Unauthorized)."""
        if not token:
            raise Unauthorized("missing token: use ?token=JWT or an Authorization header")
        key = hashlib.blake2b(token.encode(), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at > time.time():
            self._cache.move_to_end(key)
            return cached
        (answer,) = await self._asks.submit([token])
        if isinstance(answer, Unauthorized):
            raise answer
        self._cache[key] = answer
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return answer

    async def _ask_auth(self, tokens: list[str]) -> list[Identity | Unauthorized]:
        answers: list[Identity | Unauthorized] = []
        for start in range(0, len(tokens), BATCH):
            try:
                async with self.session.post(self.url, json={"tokens": tokens[start:start + BATCH]}) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise Unavailable.of("auth", exc) from None
            if response.status != 200:
                raise Unavailable(f"auth answered {response.status}")
            answers += [Identity(r["user_id"], int(r["expires_at"]), tuple(r.get("topics", ()))) if "user_id" in r
                        else Unauthorized(r.get("error", {}).get("message", "invalid token")) for r in body["results"]]
        return answers
