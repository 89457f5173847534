"""The services' Redis connection packs commands in C into the very bytes redis-py's own packing writes."""

from __future__ import annotations

import pytest
from bson.int64 import Int64
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from shared.infra.clients import ServiceConnection

COMMANDS = [
    ("EVAL", "return 1", 1, "k", *[a for i in range(500) for a in (str(i), b'{"type":"message","payload":"\\u00e9"}', i, -i)]),
    ("ZADD", "inbox:{u1}:alice", 1765000000000, "m.0", 0.25, "m.1"),
    ("SET", "k", "é", "EX", 60),
    ("CONFIG GET", "maxmemory"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "big", b"x" * 100_000),
    ("ZADD", "expiry:{p1}", Int64(1765000000000), "post"),  # a number read back from MongoDB
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_commands_are_packed_into_the_bytes_redis_py_writes(command: tuple) -> None:
    """Scripts with thousands of mixed arguments, scores, UTF-8 text, multi-word names, large values and int subclasses."""
    assert b"".join(ServiceConnection().pack_command(*command)) == b"".join(Connection().pack_command(*command))


@pytest.mark.parametrize("value", [None, True])
def test_an_argument_redis_cannot_take_is_refused_as_redis_py_refuses_it(value: object) -> None:
    """None or a bool raises redis-py's DataError before anything is written."""
    with pytest.raises(DataError):
        ServiceConnection().pack_command("SET", "k", value)
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", value)
