"""A client for business systems: send messages through collect, read their status and who is online.

``PushClient`` blocks (the standard library's ``urllib``); ``AsyncPushClient`` is the same API for
asyncio (``aiohttp``). Both are thin shells around one I/O-free core: each method builds a ``Call``,
and ``RetryPolicy`` decides, from the answer, whether to wait and try again.

Retries: a 503 (a dependency is down; nothing or maybe something was stored), a 429 (load shed or
rate limited, honouring ``Retry-After``) or a connection error is retried with exponential backoff
and full jitter, up to ``attempts`` tries. Every post carries an ``Idempotency-Key`` (yours, or a
random one made once per call), so a retry of a post that was in fact stored stores nothing twice.
Any other error is raised at once as ``PushError`` with collect's ``code`` and ``message``.

    client = PushClient("http://127.0.0.1:8002", api_key="...")
    message_id = client.send("alice", {"text": "hello"}, ttl=3600, priority="high")
    client.status(message_id)["recipients"]
    client.publish("news", {"headline": "..."}); client.broadcast({"maintenance": "in 5 minutes"})
    reminder = client.send("alice", {"text": "meeting"}, delay_seconds=600)  # or deliver_at=<ms since epoch>
    client.cancel(reminder)  # PushError 404 once it fired
    client.presence(["alice", "bob"])  # {"alice": 1, "bob": 0}
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

RETRIED_STATUSES = frozenset({429, 503})


class PushError(Exception):
    """collect refused the call (``status`` 0: it could not be reached at all)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to collect, and the status that means it worked."""

    method: str
    path: str
    body: Any = None
    ok: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode()


def message(target: dict[str, Any], payload: Any, **fields: Any) -> dict[str, Any]:
    """One message's body: its target, payload and the optional fields given (``ttl_seconds``, ``deliver_at`` in ms
    since the epoch or ``delay_seconds`` to schedule it, ``priority``); None leaves collect's default."""
    item = {**target, "payload": payload}
    item.update({name: value for name, value in fields.items() if value is not None})
    return item


def fields_of(ttl: int | None, deliver_at: int | None, delay_seconds: int | None, priority: str | None) -> dict[str, Any]:
    return {"ttl_seconds": ttl, "deliver_at": deliver_at, "delay_seconds": delay_seconds, "priority": priority}


def post(body: dict[str, Any], idempotency_key: str | None) -> Call:
    return Call("POST", "/v1/messages", body, 202, {"Idempotency-Key": idempotency_key or uuid.uuid4().hex})


def error_of(status: int, text: str) -> PushError:
    if status == 0:
        return PushError(0, "unreachable", text)
    try:
        error = json.loads(text)["error"]
        return PushError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return PushError(status, "http", text[:200])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 0.2
    cap: float = 5.0

    def judge(self, attempt: int, status: int, text: str, retry_after: str | None = None) -> float:
        """After try ``attempt`` answered ``status`` (0: unreachable): raise if it failed for good, else the seconds
        to wait before trying again (collect's Retry-After if it gave one, else full jitter)."""
        if status not in RETRIED_STATUSES | {0} or attempt == self.attempts - 1:
            raise error_of(status, text)
        if retry_after is not None and retry_after.isdigit():
            return min(self.cap, float(retry_after))
        return random.uniform(0, min(self.cap, self.base * 2 ** attempt))


class _Api:
    """The calls both clients make; each client does the I/O in its ``_call``."""

    @staticmethod
    def _send(user_id: str, payload: Any, idempotency_key: str | None, fields: dict[str, Any]) -> Call:
        return post(message({"user_id": user_id}, payload, **fields), idempotency_key)

    @staticmethod
    def _send_many(messages: list[dict[str, Any]], idempotency_key: str | None) -> Call:
        return post({"messages": messages}, idempotency_key)

    @staticmethod
    def _publish(topic: str, payload: Any, idempotency_key: str | None, fields: dict[str, Any]) -> Call:
        return post(message({"topic": topic}, payload, **fields), idempotency_key)

    @staticmethod
    def _broadcast(payload: Any, idempotency_key: str | None, fields: dict[str, Any]) -> Call:
        return post(message({"broadcast": True}, payload, **fields), idempotency_key)

    @staticmethod
    def _status(message_id: str) -> Call:
        return Call("GET", f"/v1/messages/{quote(message_id, safe='')}")

    @staticmethod
    def _cancel(message_id: str) -> Call:
        return Call("DELETE", f"/v1/messages/{quote(message_id, safe='')}")

    @staticmethod
    def _presence(user_ids: list[str]) -> Call:
        return Call("POST", "/v1/presence", {"user_ids": user_ids})

    @staticmethod
    def _topic(topic: str, users: bool) -> Call:
        return Call("GET", f"/v1/topics/{quote(topic, safe='')}" + ("?users=1" if users else ""))

    @staticmethod
    def _history(topic: str, since: int, limit: int) -> Call:
        return Call("GET", f"/v1/topics/{quote(topic, safe='')}/history?since={since}&limit={limit}")


