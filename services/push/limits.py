"""What one client may take from a node: connections per user and per source address, frames per second.

Connections are counted while their handler runs. The per-address cap is checked before the
websocket upgrade (an HTTP 429), the per-user cap once the token names the user (close 1008).
Client frames are paid for from a token bucket per connection: an ack costs one token per id, a
ping one; a client that runs dry is closed with 1008. A limit of 0 means none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shared.wire.errors import RateLimited


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, cost: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True


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
