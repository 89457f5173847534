"""The Redis client every service uses, failing fast when the server dies instead of hanging.

The kernel watches each connection: keepalive probes find a silent peer, and ``TCP_USER_TIMEOUT`` fails a
request whose bytes are not acknowledged within ``timeout`` seconds (a dead or unreachable server). A server that
is up but does not answer (stopped, or stuck in a long script) is bounded by redis-py's ``socket_timeout`` (its
default, 5 s), which ``ServiceConnection`` arms only when a read or a write has to wait for the socket.

``REDIS_URL`` names either one Redis or a Redis Cluster:

* ``redis://:PASSWORD@host:port/db`` -- one Redis (the password is its AUTH);
* ``redis+cluster://:PASSWORD@host:port,host:port,.../`` -- a Redis Cluster, by a few of its nodes
  (startup nodes: any one that answers tells the client the rest); the password is every node's.
  A cluster has no database numbers. The services then use redis-py's asyncio ``RedisCluster``,
  which sends each command to the master holding its key's slot and follows a failover.
  Which keys may be used together there: ``shared.keys``.
"""

from __future__ import annotations

import asyncio
import math
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import AuthenticationError, DataError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """A ``redis+cluster://`` URL, parsed: its startup nodes and the password."""

    nodes: list[tuple[str, int]]
    password: str | None
    username: str | None

    @classmethod
    def parse(cls, url: str) -> ClusterAddress | None:
        """The cluster ``url`` names, or None for a plain ``redis://`` URL."""
        parts = urlsplit(url)
        if parts.scheme != CLUSTER_SCHEME:
            return None
        credentials, _, hosts = parts.netloc.rpartition("@")
        user, _, password = credentials.partition(":")
        nodes = []
        for address in hosts.split(","):
            host, _, port = address.rpartition(":")
            nodes.append((host or "127.0.0.1", int(port or 6379)))
        return cls(nodes, unquote(password) or None, unquote(user) or None)


# What a Redis call raises when Redis (or the connection to it) fails: RedisError; a Redis Cluster's own errors that
# are not RedisErrors (SlotNotCoveredError while a master's slots are unserved); and what redis-py lets through from
# the transport (a write to a connection a dying node closed raises RuntimeError from asyncio, or an OSError).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, RuntimeError)
_PACKER = HiredisRespSerializer()


class ServiceConnection(Connection):
    """redis-py's asyncio connection with these changes:

    * a command written to a connection another task closed meanwhile fails as any dead connection does
      (``ConnectionError``: retried, or a 503) instead of with an ``AttributeError`` (a 500). A Redis Cluster client
      closes its nodes' connections when a failover makes it refresh the topology, also connections a request is still
      opening (seen in a chaos soak: 3 posts answered 500);
    * commands are packed by hiredis, in C: the asyncio connection packs in Python, argument by argument, which cost
      8.5 ms for a hand-over script of 6,000 arguments (hiredis: 1.2 ms, the same bytes), 40% of collect's CPU in a
      storm of 1,000-message posts. A command named in one word goes to hiredis as it is (redis-py's hiredis packer
      first copies the arguments, checking each for a memoryview: half its cost at 800 arguments); a command named in
      two (``CLIENT SETNAME``) or with a memoryview goes through that packer, and an argument hiredis does not take
      is packed by redis-py;
    * a reply already in the parser's buffer is read without arming a timeout. redis-py 8 reads each reply under
      ``socket_timeout`` (5 s unless set), an asyncio timeout entered and left per reply: a timer, the task lookup and
      a ``getpid`` system call, ~5 µs, half of what a pipelined command costs it. A pipeline's replies arrive together,
      so only the first read of each chunk waits for the socket, under the timeout; the rest are parsed from memory.
      (A reply split across chunks is then waited for without the timeout: bytes of it are already here, so Redis
      was answering.)
    * likewise a write that cannot wait is not run under the timeout: redis-py runs every write in a task of its own
      under ``asyncio.wait_for``. One that can wait (a command past the buffer's high-water mark, or bytes still
      unsent) still is, as are a health check's PING and a reconnect."""

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            if isinstance(args[0], str) and " " not in args[0]:
                return [hiredis.pack_command(args)]
            packed: list[bytes] = _PACKER.pack(*args)
        except (TypeError, DataError):  # hiredis takes exact types only: an int subclass (bson's Int64 from MongoDB)
            return super().pack_command(*args)  # goes through redis-py's own packing, as does an argument it refuses
        return packed

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None, *,
                            disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
        if timeout is None and self._parser_has_data():
            timeout = math.inf  # redis-py's "no timeout"
        return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error,
                                           push_request=push_request)

    def _parser_has_data(self) -> bool:
        reader = getattr(self._parser, "_reader", None)  # hiredis's Reader, once connected
        return reader is not None and bool(reader.has_data())

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if timeout and self._writes_at_once(command, check_health):
            self.socket_timeout = None  # redis-py's own path, minus the timeout (restored below)
        try:
            await super().send_packed_command(command, check_health)
        except AttributeError as exc:
            if self._writer is not None:
                raise
            raise RedisConnectionError("the connection was closed while a command was written on it") from exc
        finally:
            self.socket_timeout = timeout

    def _writes_at_once(self, command: Any, check_health: bool) -> bool:
        """Whether sending ``command`` is a write that cannot wait: the connection is open, owes no health check, has
        nothing left to write, and the command fits under its buffer's high-water mark (so no drain waits for it)."""
        if self._writer is None or not self.is_connected or not isinstance(command, list):
            return False
        if check_health and self.health_check_interval and asyncio.get_running_loop().time() > self.next_health_check:
            return False
        transport = self._writer.transport
        return transport.get_write_buffer_size() == 0 and sum(map(len, command)) < transport.get_write_buffer_limits()[1]


