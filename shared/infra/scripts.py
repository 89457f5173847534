"""Lua scripts that run one single-key command per key of a whole batch, in one round trip.

redis-py spends ~15 µs of Python on each pipelined command, far more than Redis spends running it,
and the hot paths issue one per recipient. These scripts take a batch of keys and run the same
commands inside Redis: one command to pack and one reply to parse (in C, by hiredis). Every key is
declared in KEYS; on a Redis Cluster a call may only hold keys of one slot, so ``SlotScript`` splits
the batch by slot (``shared.infra.slots``, rule 2) and reassembles the replies in key order.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from itertools import chain
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.infra.clients import is_cluster
from shared.infra.slots import slot_groups

# Opening inboxes (transition ``open``, ``shared.model.poststate``: run after the posts' part). KEYS per user bucket:
# its trimmed queue, then the inboxes of its users; ARGV[1]: the limit, then per key: ``*`` for a trimmed queue, or a
# count n and n (score, member) pairs for an inbox (ZADDs of up to 1,000 pairs, within Lua's unpack limit, then a
# ZCARD). An inbox past the limit loses its oldest entries to the trimmed queue (``{message id},{user}``, the user
# read from the inbox key), which the reconciler closes.
OPEN_INBOXES = """
local limit = tonumber(ARGV[1])
local a, trimmed = 2, nil
for k = 1, #KEYS do
  if ARGV[a] == '*' then
    trimmed, a = KEYS[k], a + 1
  else
    local key, last = KEYS[k], a + 2 * tonumber(ARGV[a])
    for c = a + 1, last, 2000 do
      redis.call('ZADD', key, unpack(ARGV, c, math.min(c + 1999, last)))
    end
    a = last + 1
    if redis.call('ZCARD', key) > limit then
      local over = redis.call('ZRANGE', key, 0, -limit - 1)
      local user = string.match(key, '^inbox:{[^}]*}:(.*)$')
      redis.call('ZREMRANGEBYRANK', key, 0, #over - 1)
      for _, m in ipairs(over) do
        redis.call('RPUSH', trimmed, m .. ',' .. user)
      end
    end
  end
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

# KEYS[i] loses one ARGV[i] (the first from its head); the reply says, per pair, whether it was there.
LREM_EACH = """
local removed = {}
for i, key in ipairs(KEYS) do
  removed[i] = redis.call('LREM', key, 1, ARGV[i])
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


# The guard of a script applied at most once per call (``SlotScript(once=True)``): its last key names the call; the
# first run keeps its reply there for a minute, and a run with the same key (the client's retry after a dropped
# reply re-sends the same call) answers that reply without applying anything again. ``body`` is the script's own.
ONCE = """
local guard = table.remove(KEYS)
local kept = redis.call('GET', guard)
if kept then
  return cjson.decode(kept)
end
local function body()
%s
end
local reply = body()
redis.call('SET', guard, cjson.encode(reply), 'EX', 60)
return reply
"""


def guard_key(slot_key: str, token: str) -> str:
    """A call's guard key, in the hash slot of ``slot_key`` (its hash tag, if it has one)."""
    start = slot_key.find("{")
    end = slot_key.find("}", start + 1)
    tag = slot_key[start:end + 1] if start >= 0 and end > start + 1 else "{" + slot_key + "}"
    return f"once:{tag}:{token}"


class SlotScript:
    """A script over a batch of keys, each key with its own arguments after common ones (``head``): one call on a
    single Redis, one per hash slot on a cluster. With ``once``, each call is applied at most once however often the
    client sends it (``ONCE``): for scripts that count (a counter applied twice would be wrong), not for idempotent ones."""

    def __init__(self, redis: Redis, body: str, once: bool = False) -> None:
        self.redis = redis
        self.body = ONCE % body if once else body
        self.once = once
        self.cluster = is_cluster(redis)
        self.script = redis.register_script(self.body)

    def _keys(self, keys: list[str], token: str | None = None) -> list[str]:
        """A call's keys, with its guard key last (named by ``token``, default a new one) when the script is applied once."""
        return [*keys, guard_key(keys[0], token or secrets.token_hex(8))] if self.once else keys

    def stage(self, pipe: Pipeline, keys: Sequence[str], per_key: Sequence[Sequence[Any]] | None = None,
                    head: Sequence[Any] = ()) -> list[list[int]]:
        """Queue the calls on ``pipe``, one per group of key positions; return the groups (their replies come in order).

        Queued as EVAL with the script's text: Redis finds it compiled by its digest, and the pipeline needs no SCRIPT
        EXISTS round trip before it runs (redis-py's way for a script queued by digest), nor a NOSCRIPT recovery
        (none exists for a cluster pipeline)."""
        groups = slot_groups(self.redis, keys)
        for group in groups:
            group_keys = self._keys([keys[i] for i in group])
            args = [*head, *chain.from_iterable(per_key[i] for i in group)] if per_key is not None else list(head)
            pipe.eval(self.body, len(group_keys), *group_keys, *args)
        return groups

    async def run(self, keys: Sequence[str], args: Sequence[Any], token: str | None = None) -> Any:
        """One call over ``keys``, which must share a hash slot (a hash tag): the script's reply. ``token`` names the
        call of a script applied once (two runs with one token are one call)."""
        keys = self._keys(list(keys), token)
        if self.cluster:
            return await self.redis.eval(self.body, len(keys), *keys, *args)
        return await self.script(keys=list(keys), args=list(args))

    async def each(self, keys: Sequence[str], per_key: Sequence[Sequence[Any]] | None = None,
                   head: Sequence[Any] = ()) -> list[Any]:
        """Run a script that answers a list with one reply per key; return the replies in ``keys`` order."""
        if not keys:
            return []
        if not self.cluster:
            args = [*head, *chain.from_iterable(per_key)] if per_key is not None else list(head)
            return list(await self.script(keys=self._keys(list(keys)), args=args))
        async with self.redis.pipeline(transaction=False) as pipe:
            groups = self.stage(pipe, keys, per_key, head)
            replies = await pipe.execute()
        out: list[Any] = [None] * len(keys)
        for group, reply in zip(groups, replies):
            for i, value in zip(group, reply):
                out[i] = value
        return out


class Scripts:
    def __init__(self, redis: Redis) -> None:
        self.open_inboxes = SlotScript(redis, OPEN_INBOXES, once=True)  # a trim queued twice would be counted twice
        self.zrem_each = SlotScript(redis, ZREM_EACH, once=True)  # a retry would answer 0 for what the first removed
        self.hgetall_each = SlotScript(redis, HGETALL_EACH)
        self.lrem_each = SlotScript(redis, LREM_EACH, once=True)  # a retry would answer 0 for what the first removed
