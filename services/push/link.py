"""The node's end of the dispatch link: take a batch, write it to sockets, say which were written."""

from __future__ import annotations

import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.push.hub import Hub
from services.push.metrics import ABSENT, DELIVERED, DELIVERY_LATENCY
from shared.errors import MalformedRequest
from shared.lifecycle import LifecycleWriter
from shared.metrics import ERRORS, MESSAGES_IN, MESSAGES_OUT
from shared.protocol import BatchResult, DeliverBatch
from shared.store import delivery_id

log = logging.getLogger(__name__)


def deliver_batch(hub: Hub, batch: DeliverBatch, lifecycle: LifecycleWriter) -> BatchResult:
    now = time.time()
    delivered = []
    for index, item in enumerate(batch.items):
        if hub.deliver(item.user_id, item.message_id, item.frame):
            delivered.append(index)
            DELIVERY_LATENCY.observe(max(0.0, now - item.ts / 1000))
    lifecycle.mark("delivered", [delivery_id(batch.items[i].message_id, batch.items[i].user_id) for i in delivered])
    MESSAGES_IN.inc(len(batch.items))
    MESSAGES_OUT.inc(len(delivered))
    DELIVERED.inc(len(delivered))
    ABSENT.inc(len(batch.items) - len(delivered))
    return BatchResult(batch.batch, tuple(delivered))


async def serve_link(ws: ServerConnection, hub: Hub, lifecycle: LifecycleWriter) -> None:
    peer = str(ws.remote_address)
    log.info("dispatch link open", extra={"peer": peer})
    try:
        async for data in ws:
            try:
                batch = DeliverBatch.decode(data)
            except MalformedRequest as exc:
                ERRORS.labels(exc.code).inc()
                log.warning("bad frame on dispatch link", extra={"peer": peer, "error": exc.message})
                await ws.close(exc.close_code, exc.message[:120])
                return
            await ws.send(deliver_batch(hub, batch, lifecycle).encode())
    except ConnectionClosed:
        pass
    log.info("dispatch link closed", extra={"peer": peer})