class ServicePool(ConnectionPool):
    """redis-py's pool of connections to one Redis, without what its ``get_connection`` and ``release`` add to every
    command for what these services do not use: an ``asyncio.Lock`` round each (a pool's bookkeeping has no await in
    it), four awaited OpenTelemetry counter updates (redis-py's own metrics, off here: the services count their own),
    and an event after each release (for re-authenticating with streaming credentials). With ``ServiceConnection``'s
    writes, a GET to a local Redis took 56-61 µs of the client's CPU instead of 78-80, and ~82 µs of wall clock
    instead of ~100 (20,000 in a loop; a pipeline of two: 79-82 against ~112). Either change alone saved less than a
    third of that: each leaves the other's extra turns of the event loop."""

    async def get_connection(self, *_: Any, **__: Any) -> Connection:
        connection: Connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def redis_client(url: str, timeout: float = 3.0) -> Redis:
    """A client for the Redis or the Redis Cluster ``url`` names (both answer the same commands)."""
    seconds = max(1, int(timeout))
    kernel_checks = {socket.TCP_KEEPIDLE: seconds, socket.TCP_KEEPINTVL: 1, socket.TCP_KEEPCNT: 3,
                     socket.TCP_USER_TIMEOUT: int(timeout * 1000)}
    common: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_keepalive": True,
                              "socket_keepalive_options": kernel_checks}
    cluster = ClusterAddress.parse(url)
    if cluster is not None:
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.nodes], password=cluster.password,
                              username=cluster.username, **common)
        # RedisCluster takes no connection class: set it where the nodes it discovers get theirs, and on its startup nodes
        client.nodes_manager.connection_kwargs["connection_class"] = ServiceConnection
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = ServiceConnection
        return client  # type: ignore[return-value]
    # One immediate retry on a fresh connection: a pooled connection that died with a Redis restart fails its
    # first use, which would otherwise reach a caller (a 503 from collect) once Redis is already back.
    pool = ServicePool.from_url(url, health_check_interval=10, retry=Retry(NoBackoff(), 1),
                                connection_class=ServiceConnection, **common)
    return Redis.from_pool(pool)


def text(value: bytes | str) -> str:
    """A Redis reply as text (the project's clients answer bytes; redis-py's types allow str too)."""
    return value.decode() if isinstance(value, bytes) else value


async def redis_alive(client: Redis) -> bool:
    """Whether Redis answers a PING (for health reports)."""
    try:
        return bool(await client.ping())
    except RedisError:
        return False


def require_redis_credentials(service: str, url: str, timeout: float = 3.0) -> None:
    """Stop at start if Redis refuses the credentials in ``url``; a Redis that is down is not fatal (it may come back).
    For a cluster, its first startup node is asked."""
    cluster = ClusterAddress.parse(url)
    if cluster is not None:
        host, port = cluster.nodes[0]
        client = redis.Redis(host, port, password=cluster.password, username=cluster.username,
                             socket_connect_timeout=timeout, socket_timeout=timeout)
    else:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except AuthenticationError as exc:  # a subclass of ConnectionError: caught first
        where = client.get_connection_kwargs()
        raise SystemExit(f"{service}: Redis at {where.get('host')}:{where.get('port')} refused the credentials in "
                         f"REDIS_URL (redis://:PASSWORD@host:port/db or {CLUSTER_SCHEME}://:PASSWORD@host:port,...): "
                         f"{exc}") from None
    except RedisError:
        pass
    finally:
        client.close()
