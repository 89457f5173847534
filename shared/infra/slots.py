"""The rules every Redis key follows so the same code runs on one Redis and on a Redis Cluster.

A Redis Cluster splits the keyspace into 16384 hash slots spread over its masters; a key's slot is
CRC16 of the key, or of the part between its first ``{`` and the next ``}`` (its *hash tag*) when
there is one. One command, ``MULTI`` or Lua script may only touch keys of a single slot. So:

1. **One key per command wherever possible.** Pipelines of single-key commands are fine anywhere:
   redis-py's ``RedisCluster`` splits a pipeline by node and sends each part at once. Pipelines are
   never transactions (``transaction=False``); nothing uses ``MULTI``/``WATCH``.
2. **A batch script runs once per slot** (``shared.infra.scripts.SlotScript``): its keys are grouped by
   ``key_slot`` and each group is one call, queued on one pipeline. On a single Redis there is one
   group, one call, as before (no cost there); on a cluster the body is sent with each call
   (``EVAL``, not ``EVALSHA``: a node's script cache is lost by a failover or a restart, and redis-py
   refuses ``EVALSHA`` in a cluster pipeline).
3. **Keys used together in one command or script share a hash tag**, chosen for small, rarely
   written sets: node cards and their index (``node:{nodes}:<id>``, ``{nodes}``: one ``MGET`` reads
   every card) and topic counts and their index (``topic:{topics}:<name>``, ``{topics}``: one script
   writes a count and keeps the index true). Each tag is one slot, hence one master: fine for a few
   hundred nodes and topics, written only when a count changes.
4. **Per-user keys carry a bucket tag**: ``inbox:{u<b>}:<user>`` and ``route:{u<b>}:<user>``, where ``b``
   is the CRC32 of the user id modulo ``USER_BUCKETS`` (64). The buckets spread the users evenly over
   up to 64 masters, yet a batch of any number of users is at most 64 script calls (rule 2) instead of
   one per user, which is what a cluster costs per recipient in Python (``user_tag``; measured: steady
   0.41 CPU-s per 1,000 messages with 256 buckets, 0.30-0.33 with 64, 0.24-0.28 on one Redis). More masters than
   that need more buckets: a new constant renames the keys, so it is chosen once per deployment.
   Per-post keys carry a bucket tag too: ``post:{p<b>}:<post>``, beside their bucket's expiry index
   ``expiry:{p<b>}`` (``b``: the CRC32 of the post id modulo ``POST_BUCKETS``), so one script changes a
   post's delivery state and its expiry together (``shared.delivery.inbox``), at most 64 calls per batch.
5. **Singletons** (``handover``, ``lease:reconciler``) take single-key commands only; each
   lives on one master. The state's completeness marker is not one: ``state:epoch:{u<b>}``, one per
   user bucket, beside the inboxes it vouches for, so a master restarted empty is noticed by the
   markers it lost (``shared.delivery.inbox``), whichever master it is; the acks held while a marker is
   missing (``held:{u<b>}``) share that tag too, so one script removes an inbox entry, reads the marker
   and holds the ack; so do the notes of closed deliveries not yet on record (``expired:{u<b>}``,
   ``trimmed:{u<b>}``), so the script that removes an entry notes it in the same step.
6. **A stream that would be a hot spot is sharded**: ``STREAM_SHARDS`` shards, a post going to one
   by the CRC32 of its id; every dispatch instance reads every shard, one loop per shard
   (``shared.delivery.stream``). A shard is a stream per priority tier under one tag, ``{push:deliveries:<i>}``
   (``{push:deliveries}`` when 1, the default), with ``:high`` and ``:low`` for those tiers: one
   blocking read waits on the three.
7. **Nothing enumerates the keyspace** (no ``KEYS``, no ``SCAN``): sets (``{nodes}``, ``{topics}``)
   list what must be listed. A cluster has no database numbers: one cluster holds one deployment.
8. **Scheduled messages** share the tag ``{schedule}`` (the schedule, the claims, the held posts'
   hashes, the cancelled ids and the notes of cancels not yet on record): their claim, settle, cancel and
   put-back scripts touch several at once (``shared.delivery.schedule``).

A new key follows the same rules: give it a tag only if a script or multi-key command must see it
with another key, and batch per-entity keys through ``SlotScript`` or a pipeline.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence

from redis.crc import key_slot

from shared.infra.clients import is_cluster

USER_BUCKETS = 64
POST_BUCKETS = 64


def user_tag(user_id: str) -> str:
    """The hash tag of a user's keys: one of ``USER_BUCKETS`` (rule 4)."""
    return f"{{u{zlib.crc32(user_id.encode()) % USER_BUCKETS}}}"


def all_user_tags() -> list[str]:
    return [f"{{u{b}}}" for b in range(USER_BUCKETS)]


def post_tag(post: str) -> str:
    """The hash tag of a post's delivery state and of its bucket's expiry index: one of ``POST_BUCKETS`` (rule 4)."""
    return f"{{p{zlib.crc32(post.encode()) % POST_BUCKETS}}}"


def all_post_tags() -> list[str]:
    return [f"{{p{b}}}" for b in range(POST_BUCKETS)]


def slot_groups(redis: object, keys: Sequence[str]) -> list[list[int]]:
    """The positions of ``keys`` grouped by hash slot on a cluster (in first-seen order); one group on a single Redis."""
    if not is_cluster(redis):
        return [list(range(len(keys)))] if keys else []
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key_slot(key.encode())].append(i)
    return list(groups.values())
