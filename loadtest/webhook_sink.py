"""The webhooks benchmark's endpoint: a process of its own (so its work never slows the bench's sockets) on a free
loopback port, answering 500 for the first ``outage`` seconds after its first request, 200 after.

``POST /hook`` takes one event; ``GET /tally`` tells what it saw: requests by status, how many
``webhook-id``s were answered 200, the repeats of one already answered 200 (duplicates), and when the
outage ended and the last new event was accepted (wall clock, seconds); ``GET /tally?ids=1`` adds
the message ids of the events answered 200.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from aiohttp import web

from tools.cluster import free_port


@dataclass
class Seen:
    outage: float
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: dict[str, str] = field(default_factory=dict)  # webhook-id -> message id
    duplicates: int = 0
    first_request: float = 0.0
    last_new: float = 0.0

    def answer(self, webhook_id: str, body: bytes) -> int:
        now = time.time()
        self.first_request = self.first_request or now
        status = 500 if now < self.first_request + self.outage else 200
        self.statuses[status] += 1
        if status == 200:
            if webhook_id in self.accepted:
                self.duplicates += 1
            else:
                self.accepted[webhook_id] = orjson.loads(body)["data"].get("message_id", "")
                self.last_new = now
        return status

    def tally(self, ids: bool) -> dict[str, Any]:
        return {"statuses": {str(s): n for s, n in self.statuses.items()}, "accepted": len(self.accepted), "duplicates": self.duplicates,
                "last_new": self.last_new, "outage_ended": self.first_request + self.outage if self.first_request else 0.0,
                **({"message_ids": list(self.accepted.values())} if ids else {})}


def app(seen: Seen) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=seen.answer(request.headers.get("webhook-id", ""), await request.read()))

    async def tally(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(seen.tally("ids" in request.query)), content_type="application/json")

    application = web.Application()
    application.router.add_post("/hook", hook)
    application.router.add_get("/tally", tally)
    return application


def serve(port: int, outage: float) -> None:
    uvloop.install()
    web.run_app(app(Seen(outage)), host="127.0.0.1", port=port, access_log=None, print=None)


class Sink:
    """The endpoint's process, started on entry and ended (by its own pid) on exit."""

    def __init__(self, outage: float) -> None:
        self.port = free_port()
        self.process = multiprocessing.get_context("spawn").Process(target=serve, args=(self.port, outage),
                                                                    name="webhook-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Sink:
        self.process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.join(10)
