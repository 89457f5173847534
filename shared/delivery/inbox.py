"""The hot delivery state in Redis: what each user still has to receive, known without MongoDB.

Keys (a post is one POST's messages, see ``shared.model.message``):

* ``post:{p<bucket>}:<post>`` -- a HASH of the post's messages for users: per message its frame (stored
  once however many recipients), recipients, expiry and ``n<i>``, how many of its deliveries may
  still be open; and ``h``, how many of its messages are *held* (``n`` above 0). A message stops
  being held when its ``n`` reaches 0 and is forgotten when it expires; the hash goes, in one DEL,
  when ``h`` reaches 0. Topic and broadcast messages open no inbox and are left out. Parts of one
  post arrive at different times (a scheduled message fires later), so every count and expiry is
  per message, never per post: ``shared.model.poststate`` specifies each transition and the
  invariants its script keeps;
* ``expiry:{p<bucket>}`` -- a ZSET of the bucket's posts scored by the earliest expiry they hold,
  read by dispatch's expiry pass; it shares its posts' hash tag, so each transition changes a post
  and its expiry in one script;
* ``inbox:{u<bucket>}:<user>`` -- a ZSET of the user's open message ids scored by acceptance time, trimmed to
  the newest ``limit``; Redis drops it when the last entry goes. What the trim pushes out is queued,
  by the same script, in ``trimmed:{u<bucket>}`` (``{message id},{user}``);
* ``expired:{u<bucket>}`` -- a LIST of the deliveries the expiry pass closed (``{message id},{user},{time}``),
  each noted by the same script that removes its inbox entry (``EXPIRE_INBOXES``).
  Both lists are notes of closings the durable record does not have yet, kept in Redis so that none is lost
  with the process that made it: dispatch's reconciler reads a page (``noted``), records it ``expired`` or
  ``trimmed`` (MongoDB, then the webhooks stream), and only then drops it (``forget``; a trimmed delivery is
  counted against its message then). One killed in between records the page again, expiries under the
  same times;
* ``state:epoch:{u<bucket>}`` -- one marker per user bucket (``shared.infra.slots``, rule 4), present once
  this state is complete, each beside the inboxes of its bucket: a Redis restarted empty, or one
  master of a Redis Cluster restarted empty, loses the markers of exactly the buckets it lost. With
  any missing, dispatch rebuilds the state from MongoDB (``services/dispatch/rebuild.py``) and sets
  them all to a new epoch; replays of a user wait for their bucket's marker, and push nodes that see
  the epoch change send their open sessions what came back;
* ``held:{u<bucket>}`` -- a ZSET of the acks taken while that bucket's marker was missing (``{message id},{user}``,
  scored by the ack's time, kept ``HELD_ACK_TTL_SECONDS``): an ack then may find nothing to close (Redis came back
  empty) or close what the rebuild opens again from MongoDB, which may not have its mark yet. The rebuild closes
  every held ack once it has reopened everything and records it, before it sets the marker (``acknowledge``).

Each method takes a whole batch and costs a few round trips whatever its size: one script call per
post bucket for the posts' state, one per user bucket for the inboxes (``shared.infra.scripts``), since
redis-py's cost per pipelined command is what would dominate.
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.infra.clock import now_ms as clock_ms
from shared.infra.scripts import Scripts, SlotScript
from shared.infra.slots import all_post_tags, all_user_tags, post_tag, user_tag
from shared.model.message import Message, Pair, by_post, index_of, lua_fields, message_id, post_fields, post_of, split_users
from shared.wire.errors import Unavailable

# Each post-state script takes, per post, its bucket's expiry index and its hash as keys (one call per hash slot: one
# on a single Redis, ``Inbox._per_post``), and per post its id then its own arguments. ``chunked``: HSET/HDEL of many
# values (Lua's unpack returns a bounded number); ``names``: message ``i``'s fields.
_HELPERS = """
local function chunked(command, key, values, first, last)
  for c = first, last, 2000 do
    redis.call(command, key, unpack(values, c, math.min(c + 1999, last)))
  end
