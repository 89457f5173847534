"""Lua scripts that run one single-key command per key of a whole batch, in one round trip.

redis-py spends ~15 µs of Python on each pipelined command, far more than Redis spends running it,
and the hot paths issue one per recipient. These scripts take a batch of keys and run the same
commands inside Redis: one command to pack and one reply to parse (in C, by hiredis). Every key is
declared in KEYS; on a Redis Cluster a call may only hold keys of one slot, so a caller there
would split its batch by slot.
"""

from __future__ import annotations

from redis.asyncio import Redis

# KEYS: inboxes; ARGV[1]: the limit, then for each key: a count n and n (score, member) pairs.
OPEN_INBOXES = """
local limit = tonumber(ARGV[1])
local a = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('ZADD', key, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('ZREMRANGEBYRANK', key, 0, -limit - 1)
end
return #KEYS
"""

# KEYS[i] loses member ARGV[i]; the reply says, per pair, whether it was there.
ZREM_EACH = """
local removed = {}
for i, key in ipairs(KEYS) do
  removed[i] = redis.call('ZREM', key, ARGV[i])
end
return removed
"""

# Each key's hash, as a flat [field, value, ...] list.
HGETALL_EACH = """
local hashes = {}
for i, key in ipairs(KEYS) do
  hashes[i] = redis.call('HGETALL', key)
end
return hashes
"""


class Scripts:
    def __init__(self, redis: Redis) -> None:
        self.open_inboxes = redis.register_script(OPEN_INBOXES)
        self.zrem_each = redis.register_script(ZREM_EACH)
        self.hgetall_each = redis.register_script(HGETALL_EACH)
