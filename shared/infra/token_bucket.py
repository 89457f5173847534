"""A token bucket: ``rate`` tokens a second, at most ``burst`` saved up. Pure logic; the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass


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

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` could be paid (after a refused ``take``), had nothing else been spent meanwhile."""
        return max(0.0, cost - self.tokens) / self.rate
