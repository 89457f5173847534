"""Scheduled messages in Redis: held back until due, then fired exactly once by whichever dispatch claims them.

Keys:

* ``sched:{schedule}:<post>`` -- a HASH with the field map (``shared.model.message``) of the post's messages
  still waiting, plus ``t`` (the post's acceptance time) and ``s`` (its sender, for cancellation). A
  message's fields go when it fires or is cancelled, the hash with the last of them;
* ``{schedule}`` -- a ZSET of waiting message ids scored by due time (ms);
* ``{schedule}:firing`` -- a ZSET of ids a dispatch instance claimed, scored by the claim time;
* ``{schedule}:cancelled`` and ``{schedule}:cancelling`` -- ZSETs of cancelled ids, by expiry and by cancel time
  (below).

They share the hash tag ``{schedule}``: the scripts below touch several at once, so on a Redis
Cluster they live on one master (``shared/infra/slots.py``, rule 3).

Nothing of a scheduled message is in an inbox or on the stream before it is due, so a user who
connects early does not get it. Firing: one script call (``claim``) moves up to ``limit`` due ids
from ``schedule`` to ``schedule:firing`` and returns them, so however many instances call it each
id goes to one of them; the claimer opens the inboxes, appends to the stream and removes the ids
from ``schedule:firing`` in one MULTI (``services/dispatch/firing.py``). An id left in
``schedule:firing`` longer than the grace (its claimer died in between) is claimed again by the same
script, by any instance: no lease, nothing stalls when an instance dies. A claimer stalled past the
grace and then going on would fire a message twice (at least once, like every delivery here).

Due times are compared with Redis's clock (``TIME`` inside the scripts), the one clock every dispatch instance
shares: an instance whose own clock runs ahead neither fires early nor takes another's fresh claim for a stale one.

Cancelling is one script too: the id leaves ``schedule`` only if it is still there and the hash's
sender matches, so a cancel and a claim never both win. It also records the id in ``{schedule}:cancelled`` (a ZSET
scored by the message's expiry, trimmed past it), and every later ``hold`` skips an id recorded there, in the same
script that would write it: the paths that put a message back from MongoDB's record (the reconciler finishing a
hand-over a refused Idempotency-Key retry left behind, the rebuild after Redis came back empty) may have read it
before the cancel, and a cancel answered 200 must still win. Only ``restore`` (a cancel whose record failed) takes
the id out again.

The same script notes the cancel in ``{schedule}:cancelling`` (a ZSET: id -> the cancel's time in ms, Redis's clock).
Until MongoDB records it and its ``message.cancelled`` fact is on the webhooks stream, a cancel lives only in Redis: a
collect SIGKILLed in between (or Redis failing under the fact) would otherwise lose the record or the event for good,
the message out of the schedule, its status ``scheduled``. collect records,
appends the fact, then drops the note (``forget_cancels``); ``restore`` drops it in the same script that puts the
message back. A note older than dispatch's grace (``CANCEL_GRACE_SECONDS``) was left behind: dispatch's reconciler
claims it (``unfinished_cancels``: its score turns negative, the time kept as its absolute value), records the cancel
and appends the fact under the noted time, then drops it. A claimed note is the reconciler's: ``restore`` leaves it
(and the message out of the schedule), so a collect whose record failed past the grace never puts back a message the
reconciler is recording as cancelled. Recording twice (collect slow, not dead) is harmless: a status keeps a stage's
first time, and both record the same time; the fact's webhook-id is derived from the message, so its event is sent once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from itertools import chain
from typing import NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT

from shared.infra.scripts import Scripts, SlotScript
from shared.model.message import INDEX_DIGITS, Message, by_post, index_of, lua_fields, messages_of, post_fields, post_of

TAG = "{schedule}"  # every key here: the claim, settle and cancel scripts touch several (``shared/infra/slots.py``, rule 3)
SCHEDULE_KEY = TAG
FIRING_KEY = f"{TAG}:firing"
CANCELLED_KEY = f"{TAG}:cancelled"  # ids cancelled, until their expiry: ``hold`` never puts them back
CANCELLING_KEY = f"{TAG}:cancelling"  # ids cancelled but maybe not on record yet, by cancel time (negative: claimed)
PAUSED_KEY = f"{TAG}:paused"  # present while dispatch rebuilds the state: nothing fires (a cancel may not be replayed yet)
META_FIELDS = 2  # "t" and "s": a hash with only these holds no message


def sched_key(post: str) -> str:
    return f"sched:{TAG}:{post}"


def by_post_id(ids: list[str]) -> dict[str, list[str]]:
    """The ids of each post, each once."""
    posts: defaultdict[str, list[str]] = defaultdict(list)
    for m in dict.fromkeys(ids):
        posts[post_of(m)].append(m)
    return posts


def held_fields(batch: list[Message]) -> list[EncodableT]:
    """The arguments of ``HOLD`` for one post's messages: its time and sender, then each message's id, due time and
    fields (``shared.model.message``, plus ``d<i>``, the due time, which a cancel's put-back restores)."""
    args: list[EncodableT] = [batch[0].ts, batch[0].sender, len(batch)]
    for m in batch:
        fields = [*chain.from_iterable(post_fields([m]).items()), f"d{m.index}", m.due_ms]
        args += [m.id, m.due_ms, len(fields) // 2, *fields]
    return args


# Commands with many members take them in chunks (Lua's unpack has a limit on the values it returns).
_CHUNKED = """
local function chunked(command, key, values)
  for c = 1, #values, 4000 do
    redis.call(command, key, unpack(values, c, math.min(c + 3999, #values)))
  end
end

-- Drop these messages' fields (indexes as strings) from their post's hash, and the hash with its last message.
local function drop(key, indexes)
  local fields = {}
  for _, i in ipairs(indexes) do
    for _, f in ipairs(%s) do
      fields[#fields + 1] = f
    end
  end
  chunked('HDEL', key, fields)
  if redis.call('HLEN', key) <= %d then
    redis.call('DEL', key)
  end
end
""" % (lua_fields("i"), META_FIELDS)

# Redis's clock, in ms: every due time and claim is compared on this one clock, never a dispatch instance's own (two
# instances' clocks apart would fire early, or take each other's fresh claims for stale ones). TIME before a write is
# allowed in a script since Redis 5 (effects replication, the default from 5.0; the only mode from 7.0).
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS[1] schedule, KEYS[2] firing, KEYS[3] the pause (while it exists nothing is claimed); ARGV: limit, grace (claims
# older than now - grace are stale). Stale claims first;
# the due ids are the lowest ranks of the schedule, removed by rank in one command. Returns the claimed ids, when the
# next one falls due (the schedule's first score, or a claim's going stale; false if nothing waits) and now, all on
# Redis's clock.
CLAIM = _CHUNKED + _NOW + """
local limit, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {{}, false, now}
end
local nowtext, staletext = string.format('%d', now), string.format('%d', now - grace)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', staletext, 'LIMIT', 0, limit)
if #ids < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', nowtext, 'LIMIT', 0, limit - #ids)
  if #due > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1)
    for _, id in ipairs(due) do
      ids[#ids + 1] = id
    end
  end
end
local scored = {}
for _, id in ipairs(ids) do
  scored[#scored + 1] = nowtext
  scored[#scored + 1] = id
end
if #scored > 0 then
  chunked('ZADD', KEYS[2], scored)
end
local wake = false
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then
  wake = tonumber(first[2])
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #oldest > 0 then
  local stale = tonumber(oldest[2]) + grace
  if not wake or stale < wake then
    wake = stale
  end
end
return {ids, wake, now}
"""

# KEYS[1] schedule (only for its slot): Redis's clock in ms, on the master holding the schedule.
NOW = _NOW + """
return now_ms()
"""

# KEYS[1] firing, then post hashes; ARGV: for each hash a count n and n message ids (``{post}{index:04x}``), which
# leave firing and their fields the hash.
SETTLE = _CHUNKED + """
local a = 1
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  local ids, indexes = {}, {}
  for j = a + 1, a + n do
    ids[#ids + 1] = ARGV[j]
    indexes[#indexes + 1] = tostring(tonumber(string.sub(ARGV[j], -%d), 16))
  end
  chunked('ZREM', KEYS[1], ids)
  drop(KEYS[k], indexes)
  a = a + n + 1
end
return #KEYS
""" % INDEX_DIGITS

# KEYS[1] schedule, KEYS[2] the post's hash, KEYS[3] the cancelled ids, KEYS[4] the cancel notes; ARGV: message id,
# its index, the sender. Nil unless it was waiting and the sender's; else the due time, the post's time, the cancel's
# time (ms, Redis's clock) and the message's fields as name/value pairs (all a put-back, ``restore``, needs to restore it
# as it was). The id is recorded as cancelled until its expiry (ids past theirs leave), and noted with the cancel's time
# until the cancel is on record (``forget_cancels``). Applied once per call (``SlotScript(once=True)``): the client's
# retry after a dropped reply gets the same answer, not a nil that would read as "not waiting" for a message it had
# just taken out (a 404, and no cancel record: it would come back in a rebuild).
CANCEL = _CHUNKED + _NOW + """
if redis.call('HGET', KEYS[2], 's') ~= ARGV[3] then
  return false
end
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due then
  return false
end
redis.call('ZREM', KEYS[1], ARGV[1])
local now = now_ms()
local names = %s
local values = redis.call('HMGET', KEYS[2], unpack(names))
local reply = {due, redis.call('HGET', KEYS[2], 't'), now}
for n, name in ipairs(names) do
  if values[n] then
    reply[#reply + 1] = name
    reply[#reply + 1] = values[n]
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%%d', now))
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[2], 'x' .. ARGV[2]), ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
drop(KEYS[2], {ARGV[2]})
return reply
""" % lua_fields("ARGV[2]")

# KEYS[1] schedule, KEYS[2] the cancelled ids, KEYS[3] the cancel notes, KEYS[4] the post's hash; ARGV[1] ``any`` to
# take a note the reconciler claimed too (its own), else ``unclaimed``; then ``HOLD``'s arguments for the one message
# (``held_fields``: post time, sender, 1, id, due time, a count n of fields, n name/value pairs). Puts the message back
# as it was, no longer recorded as cancelled, and drops its note, if the note is there (and unclaimed, unless ``any``):
# 1. A message back in the schedule already (this put-back applied before, its reply lost) is 1 too. Else 0: the
# reconciler claimed the note, or recorded the cancel and dropped it; the cancel stands.
RESTORE = """
local id = ARGV[5]
local noted = redis.call('ZSCORE', KEYS[3], id)
if not noted then
  if redis.call('ZSCORE', KEYS[1], id) then
    return 1
  end
  return 0
end
if tonumber(noted) < 0 and ARGV[1] ~= 'any' then
  return 0
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[2], id)
local n = tonumber(ARGV[7])
redis.call('HSET', KEYS[4], 't', ARGV[2], 's', ARGV[3], unpack(ARGV, 8, 7 + 2 * n))
redis.call('ZADD', KEYS[1], ARGV[6], id)
return 1
"""

# KEYS[1] the cancel notes; ARGV: grace (ms), limit. Up to ``limit`` notes older than the grace (Redis's clock), those
# claimed before first (a reconciler pass that died), each claimed now: its score negated, so ``restore`` leaves it.
# Returns a flat [id, cancel time, ...] list.
CLAIM_CANCELS = _NOW + """
local bound = string.format('%d', now_ms() - tonumber(ARGV[1]))
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local reply = {}
for i = 1, #found, 2 do
  local at = tonumber(found[i + 1])
  if at > 0 then
    redis.call('ZADD', KEYS[1], -at, found[i])
  end
  reply[#reply + 1] = found[i]
  reply[#reply + 1] = string.format('%d', math.abs(at))
end
return reply
"""

# KEYS[1] schedule, KEYS[2] the cancelled ids, then post hashes; ARGV per hash: the post's time, its sender, a count of
# messages and per message its id, due time, a count n of fields and n name/value pairs. A message recorded as cancelled
# is skipped; the others' fields go in the hash and their ids in the schedule. Returns how many were held.
HOLD = """
local a, held = 1, 0
for k = 3, #KEYS do
  local t, s, count = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  for _ = 1, count do
    local id, due, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
    if not redis.call('ZSCORE', KEYS[2], id) then
      redis.call('HSET', KEYS[k], 't', t, 's', s, unpack(ARGV, a + 3, a + 2 + 2 * n))
      redis.call('ZADD', KEYS[1], due, id)
      held = held + 1
    end
    a = a + 3 + 2 * n
  end
end
return held
"""


class Cancelled(NamedTuple):
    """A message a cancel took out of the schedule (whole, priority included, so it can be put back as it was), and
    the cancel's time (ms, Redis's clock): the time its record and its webhook fact carry, whoever writes them."""

    message: Message
    at: int


class Schedule:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = SlotScript(redis, CLAIM)
        self._now = SlotScript(redis, NOW)
        self._settle = SlotScript(redis, SETTLE)
        self._cancel = SlotScript(redis, CANCEL, once=True)
        self._hold = SlotScript(redis, HOLD)
        self._restore = SlotScript(redis, RESTORE, once=True)  # a retry after a dropped reply could read as "claimed"
        self._claim_cancels = SlotScript(redis, CLAIM_CANCELS)  # idempotent: a retry claims nothing new
        self._scripts = Scripts(redis)

    def stage(self, pipe: Pipeline, messages: Iterable[Message]) -> None:
        """Queue one HSET per post and one ZADD that hold ``messages`` back until their due times (idempotent)."""
        due: dict[str, int] = {}
        for post, batch in by_post(messages).items():
            pipe.hset(sched_key(post), mapping={"t": batch[0].ts, "s": batch[0].sender, **post_fields(batch),
                                                **{f"d{m.index}": m.due_ms for m in batch}})
            due.update((m.id, m.due_ms) for m in batch)
        if due:
            pipe.zadd(SCHEDULE_KEY, due)

    async def hold(self, messages: list[Message]) -> None:
        """Put ``messages`` (back) in the schedule, all but those recorded as cancelled, in one script call (idempotent):
        for messages read back from MongoDB, which a cancel may have taken out since."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.stage_hold(pipe, messages)
            await pipe.execute()

    def stage_hold(self, pipe: Pipeline, messages: list[Message]) -> None:
        posts = by_post(messages)
        if posts:
            self._hold.stage(pipe, [SCHEDULE_KEY, CANCELLED_KEY, *(sched_key(p) for p in posts)],
                                   [[], [], *(held_fields(batch) for batch in posts.values())])

    async def restore(self, message: Message, claimed: bool = False) -> bool:
        """Undo a cancel whose record failed, in one script: the message is no longer recorded as cancelled, waits as
        it did, and its cancel note is dropped. Returns False, changing nothing, if the note is gone (the cancel is on
        record) or the reconciler claimed it (it is recording the cancel): the cancel stands. ``claimed``: the
        reconciler's own put-back of a note it claimed."""
        keys = [SCHEDULE_KEY, CANCELLED_KEY, CANCELLING_KEY, sched_key(message.post)]
        return bool(await self._restore.run(keys, ["any" if claimed else "unclaimed", *held_fields([message])]))

    async def forget_cancels(self, message_ids: list[str]) -> None:
        """Drop the notes of these cancels, now on record and their facts appended (claimed or not)."""
        if message_ids:
            await self.redis.zrem(CANCELLING_KEY, *message_ids)

    async def unfinished_cancels(self, grace_ms: int, limit: int) -> dict[str, int]:
        """Up to ``limit`` cancels noted longer than ``grace_ms`` ago (Redis's clock) and still not on record, each with
        its time (ms), now claimed by the caller: ``restore`` no longer puts them back. One script call."""
        flat = await self._claim_cancels.run([CANCELLING_KEY], [grace_ms, limit])
        return {m.decode(): int(at) for m, at in zip(flat[::2], flat[1::2])}

    async def claim(self, limit: int, grace_ms: int) -> tuple[list[str], int | None, int]:
        """Up to ``limit`` ids due by now (and claims older than ``grace_ms``), now this caller's to fire; the time (ms)
        the next one falls due, None if none waits; and now. Every time is Redis's clock, never the caller's."""
        ids, wake, now = await self._claim.run([SCHEDULE_KEY, FIRING_KEY, PAUSED_KEY], [limit, grace_ms])
        return [i.decode() for i in ids], wake, int(now)

    async def pause(self, ms: int) -> None:
        """Claim nothing for ``ms`` (or until ``resume``): the rebuild holds messages back before it knows which were
        cancelled."""
        await self.redis.set(PAUSED_KEY, 1, px=ms)

    async def resume(self) -> None:
        await self.redis.delete(PAUSED_KEY)

    async def paused(self) -> bool:
        """Whether a rebuild holds the schedule back now (scheduled messages due meanwhile fire when it resumes)."""
        return bool(await self.redis.exists(PAUSED_KEY))

    async def now_ms(self) -> int:
        """The schedule's clock: Redis's time (ms) on the server holding the schedule."""
        return int(await self._now.run([SCHEDULE_KEY], []))

    async def load(self, ids: list[str]) -> list[Message]:
        """The claimed messages still held, read with their posts' whole hashes in one script call (a claim takes
        most of a post's messages: a command per post costs less than a field per message); one fired or cancelled
        meanwhile is left out."""
        claimed = by_post_id(ids)
        replies = await self._scripts.hgetall_each.each([sched_key(p) for p in claimed])
        messages: list[Message] = []
        for (post, wanted), flat in zip(claimed.items(), replies):
            fields = dict(zip(flat[::2], flat[1::2]))
            if b"t" in fields:
                indexes = {index_of(m) for m in wanted}
                messages += [m for m in messages_of(post, int(fields[b"t"]), fields) if m.index in indexes]
        return messages

    def settle(self, pipe: Pipeline, ids: list[str]) -> None:
        """Queue on ``pipe``: the claimed ``ids`` leave ``schedule:firing`` and their fields their posts' hashes."""
        if not ids:
            return
        claimed = by_post_id(ids)
        self._settle.stage(pipe, [FIRING_KEY, *(sched_key(p) for p in claimed)],
                                 [[], *([len(wanted), *wanted] for wanted in claimed.values())])

    async def cancel(self, message_id: str, sender: str, token: str | None = None) -> Cancelled | None:
        """Take ``message_id`` out of the schedule if it is still waiting and ``sender``'s, noting the cancel until it is
        on record; return it with the cancel's time, or None."""
        post, index = post_of(message_id), index_of(message_id)
        keys = [SCHEDULE_KEY, sched_key(post), CANCELLED_KEY, CANCELLING_KEY]
        reply = await self._cancel.run(keys, [message_id, index, sender], token)
        if not reply:
            return None
        due, ts, at, *flat = (v.encode() if isinstance(v, str) else v for v in reply)
        fields = {**dict(zip(flat[::2], flat[1::2])), b"d%d" % index: due}
        return Cancelled(replace(messages_of(post, int(ts), fields)[0], sender=sender), int(at))

    async def unschedule(self, message_ids: list[str]) -> None:
        """Drop these ids from the schedule, if there (the rebuild: messages recorded as cancelled, and due ones it
        opened in their inboxes)."""
        if message_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(SCHEDULE_KEY, *message_ids)
                self.settle(pipe, message_ids)
                await pipe.execute()