class PushClient(_Api):
    """Blocking client."""

    def __init__(self, url: str, api_key: str, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy()) -> None:
        self.url, self.timeout, self.retry = url.rstrip("/"), timeout, retry
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def send(self, user_id: str, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
             deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        """``deliver_at`` (ms since the epoch) or ``delay_seconds`` schedules it; ``priority``: "high", "normal"
        (collect's default) or "low": under overload low, then normal, is refused (429, retried here after its
        Retry-After), high never."""
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return self._call(self._send(user_id, payload, idempotency_key, fields))["id"]

    def send_many(self, messages: list[dict[str, Any]], idempotency_key: str | None = None) -> list[str]:
        return self._call(self._send_many(messages, idempotency_key))["ids"]

    def publish(self, topic: str, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
                deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        """To every socket subscribed to ``topic`` now (at most once each, not replayed)."""
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return self._call(self._publish(topic, payload, idempotency_key, fields))["id"]

    def broadcast(self, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
                  deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        """To every socket connected now (at most once each, not replayed)."""
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return self._call(self._broadcast(payload, idempotency_key, fields))["id"]

    def status(self, message_id: str) -> dict[str, Any]:
        return self._call(self._status(message_id))

    def cancel(self, message_id: str) -> None:
        """Cancel a scheduled message that has not fired yet (``PushError`` 404 once it fired, or if unknown)."""
        self._call(self._cancel(message_id))

    def presence(self, user_ids: list[str]) -> dict[str, int]:
        """Each user's open sockets (0: offline), up to 1,000 users."""
        return self._call(self._presence(user_ids))["online"]

    def topic(self, topic: str, users: bool = False) -> dict[str, Any]:
        """The topic's subscribed sockets and nodes (and with ``users``, up to 1,000 user ids)."""
        return self._call(self._topic(topic, users))

    def history(self, topic: str, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """The topic's kept messages after offset ``since`` (``*``: broadcasts): ``{"epoch", "offset", "complete",
        "messages"}``, each message as subscribers received it."""
        return self._call(self._history(topic, since, limit))

    def _call(self, call: Call) -> Any:
        for attempt in itertools.count():
            request = urllib.request.Request(self.url + call.path, data=call.encode(), method=call.method,
                                             headers={**self._headers, **call.headers})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                wait = self.retry.judge(attempt, exc.code, exc.read().decode(errors="replace"), exc.headers.get("Retry-After"))
            except OSError as exc:
                wait = self.retry.judge(attempt, 0, repr(exc))
            time.sleep(wait)


class AsyncPushClient(_Api):
    """The same API for asyncio; pass your own ``aiohttp.ClientSession`` or let it make one (``await close()``)."""

    def __init__(self, url: str, api_key: str, session: aiohttp.ClientSession | None = None, timeout: float = 10.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.url, self.retry = url.rstrip("/"), retry
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._own = session is None
        self.session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        if self._own:
            await self.session.close()

    async def send(self, user_id: str, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
                   deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return (await self._call(self._send(user_id, payload, idempotency_key, fields)))["id"]

    async def send_many(self, messages: list[dict[str, Any]], idempotency_key: str | None = None) -> list[str]:
        return (await self._call(self._send_many(messages, idempotency_key)))["ids"]

    async def publish(self, topic: str, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
                      deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return (await self._call(self._publish(topic, payload, idempotency_key, fields)))["id"]

    async def broadcast(self, payload: Any, ttl: int | None = None, idempotency_key: str | None = None, *,
                        deliver_at: int | None = None, delay_seconds: int | None = None, priority: str | None = None) -> str:
        fields = fields_of(ttl, deliver_at, delay_seconds, priority)
        return (await self._call(self._broadcast(payload, idempotency_key, fields)))["id"]

    async def status(self, message_id: str) -> dict[str, Any]:
        return await self._call(self._status(message_id))

    async def cancel(self, message_id: str) -> None:
        """Cancel a scheduled message that has not fired yet (``PushError`` 404 once it fired, or if unknown)."""
        await self._call(self._cancel(message_id))

    async def presence(self, user_ids: list[str]) -> dict[str, int]:
        return (await self._call(self._presence(user_ids)))["online"]

    async def topic(self, topic: str, users: bool = False) -> dict[str, Any]:
        return await self._call(self._topic(topic, users))

    async def history(self, topic: str, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        return await self._call(self._history(topic, since, limit))

    async def _call(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                async with self.session.request(call.method, self.url + call.path, data=call.encode(),
                                                headers={**self._headers, **call.headers}) as response:
                    text = await response.text()
                    if response.status == call.ok:
                        return json.loads(text)
                    wait = self.retry.judge(attempt, response.status, text, response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                wait = self.retry.judge(attempt, 0, repr(exc))
            await asyncio.sleep(wait)
