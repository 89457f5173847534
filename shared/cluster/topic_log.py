"""Each topic's positions and history in Redis: what lets a subscriber resume a topic from its last position.

Keys, per topic under its own hash tag ``{t:<name>}`` (one slot per topic, so one script sees all three;
``*``, the broadcasts' stream, is a topic here like any other):

* ``position:{t:<name>}`` -- a HASH: ``o`` the offset of the topic's last message, ``e`` its epoch (a random name
  given when the hash is created, so a Redis restarted empty, or a topic idle past ``POSITION_SECONDS``, starts a
  new epoch and old positions no longer compare);
* ``history:{t:<name>}`` -- a STREAM of the topic's last messages, entry id ``<offset>-0``, fields ``m`` (message
  id), ``t`` (when it was placed, ms), ``f`` (the frame as collect encoded it, without its position). Capped at the
  namespace's ``history_size`` on every append and expiring ``history_seconds`` after the last; entries older
  than that are skipped when read;
* ``placed:{t:<name>}:<message id>`` -- the position a message was given, for ``guard`` seconds: a stream entry
  that dispatch forwards again (a retry) keeps its offset rather than taking a second one.

Dispatch gives a cycle's topic messages their positions (``append``) before it reads which nodes hold their
topics, and a node registers a subscription before it reads the history for it (``read``); so whatever the
timing, a message either is in the history the node reads or reaches the node live (``shared.model.topics``).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.infra.clients import text
from shared.infra.scripts import SlotScript
from shared.model.message import Message
from shared.model.topics import Logged, Namespaces, Position, recover

POSITION_SECONDS = 7 * 24 * 3600  # a topic's position outlives its history: idle this long, it starts a new epoch

# The topic's epoch (KEYS[1]: its position, KEYS[2]: its history; ARGV[1]: a fresh epoch): a missing position is
# created at offset 0 with the fresh epoch, and any history left without one is dropped (its offsets would not compare).
EPOCH = """
local position, history = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', position, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', history)
  redis.call('HSET', position, 'e', epoch, 'o', 0)
end
"""

# Transition ``dispatched`` of topic messages: each takes the next offset of its topic, once. KEYS: the topic's
# position and history, then each message's guard; ARGV: a fresh epoch, now (ms), the position's and the guards'
# TTLs, the history's size and seconds, then per message its id and frame. Replies "offset:epoch" per message.
APPEND = EPOCH + """
local now, keep, guard_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local size, seconds = tonumber(ARGV[5]), tonumber(ARGV[6])
local placed = {}
for i = 3, #KEYS do
  local id, frame = ARGV[5 + 2 * (i - 2)], ARGV[6 + 2 * (i - 2)]
  local kept = redis.call('GET', KEYS[i])
  if kept then
    placed[#placed + 1] = kept
  else
    local offset = redis.call('HINCRBY', position, 'o', 1)
    if size > 0 then
      redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 'm', id, 't', now, 'f', frame)
    end
    local value = offset .. ':' .. epoch
    redis.call('SET', KEYS[i], value, 'EX', guard_ttl)
    placed[#placed + 1] = value
  end
end
redis.call('EXPIRE', position, keep)
if size > 0 then redis.call('EXPIRE', history, seconds) end
return placed
"""

# A topic's position (created with a fresh epoch when missing; read, it is kept ``POSITION_SECONDS`` more) and its
# history after an offset. KEYS: position, history; ARGV: a fresh epoch, the position's TTL, the offset to read after
# (-1: none), the most entries to read.
READ = EPOCH + """
redis.call('EXPIRE', position, tonumber(ARGV[2]))
local offset = tonumber(redis.call('HGET', position, 'o'))
local after = tonumber(ARGV[3])
local entries = {}
if after >= 0 and after < offset then
  entries = redis.call('XRANGE', history, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[4]))
end
return {epoch, offset, entries}
"""


def tag(topic: str) -> str:
    return f"{{t:{topic}}}"


def position_key(topic: str) -> str:
    return f"position:{tag(topic)}"


def history_key(topic: str) -> str:
    return f"history:{tag(topic)}"


def fresh_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic's position and the history read with it (offset order, none older than its namespace keeps)."""

    position: Position
    history: list[Logged]

    def recover(self, since: Position) -> list[Logged] | None:
        return recover(since, self.position, self.history)


class TopicLog:
    def __init__(self, redis: Redis, namespaces: Namespaces, guard_seconds: int = 600) -> None:
        self.namespaces = namespaces
        self.guard_seconds = guard_seconds
        self.append_script = SlotScript(redis, APPEND)
        self.read_script = SlotScript(redis, READ)
        self.redis = redis

    async def append(self, messages: Sequence[Message], now: int) -> dict[str, Position]:
        """Give each topic message (or broadcast) its topic's next position, once: a message placed before keeps
        its position. One script call per topic, in one round trip."""
        by_topic: defaultdict[str, list[Message]] = defaultdict(list)
        for m in messages:
            assert m.topic is not None
            by_topic[m.topic].append(m)
        if not by_topic:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic, ms in by_topic.items():
                policy = self.namespaces.policy(topic)
                guards = [f"placed:{tag(topic)}:{m.id}" for m in ms]
                args = [fresh_epoch(), now, POSITION_SECONDS, self.guard_seconds, policy.history_size, policy.history_seconds]
                self.append_script.stage(pipe, [position_key(topic), history_key(topic), *guards],
                                         head=[*args, *(x for m in ms for x in (m.id, m.frame))])
            replies = await pipe.execute()
        placed = {}
        for ms, reply in zip(by_topic.values(), replies):
            for m, value in zip(ms, reply):
                offset, _, epoch = text(value).partition(":")
                placed[m.id] = Position(int(offset), epoch)
        return placed

    async def read(self, wanted: dict[str, int | None], now: int, limit: int | None = None) -> dict[str, TopicState]:
        """Each topic's position and its history after the offset given (None: the position only), at most ``limit``
        entries (default: as many as its namespace keeps), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic, after in wanted.items():
                policy = self.namespaces.policy(topic)
                count = policy.history_size if limit is None else min(limit, policy.history_size)
                self.read_script.stage(pipe, [position_key(topic), history_key(topic)],
                                       head=[fresh_epoch(), POSITION_SECONDS, -1 if after is None or not count else after, count])
            replies = await pipe.execute()
        states = {}
        for topic, (epoch, offset, entries) in zip(wanted, replies):
            oldest = now - self.namespaces.policy(topic).history_seconds * 1000
            history = [Logged(int(text(entry_id).partition("-")[0]), text(f[b"m"]), int(f[b"t"]), f[b"f"])
                       for entry_id, f in ((e[0], dict(zip(e[1][::2], e[1][1::2]))) for e in entries)]
            states[topic] = TopicState(Position(int(offset), text(epoch)), [m for m in history if m.at >= oldest])
        return states
