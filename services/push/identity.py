"""Asking auth who a token belongs to, with a cache so a reconnect storm does not hammer auth."""

from __future__ import annotations

import time
from collections import OrderedDict

import aiohttp

from shared.errors import Unauthorized, Unavailable
from shared.protocol import Identity


class TokenVerifier:
    def __init__(self, auth_url: str, session: aiohttp.ClientSession, cache_size: int) -> None:
        self.url = auth_url.rstrip("/") + "/v1/verify"
        self.session = session
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Identity] = OrderedDict()

    async def verify(self, token: str | None) -> Identity:
        """The token's identity, from the cache while unexpired, else from auth (401 -> Unauthorized)."""
        if not token:
            raise Unauthorized("missing token: use ?token=JWT or an Authorization header")
        cached = self._cache.get(token)
        if cached is not None and cached.expires_at > time.time():
            self._cache.move_to_end(token)
            return cached
        identity = await self._ask_auth(token)
        self._cache[token] = identity
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return identity

    async def _ask_auth(self, token: str) -> Identity:
        try:
            async with self.session.post(self.url, json={"token": token}) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"auth unreachable: {exc!r}") from None
        if response.status == 401:
            raise Unauthorized(body.get("error", {}).get("message", "invalid token"))
        if response.status != 200:
            raise Unavailable(f"auth answered {response.status}")
        return Identity(body["user_id"], int(body["expires_at"]))
