"""A Redis lease: at most one holder at a time, lost by a holder that stops renewing it."""

from __future__ import annotations

from redis.asyncio import Redis

# Renew if we hold it, else take it if free: one atomic step, so two instances never both hold it.
_ACQUIRE_OR_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""


class Lease:
    def __init__(self, redis: Redis, key: str, owner: str, ttl_ms: int) -> None:
        self.key = key
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._script = redis.register_script(_ACQUIRE_OR_RENEW)

    async def hold(self) -> bool:
        """True while this owner holds the lease (taking or renewing it)."""
        return bool(await self._script(keys=[self.key], args=[self.owner, self.ttl_ms]))