end
local function names(i) return """ + lua_fields("i", ("n",)) + """ end
"""

# Transition ``open`` (``PostState.open``). ARGV per post: its id, its earliest expiry, a count f and f field/value
# pairs (``post_fields``). Each ``u<i>`` field (message i's recipients, joined by ``,``) opens message i for that many
# deliveries: a post's first part (no hash yet) writes the counts and ``h`` in one HSET; a later part adds to each
# count, and to ``h`` for each message not held before (``n`` absent or 0).
OPEN_POSTS = _HELPERS + """
local a = 1
for k = 1, #KEYS, 2 do
  local post, earliest, first, last = ARGV[a], ARGV[a + 1], a + 3, a + 2 + 2 * tonumber(ARGV[a + 2])
  local hash = KEYS[k + 1]
  local fresh = redis.call('EXISTS', hash) == 0
  chunked('HSET', hash, ARGV, first, last)
  local counts, held = {}, 0
  for j = first, last, 2 do
    if string.byte(ARGV[j]) == 117 then
      local n = string.find(ARGV[j + 1], ',', 1, true) and select(2, string.gsub(ARGV[j + 1], ',', ',')) + 1 or 1
      local count = 'n' .. string.sub(ARGV[j], 2)
      if fresh then
        counts[#counts + 1] = count
        counts[#counts + 1] = n
        held = held + 1
      elseif redis.call('HINCRBY', hash, count, n) == n then
        held = held + 1
      end
    end
  end
  if fresh then
    counts[#counts + 1] = 'h'
    counts[#counts + 1] = held
    chunked('HSET', hash, counts, 1, #counts)
  elseif held > 0 then
    redis.call('HINCRBY', hash, 'h', held)
  end
  a = last + 1
  redis.call('ZADD', KEYS[k], 'LT', earliest, post)
end
return #KEYS / 2
"""

# Transition ``close`` (``PostState.close``). ARGV per post: its id, a count m and m (index, deliveries closed) pairs.
# One HINCRBY per message. One whose count reaches 0 is no longer held: it leaves ``h``, its fields stay until the
# post holds nothing (then the whole hash goes, in one DEL) or they expire. A count below 0 (a message not held:
# forgotten on expiry, or never opened) is dropped at once, so a count never rests below 0.
CLOSE_POSTS = _HELPERS + """
local a = 1
for k = 1, #KEYS, 2 do
  local post, dropped, stray = ARGV[a], 0, nil
  for j = a + 2, a + 1 + 2 * tonumber(ARGV[a + 1]), 2 do
    local closed = tonumber(ARGV[j + 1])
    local left = redis.call('HINCRBY', KEYS[k + 1], 'n' .. ARGV[j], -closed)
    if left + closed > 0 and left <= 0 then dropped = dropped + 1 end
    if left < 0 then
      stray = stray or {}
      stray[#stray + 1] = 'n' .. ARGV[j]
    end
  end
  a = a + 2 + 2 * tonumber(ARGV[a + 1])
  if dropped > 0 and redis.call('HINCRBY', KEYS[k + 1], 'h', -dropped) <= 0 then
    redis.call('DEL', KEYS[k + 1])
    redis.call('ZREM', KEYS[k], post)
  elseif stray then
    chunked('HDEL', KEYS[k + 1], stray, 1, #stray)
  end
end
return #KEYS / 2
"""

# Transition ``expire`` (``PostState.expire``). ARGV[1]: now, then per post: its id, a count m and m indexes of expired
# messages whose deliveries are closed. Their fields go (held or not), ``h`` loses the held ones; the post is scored
# by the earliest expiry still held, or goes.
EXPIRE_POSTS = _HELPERS + """
local now = tonumber(ARGV[1])
local a = 2
for k = 1, #KEYS, 2 do
  local post, dropped, gone = ARGV[a], 0, {}
  local hash = KEYS[k + 1]
  for j = a + 2, a + 1 + tonumber(ARGV[a + 1]) do
    local i = ARGV[j]
    local x = redis.call('HGET', hash, 'x' .. i)
    if x and tonumber(x) <= now then
      if tonumber(redis.call('HGET', hash, 'n' .. i) or '0') > 0 then dropped = dropped + 1 end
      for _, name in ipairs(names(i)) do gone[#gone + 1] = name end
    end
  end
  a = a + 2 + tonumber(ARGV[a + 1])
  local held = dropped > 0 and redis.call('HINCRBY', hash, 'h', -dropped) or tonumber(redis.call('HGET', hash, 'h') or '0')
  local earliest = false
  if held > 0 then
    chunked('HDEL', hash, gone, 1, #gone)
    for _, name in ipairs(redis.call('HKEYS', hash)) do
      if string.sub(name, 1, 1) == 'x' and tonumber(redis.call('HGET', hash, 'n' .. string.sub(name, 2)) or '0') > 0 then
        local x = tonumber(redis.call('HGET', hash, name))
        if not earliest or x < earliest then earliest = x end
      end
    end
  end
  if earliest then
    redis.call('ZADD', KEYS[k], earliest, post)
  else
    redis.call('DEL', hash)
    redis.call('ZREM', KEYS[k], post)
  end
end
return #KEYS / 2
"""


# Acknowledging (transition ``close``'s inbox part, by the acking users). KEYS per user bucket: its epoch marker and
# held acks, then the inbox of each ack frame (``Acked``) of a user in that bucket; ARGV[1]: the held acks' lifetime
# (s), then per key: ``*`` for a bucket's two keys, or a frame's time (ms), a count c and c message ids. The reply says,
# per id in order, whether its entry was removed: one flat list (a table per frame would cost Redis more than the
# removals). With the bucket's marker missing (the state incomplete) each ack is held as well (``{message id},{user}``,
# the user read from the inbox key, scored by the frame's time), found or not, for the rebuild to honour.
ACK_INBOXES = """
local ttl = ARGV[1]
local removed, hold, held = {}, false, nil
local a = 2
local k = 1
while k <= #KEYS do
  if ARGV[a] == '*' then
    hold, held = redis.call('EXISTS', KEYS[k]) == 0, KEYS[k + 1]
    k, a = k + 2, a + 2
  else
    local at, count = ARGV[a], tonumber(ARGV[a + 1])
    local user = hold and string.match(KEYS[k], '^inbox:{[^}]*}:(.*)$')
    for j = a + 2, a + 1 + count do
      removed[#removed + 1] = redis.call('ZREM', KEYS[k], ARGV[j])
      if hold then
        redis.call('ZADD', held, 'NX', at, ARGV[j] .. ',' .. user)
      end
    end
    if hold then
      redis.call('EXPIRE', held, ttl)
    end
    k, a = k + 1, a + 2 + count
  end
end
return removed
"""

# Expiring inboxes (transition ``expire``'s inbox part, ``Inbox.expire``). KEYS per user bucket: its expired list, then
# the inbox of each user with expired deliveries; ARGV[1]: the pass's time (ms), then per key: ``*`` for the list, or a
# count c and c message ids. Each entry removed is noted on the list in the same step (``{message id},{user},{time}``,
# the user read from the inbox key) for the reconciler to record; the reply says, per id in order, whether it was
# removed. Run again (a retry after a dropped reply) it removes and notes nothing more.
EXPIRE_INBOXES = """
local at = ARGV[1]
local removed, noted = {}, nil
local a = 2
for k = 1, #KEYS do
  if ARGV[a] == '*' then
    noted, a = KEYS[k], a + 1
  else
    local count = tonumber(ARGV[a])
    local user = string.match(KEYS[k], '^inbox:{[^}]*}:(.*)$')
    for j = a + 1, a + count do
      local gone = redis.call('ZREM', KEYS[k], ARGV[j])
      removed[#removed + 1] = gone
      if gone == 1 then
        redis.call('RPUSH', noted, ARGV[j] .. ',' .. user .. ',' .. at)
      end
    end
    a = a + 1 + count
  end
end
return removed
"""

# Reading inboxes (``Inbox.pending``). KEYS per user bucket: its epoch marker, then the inboxes of the users asked for;
# ARGV[1]: how many ids per inbox, then per key ``*`` for a marker or ``-`` for an inbox. The reply holds, per key in
# order, 1 or 0 for a marker (whether it exists) or the inbox's first ids, oldest first: one call per slot instead of
# two pipelined commands per connect.
READ_INBOXES = """
local last = tonumber(ARGV[1]) - 1
local out = {}
for k, key in ipairs(KEYS) do
  if ARGV[k + 1] == '*' then
    out[k] = redis.call('EXISTS', key)
  else
    out[k] = redis.call('ZRANGE', key, 0, last)
  end
end
return out
"""

HELD_ACK_TTL_SECONDS = 86_400  # a held ack outlives any rebuild; one older is of a state rebuilt since (or given up)


def epoch_key(tag: str) -> str:
    return f"state:epoch:{tag}"


def post_key(post: str) -> str:
    return f"post:{post_tag(post)}:{post}"


def expiry_key(tag: str) -> str:
    return f"expiry:{tag}"


def inbox_key(user_id: str, tag: str | None = None) -> str:
    """The user's inbox; ``tag``: the user's bucket's, if the caller has it already."""
    return f"inbox:{tag or user_tag(user_id)}:{user_id}"


def trimmed_key(tag: str) -> str:
    return f"trimmed:{tag}"


def expired_key(tag: str) -> str:
    return f"expired:{tag}"


def held_key(tag: str) -> str:
    return f"held:{tag}"


NOTES = {"expired": expired_key, "trimmed": trimmed_key}  # the stages closed in Redis and noted for the reconciler


class Acked(NamedTuple):
    """A user's acks taken at one time (one ack frame)."""

    user_id: str
    at: int  # ms
    ids: tuple[str, ...]


class Noted(NamedTuple):
    """A page of one stage's notes (``Inbox.noted``): each delivery with the time it closed (ms), and the entries as
    read, each with its list's key, to forget once recorded."""

    marks: dict[Pair, int]
    entries: list[tuple[str, bytes]]
    more: bool  # some bucket's list held a full page: read again


def by_bucket(posts: Iterable[str]) -> dict[str, list[str]]:
    """Posts grouped by their bucket's tag."""
    buckets: defaultdict[str, list[str]] = defaultdict(list)
    for post in posts:
        buckets[post_tag(post)].append(post)
    return buckets


class Inbox:
    def __init__(self, redis: Redis, limit: int = 10_000) -> None:
        self.redis = redis
        self.limit = limit
        self.scripts = Scripts(redis)
        self._open = SlotScript(redis, OPEN_POSTS, once=True)  # counts: a retried call after a dropped reply would
        self._close = SlotScript(redis, CLOSE_POSTS, once=True)  # count twice (a close twice: a frame still owed gone)
        self._expire = SlotScript(redis, EXPIRE_POSTS)
        self._expire_inboxes = SlotScript(redis, EXPIRE_INBOXES)  # idempotent: a retry finds nothing more to note
        self._ack = SlotScript(redis, ACK_INBOXES, once=True)  # a retry would answer 0 for what the first removed
        self._read = SlotScript(redis, READ_INBOXES)

    def _per_post(self, pipe: Pipeline, script: SlotScript, args: Mapping[str, list[Any]], head: list[Any]) -> None:
        """Queue a post-state script over these posts (one call per hash slot): per post its bucket's expiry index and
        its hash as keys, and its arguments."""
        if args:
            keys = list(chain.from_iterable((expiry_key(post_tag(p)), post_key(p)) for p in args))
            script.stage(pipe, keys, list(chain.from_iterable((a, ()) for a in args.values())), head=head)

    def stage(self, pipe: Pipeline, messages: Iterable[Message], now_ms: int | None = None) -> None:
        """Queue the commands that open ``messages`` for their recipients: transition ``open`` for their posts, then
        their inbox entries (in this order: a count is never behind its entries). Topic messages are skipped (they
        are never replayed), and so are messages expired by ``now_ms`` (default: now): they could not be sent, and
        one forgotten on expiry and held again would be behind a trim counted after (``shared.model.poststate``)."""
        inboxes: defaultdict[str, dict[str, int]] = defaultdict(dict)  # user -> message id -> score
        posts: dict[str, list[Any]] = {}
        now = clock_ms() if now_ms is None else now_ms
        for post, batch in by_post(m for m in messages if m.topic is None and m.expires_ms > now).items():
            fields = post_fields(batch)
            posts[post] = [post, min(m.expires_ms for m in batch), len(fields), *chain.from_iterable(fields.items())]
            for m in batch:
                for user in m.users:
                    inboxes[user][m.id] = m.ts
        self._per_post(pipe, self._open, posts, [])
        if inboxes:
            per_bucket: defaultdict[str, list[str]] = defaultdict(list)
            for user in inboxes:
                per_bucket[user_tag(user)].append(user)
            keys: list[str] = []
            per_key: list[list[Any]] = []
            for tag, users in per_bucket.items():
                keys += [trimmed_key(tag), *(inbox_key(u, tag) for u in users)]
                per_key += [["*"], *([len(e), *chain.from_iterable((ts, m) for m, ts in e.items())] for e in (inboxes[u] for u in users))]
            self.scripts.open_inboxes.stage(pipe, keys, per_key, head=[self.limit])

    async def open(self, messages: list[Message], now_ms: int | None = None) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self.stage(pipe, messages, now_ms)
            await pipe.execute()

    async def pending(self, users: list[str], limit: int) -> list[list[str]]:
        """Each user's open message ids, oldest first (ids only: frames are read page by page).

        Raises ``Unavailable`` while the state is incomplete (being rebuilt): an inbox read then could
        miss messages, or return some the user has already acknowledged.
        """
        tags = {user_tag(u) for u in users}
        keys = [*map(epoch_key, tags), *map(inbox_key, users)]
        replies = await self._read.each(keys, [["*"]] * len(tags) + [["-"]] * len(users), head=[limit])
        if not all(replies[:len(tags)]):
            raise Unavailable("the delivery state is being rebuilt from MongoDB")
        return [[m.decode() for m in ids] for ids in replies[len(tags):]]

    async def frames(self, message_ids: list[str], now_ms: int) -> list[bytes | None]:
        """Each message's frame, as the bytes a socket is sent, or None where it is not held (expired, closed, or not
        written yet): one HMGET per post."""
        fields: defaultdict[str, list[str]] = defaultdict(list)
        for m in message_ids:
            i = index_of(m)
            fields[post_of(m)] += [str(i), f"x{i}"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for post, names in fields.items():
                pipe.hmget(post_key(post), names)
            replies = dict(zip(fields, await pipe.execute()))
        found: dict[str, bytes | None] = {}
        for post, names in fields.items():
            values = replies[post]
            for k in range(0, len(names), 2):
                frame, expires = values[k], values[k + 1]
                alive = frame is not None and expires is not None and int(expires) > now_ms
                found[message_id(post, int(names[k]))] = frame if alive else None
        return [found[m] for m in message_ids]

    async def still_open(self, pairs: list[Pair]) -> set[Pair]:
        """Those of ``pairs`` whose delivery is still open in its user's inbox (not acked, trimmed or expired): one
        ZMSCORE per user."""
        per_user: defaultdict[str, list[str]] = defaultdict(list)
        for m, u in pairs:
            per_user[u].append(m)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, ids in per_user.items():
                pipe.zmscore(inbox_key(user), ids)
            replies = await pipe.execute()
        return {(m, u) for (u, ids), scores in zip(per_user.items(), replies) for m, score in zip(ids, scores) if score is not None}

    async def close(self, pairs: list[Pair]) -> list[Pair]:
        """Close deliveries (acknowledged, expired or cancelled on record: the rebuild's); return those that were open,
        so each closes once. Only an entry in the user's own inbox closes: an id the user was never sent changes nothing.
        """
        removed = await self._remove(pairs)
        await self._settle(removed)
        return removed

    async def acknowledge(self, frames: list[Acked]) -> list[Pair]:
        """Close deliveries their users acknowledged (ack frames, each with its time); return those that were open.

        Only an entry in the user's own inbox closes. While the user's bucket has no epoch marker the ack is also held
        for the rebuild (``held_acks``), which closes it once the entry is back and records it ``acked``: the caller
        records only what this returns.
        """
        if not frames:
            return []
        per_bucket: defaultdict[str, list[Acked]] = defaultdict(list)
        for f in frames:
            per_bucket[user_tag(f.user_id)].append(f)
        keys: list[str] = []
        per_key: list[list[Any]] = []
        inboxes: dict[int, tuple[str, Sequence[str]]] = {}  # the user and ids of each inbox key, by its position
        for tag, bucket in per_bucket.items():
            keys += [epoch_key(tag), held_key(tag)]
            per_key += [["*"], ["*"]]
            for f in bucket:
                inboxes[len(keys)] = (f.user_id, f.ids)
                keys.append(inbox_key(f.user_id, tag))
                per_key.append([f.at, len(f.ids), *f.ids])
        removed = await self._removed(self._ack, keys, per_key, [HELD_ACK_TTL_SECONDS], inboxes)
        await self._settle(removed)
        return removed

    async def held_acks(self) -> list[tuple[Pair, int]]:
        """The acks held while the state was incomplete, each with its time (ms): every user bucket's, one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.zrange(held_key(tag), 0, -1, withscores=True)
            replies = await pipe.execute()
        return [(cast_pair(member), int(at)) for reply in replies for member, at in reply]

    async def forget_held(self, acks: list[tuple[Pair, int]]) -> None:
        """Drop these held acks (honoured); one taken since stays for the next rebuild."""
        members: defaultdict[str, list[str]] = defaultdict(list)
        for (m, u), _ in acks:
            members[held_key(user_tag(u))].append(f"{m},{u}")
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, names in members.items():
                pipe.zrem(key, *names)
            await pipe.execute()

    async def _remove(self, pairs: list[Pair]) -> list[Pair]:
        """Remove each (message, user) from the user's inbox; return those that were there."""
        if not pairs:
            return []
        flags = await self.scripts.zrem_each.each([inbox_key(u) for _, u in pairs], [[m] for m, _ in pairs])
        return [p for p, there in zip(pairs, flags) if there]

    async def _settle(self, closed: list[Pair]) -> None:
        """Transition ``close``: count closed deliveries against their messages, forgetting those nobody waits for."""
        if not closed:
            return
        per_post: defaultdict[str, Counter[int]] = defaultdict(Counter)
        for m, _ in closed:
            per_post[post_of(m)][index_of(m)] += 1
        args = {post: [post, len(counts), *chain.from_iterable(counts.items())] for post, counts in per_post.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            self._per_post(pipe, self._close, args, [])
            await pipe.execute()

    async def noted(self, stage: str, limit: int, now_ms: int) -> Noted:
        """Up to ``limit`` of the oldest notes per user bucket of deliveries closed in Redis at ``stage`` (``expired``:
        by ``expire``, at its time; ``trimmed``: by the inbox limit, at ``now_ms``), one round trip. Nothing is taken:
        the caller records them, then ``forget``s them."""
        key_of = NOTES[stage]
        keys = [key_of(tag) for tag in all_user_tags()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lrange(key, 0, limit - 1)
            replies = await pipe.execute()
        marks: dict[Pair, int] = {}
        for entry in chain.from_iterable(replies):
            m, user, *at = entry.decode().split(",")
            when = int(at[0]) if at else now_ms
            marks[m, user] = min(when, marks.get((m, user), when))
        return Noted(marks, [(key, entry) for key, reply in zip(keys, replies) for entry in reply],
                     any(len(reply) >= limit for reply in replies))

    async def forget(self, stage: str, noted: Noted) -> list[Pair]:
        """Drop these notes, once recorded; return the deliveries of those still there (another instance may have taken
        some). Trimmed ones are counted against their messages only now (transition ``close``), once each: a dispatch
        killed before it only overcounts, which keeps the frames until they expire."""
        flags = await self.scripts.lrem_each.each([key for key, _ in noted.entries], [[entry] for _, entry in noted.entries])
        removed = [cast_pair(entry) for (_, entry), there in zip(noted.entries, flags) if there]
        if stage == "trimmed":
            await self._settle(removed)
        return removed

    async def expire(self, now_ms: int, limit: int) -> tuple[list[Pair], bool]:
        """Transition ``expire`` for up to ``limit`` posts per bucket whose earliest expiry has passed: close their
        expired messages' deliveries, each noted ``expired`` at ``now_ms`` in its user's bucket in the same script
        (``EXPIRE_INBOXES``; recorded from there, ``noted``), then forget those messages. Returns the deliveries this
        call closed, and whether a bucket had more due posts than ``limit``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_post_tags():
                pipe.zrangebyscore(expiry_key(tag), "-inf", now_ms, start=0, num=limit)
            due = [p.decode() for reply in await pipe.execute() for p in reply]
        more = len(due) >= limit and any(len(v) >= limit for v in by_bucket(due).values())
        if not due:
            return [], False
        hashes = await self.scripts.hgetall_each.each([post_key(p) for p in due])
        expired: dict[str, list[int]] = {}
        pairs: list[Pair] = []
        for post, flat in zip(due, hashes):
            fields = dict(zip(flat[::2], flat[1::2]))
            expired[post] = [int(k[1:]) for k, v in fields.items() if k.startswith(b"x") and int(v) <= now_ms]
            pairs += [(message_id(post, i), u) for i in expired[post] for u in split_users(fields[b"u%d" % i])]
        open_ = await self._close_expired(pairs, now_ms)
        async with self.redis.pipeline(transaction=False) as pipe:
            self._per_post(pipe, self._expire, {p: [p, len(ix), *ix] for p, ix in expired.items()}, [now_ms])
            await pipe.execute()
        return open_, more

    async def _close_expired(self, pairs: list[Pair], at: int) -> list[Pair]:
        """Remove each expired (message, user) from the user's inbox and note those removed, closed at ``at``, in the
        user's bucket's expired list: one script call per user bucket. Returns those that were there."""
        if not pairs:
            return []
        per_user: defaultdict[str, list[str]] = defaultdict(list)
        for m, u in pairs:
            per_user[u].append(m)
        per_bucket: defaultdict[str, list[str]] = defaultdict(list)
        for user in per_user:
            per_bucket[user_tag(user)].append(user)
        keys: list[str] = []
        per_key: list[list[Any]] = []
        inboxes: dict[int, tuple[str, Sequence[str]]] = {}  # the user and ids of each inbox key, by its position
        for tag, users in per_bucket.items():
            keys.append(expired_key(tag))
            per_key.append(["*"])
            for user in users:
                inboxes[len(keys)] = (user, per_user[user])
                keys.append(inbox_key(user, tag))
                per_key.append([len(per_user[user]), *per_user[user]])
        return await self._removed(self._expire_inboxes, keys, per_key, [at], inboxes)

    async def _removed(self, script: SlotScript, keys: list[str], per_key: list[list[Any]], head: list[Any],
                       inboxes: dict[int, tuple[str, Sequence[str]]]) -> list[Pair]:
        """Run ``script`` once per slot of ``keys`` (one pipeline), whose reply flags each id of each inbox key in key
        order; return the (id, user) pairs flagged (removed from their inbox)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            groups = script.stage(pipe, keys, per_key, head=head)
            replies = await pipe.execute()
        removed: list[Pair] = []
        for group, flags in zip(groups, replies):
            found = iter(flags)
            removed += [(m, inboxes[k][0]) for k in group if k in inboxes for m in inboxes[k][1] if next(found)]
        return removed

    async def open_count(self) -> int:
        """Posts holding at least one message some recipient may still be sent."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_post_tags():
                pipe.zcard(expiry_key(tag))
            return sum(await pipe.execute())

    async def epoch(self) -> str | None:
        """The state's epoch, or None while any bucket's marker is missing (the state is incomplete)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.get(epoch_key(tag))
            values = await pipe.execute()
        if any(v is None for v in values):
            return None
        return ",".join(sorted({v.decode() for v in values}))

    async def incomplete(self) -> None:
        """Mark the whole state incomplete (every bucket's marker gone): no replay reads it until ``complete``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.delete(epoch_key(tag))
            await pipe.execute()

    async def complete(self) -> str:
        """Mark the state complete under a new epoch, in every bucket, and return it."""
        epoch = secrets.token_hex(6)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in all_user_tags():
                pipe.set(epoch_key(tag), epoch)
            await pipe.execute()
        return epoch


def cast_pair(entry: bytes) -> Pair:
    """A trimmed queue's, held acks' or expired list's entry, ``{message id},{user}`` (then ``,{time}`` for the
    latter), as a delivery."""
    m, user, *_ = entry.decode().split(",")
    return m, user
