"""Centrifugo as a peer in ``make bench PEER=centrifugo`` (``--peer centrifugo``): the bench's own client processes
and scenarios (steady, latency, broadcast) drive it right after this project, so every figure has Centrifugo's
beside it from the same sitting.

It runs ``bin/centrifugo`` (``make bin/centrifugo``: ``go install`` of the pinned v6.9.1) as two nodes, as many as
our push nodes, on a Redis of their own (``engine.type`` redis: the nodes' PUB/SUB, and each channel's history as a
Redis stream), on free loopback ports, started and stopped with ``tools.cluster`` as our cluster is. The mapping:

* a user is a connection whose token (an HS256 JWT, minted here as the application's backend would) subscribes it,
  on the server side (the ``channels`` claim), to its personal channel ``user:<id>`` and to ``broadcast:all``, as
  each of our sockets gets its user's messages and every broadcast;
* a post of N messages is one ``POST /api/batch`` of N ``publish`` commands with the API key, run concurrently
  (``"parallel": true``); a broadcast is a ``publish`` to ``broadcast:all``. A message's data is our payload plus
  ``id`` (for the tally) and ``sent`` (the post's send time, wall-clock ms). Both namespaces keep a history
  (``HISTORY``), so each publication is written to Redis before it is sent, as ours are stored first;
* the client speaks Centrifugo's JSON protocol: a ``connect`` command with the token, whose reply lists the server-side
  subscriptions; publications arrive as ``push`` replies, several to a websocket frame, one a line; a ping (``{}``)
  is answered with a pong (``{}``). Centrifugo has no acks: its clients send none.

Latency on both sides of such a run is from the post's send time (``sent`` in the payload; ``Api(stamp=True)`` for
ours) to the socket: Centrifugo gives no acceptance time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import jwt
import orjson

from loadtest.api import Api, Rejected, messages_of, stamp
from loadtest.inbox import Client, Delivery, TakingConnection, dial
from loadtest.target import Target, cluster_in
from tools.cluster import ROOT, free_port

BINARY = ROOT / "bin" / "centrifugo"
NODES = 2
SECRET = "bench-centrifugo-connection-token-hmac-key"  # the connection tokens' HMAC key: loopback only, like our development keys
API_KEY = "bench-centrifugo-api-key"
BROADCAST = "broadcast:all"
HISTORY = {"history_size": 100, "history_ttl": "600s"}  # each channel's last 100 publications, kept 10 minutes


def config(port: int, redis_address: str) -> dict[str, Any]:
    """A node's configuration (v6 keys)."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "warn"},
        "engine": {"type": "redis", "redis": {"address": [redis_address]}},
        "client": {"token": {"hmac_secret_key": SECRET}},
        "http_api": {"key": API_KEY},
        "channel": {"namespaces": [{"name": "user", **HISTORY}, {"name": "broadcast", **HISTORY}]},
        "usage_stats": {"disabled": True},
    }


@dataclass(frozen=True)
class CentrifugoClient(Client):
    """Centrifugo's client side: its frames are newline-separated replies anyway (``bundles`` changes nothing)."""

    path: ClassVar[str] = "/connection/websocket"
    acks: ClassVar[bool] = False

    async def open(self, url: str, token: str, source: str | None = None) -> TakingConnection:
        """A socket whose connect command was answered (its server-side subscriptions made)."""
        ws = await dial(url, source)
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
        reply = orjson.loads((await asyncio.wait_for(ws.recv(), 30)).splitlines()[0])
        if "connect" not in reply:
            raise RuntimeError(f"expected a connect reply, got {reply}")
        return ws

    def read(self, data: str | bytes) -> tuple[list[Delivery], str | None]:
        messages, answer = [], None
        for line in data.splitlines():
            reply = orjson.loads(line)
            if not reply:
                answer = "{}"
            elif "pub" in reply.get("push", {}):
                message = reply["push"]["pub"]["data"]
                messages.append((message["id"], message["sent"]))
        return messages, answer


CLIENT = CentrifugoClient()


class CentrifugoApi(Api):
    """The scenarios' calls answered by Centrifugo (its HTTP API at ``collect_url``): tokens minted here, posts as
    publish commands. Every post is stamped (``sent``), whatever ``stamp`` says: the client reads latency from it."""

    def __init__(self, auth_url: str, collect_url: str, session: aiohttp.ClientSession, stamp: bool = True) -> None:
        super().__init__(auth_url, collect_url, session, stamp=True)
        self.ids = itertools.count()
        self.headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}

    async def token(self, user_id: str, ttl_seconds: int = 3600, topics: list[str] | None = None) -> str:
        if topics:
            raise ValueError("the Centrifugo peer maps users and broadcasts, not topics")
        claims = {"sub": user_id, "exp": int(time.time()) + ttl_seconds, "channels": [f"user:{user_id}", BROADCAST]}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    async def post(self, body: dict[str, Any]) -> list[str]:
        """One batch of a publish per message (to its user's channel, or ``broadcast:all``); their ids, or
        ``Rejected`` when the batch or any publish in it failed."""
        messages = messages_of(body)
        ids = [f"c{next(self.ids)}" for _ in messages]
        for message, message_id in zip(messages, ids):
            message["payload"]["id"] = message_id
        stamp(body)
        commands = [{"publish": {"channel": BROADCAST if m.get("broadcast") else f"user:{m['user_id']}", "data": m["payload"]}}
                    for m in messages]
        try:
            async with self.session.post(f"{self.collect_url}/api/batch", headers=self.headers,
                                         data=orjson.dumps({"commands": commands, "parallel": True})) as r:
                if r.status != 200:
                    raise Rejected(f"HTTP {r.status}")
                replies = (await r.json(content_type=None))["replies"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Rejected(type(exc).__name__) from None
        if errors := [reply["error"] for reply in replies if "error" in reply]:
            raise Rejected(f"error {errors[0].get('code')}")
        return ids

    async def connections(self, push_urls: list[str]) -> int:
        """The connections every node reports (``/api/info``; each node learns the others' counts every few
        seconds)."""
        async with self.session.post(f"{self.collect_url}/api/info", headers=self.headers, data=b"{}") as r:
            nodes = (await r.json(content_type=None))["result"]["nodes"]
        return sum(int(node.get("num_clients", 0)) for node in nodes)


@contextlib.contextmanager
def centrifugo(workdir: Path | None = None, nodes: int = NODES) -> Iterator[Target]:
    """Redis and ``nodes`` Centrifugo nodes on it, on free ports; data, logs and stopping as ``cluster_in``."""
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is missing: run `make bin/centrifugo` (needs Go)")
    with cluster_in(workdir) as cluster:
        redis_port = free_port()
        cluster.start_redis(redis_port)
        urls = []
        for _ in range(nodes):
            port = free_port()
            conf = cluster.workdir / f"centrifugo-{port}.json"
            conf.write_text(json.dumps(config(port, f"redis://127.0.0.1:{redis_port}")))
            cluster.wait_tcp(cluster.spawn(f"centrifugo-{port}", [str(BINARY), "--config", str(conf)]), port)
            urls.append(f"http://127.0.0.1:{port}")
        yield Target("", urls[0], urls, cluster.redis_url(redis_port), {p.name: p.popen.pid for p in cluster.procs},
                     client=CLIENT, api=CentrifugoApi)
