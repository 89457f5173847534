"""What one client may take from a node: connections per user and per source address, frames per second.

Connections are counted while their handler runs. The per-address cap is checked before the
websocket upgrade (an HTTP 429), the per-user cap once the token names the user (close 1008).
Client frames are paid for from a token bucket per connection (``shared.infra.token_bucket``): an ack
costs one token per id, a ping one; a client that runs dry is closed with 1008. A limit of 0 means none.
"""

from __future__ import annotations

from collections import Counter

from shared.wire.errors import RateLimited


class AddressCount:
    """Open connections by source address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def check(self, address: str) -> None:
        if self.limit and self._open[address] >= self.limit:
            raise RateLimited(f"{self.limit} connections from {address} already")

    def opened(self, address: str) -> None:
        self._open[address] += 1

    def closed(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
