"""Locust users for a running cluster (``make run``): browsers on websockets, and business systems posting.

Run headless against ``make run`` (loopback only), from the repository root::

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 30s

``PushUser`` connects with a token from auth, receives messages, acks them every 100 ms and reports
each message's latency (receive time minus the frame's ``ts``, collect's acceptance time) as a
``WS`` request named ``message latency``; the handshake up to the welcome frame is ``WS connect``.
``CollectUser`` (``POSTERS`` of them, 2 by default) posts batches of ``BATCH`` messages to users
currently connected in this process. Both classes share that list of users, so run locust as a
single process (not ``--processes``/distributed). Addresses come from ``AUTH_URL``,
``COLLECT_URL`` and ``PUSH_URLS`` (comma-separated ``ws://host:port/ws``), defaulting to ``make run``'s.

It uses ``websocket-client``, which locust already installs and which cooperates with gevent.
"""

from __future__ import annotations

import itertools
import os
import random
import time

import orjson
import websocket
from locust import HttpUser, User, between, constant, events, task
from locust.clients import HttpSession

from shared.infra.config import DEV_ADMIN_KEY, DEV_API_KEYS

AUTH_URL = os.environ.get("AUTH_URL", "http://127.0.0.1:8001")
COLLECT_URL = os.environ.get("COLLECT_URL", "http://127.0.0.1:8002")
PUSH_URLS = os.environ.get("PUSH_URLS", "ws://127.0.0.1:8101/ws,ws://127.0.0.1:8102/ws").split(",")
ADMIN_KEY = os.environ.get("AUTH_ADMIN_KEY", DEV_ADMIN_KEY)
API_KEY = os.environ.get("COLLECT_API_KEYS", DEV_API_KEYS).split(",")[0].partition(":")[2]
BATCH = int(os.environ.get("BATCH", "10"))
ACK_EVERY_SECONDS = 0.1

CONNECTED: set[str] = set()
_numbers = itertools.count()
_run = f"locust{random.randrange(16**6):06x}"


class PushUser(User):
    """A browser: one websocket to a push node (spread round-robin), receiving and acking."""

    wait_time = constant(0)

    def on_start(self) -> None:
        n = next(_numbers)
        self.user_id = f"{_run}-{n}"
        auth = HttpSession(AUTH_URL, self.environment.events.request, self)
        reply = auth.post("/v1/tokens", json={"user_id": self.user_id, "ttl_seconds": 3600},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}, name="auth token")
        reply.raise_for_status()
        url = f"{PUSH_URLS[n % len(PUSH_URLS)]}?token={reply.json()['token']}"
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=10)
            welcome = orjson.loads(self.ws.recv())
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"expected a welcome frame, got {welcome}")
        except Exception as exc:  # reported to locust as a failed connect, then the user stops
            self.fire("connect", started, 0, exc)
            raise
        self.fire("connect", started, 0, None)
        self.ws.settimeout(1)
        self.unacked: list[str] = []
        self.acked_at = time.monotonic()
        CONNECTED.add(self.user_id)

    def on_stop(self) -> None:
        CONNECTED.discard(self.user_id)
        if getattr(self, "ws", None) is not None:
            self.ws.close()

    def fire(self, name: str, started: float, length: int, exc: Exception | None) -> None:
        events.request.fire(request_type="WS", name=name, response_time=(time.perf_counter() - started) * 1000,
                            response_length=length, exception=exc, context={})

    @task
    def receive(self) -> None:
        """Wait up to a second for a frame; report a message's latency; ack what arrived every 100 ms."""
        try:
            data = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            data = None
        if data:
            frame = orjson.loads(data)
            if frame.get("type") == "message":
                latency_ms = time.time() * 1000 - frame["ts"]
                events.request.fire(request_type="WS", name="message latency", response_time=latency_ms,
                                    response_length=len(data), exception=None, context={})
                self.unacked.append(frame["id"])
        if self.unacked and time.monotonic() - self.acked_at >= ACK_EVERY_SECONDS:
            self.ws.send(orjson.dumps({"type": "ack", "ids": self.unacked[:1000]}).decode())
            del self.unacked[:1000]
            self.acked_at = time.monotonic()


class CollectUser(HttpUser):
    """A business system posting batches of ``BATCH`` messages to connected users."""

    host = COLLECT_URL
    fixed_count = int(os.environ.get("POSTERS", "2"))
    wait_time = between(0.05, 0.15)

    @task
    def post_batch(self) -> None:
        users = random.sample(sorted(CONNECTED), min(BATCH, len(CONNECTED)))
        if not users:
            return
        body = {"messages": [{"user_id": u, "payload": {"sent": time.time()}} for u in users]}
        self.client.post("/v1/messages", data=orjson.dumps(body), name="POST /v1/messages",
                         headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
