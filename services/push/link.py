"""The node's end of the dispatch link: take a batch, write it to sockets, say which were written."""

from __future__ import annotations

import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.push.hub import Hub
from services.push.metrics import ABSENT, DELIVERED, DELIVERY_LATENCY, PUBLISHED
from services.push.sequencer import Sequencer
from shared.delivery.lifecycle import LifecycleWriter
from shared.infra import tracing
from shared.infra.metrics import ERRORS, MESSAGES_IN, MESSAGES_OUT
from shared.model.message import BROADCAST
from shared.model.priority import Priority
from shared.model.topics import Position
from shared.wire.errors import MalformedRequest
from shared.wire.protocol import BatchResult, DeliverBatch, Delivery, with_position

log = logging.getLogger(__name__)


async def deliver_batch(hub: Hub, batch: DeliverBatch, lifecycle: LifecycleWriter, node: str, sequencer: Sequencer) -> BatchResult:
    """Write each message to its users' sockets (all of a socket's in one write), then each topic message to its
    subscribers' sockets; mark the pairs written as dispatched and delivered, and count a topic message's sockets for
    this node."""
    now = time.time()
    delivered, absent, published = [], 0, 0
    with hub.corked():
        for item in batch.items:
            if item.topic is None:
                for user in item.users:
                    if hub.deliver(user, item.message_id, item.frame, item.priority is Priority.HIGH):
                        delivered.append((item.message_id, user))
                        DELIVERY_LATENCY.observe(max(0.0, now - item.ts / 1000))
                    else:
                        absent += 1
    for item in batch.items:
        if item.topic is not None:
            sockets = await publish(hub, item, sequencer)
            published += sockets
            reached = {"dispatched": batch.at, **({"delivered": int(now * 1000)} if sockets else {})}
            lifecycle.count(item.message_id, node, sockets, reached)
            if sockets:
                DELIVERY_LATENCY.observe(max(0.0, now - item.ts / 1000))
    lifecycle.mark("dispatched", delivered, batch.at)
    lifecycle.mark("delivered", delivered, int(now * 1000))
    MESSAGES_IN.inc(len(delivered) + absent)
    MESSAGES_OUT.inc(len(delivered) + published)
    DELIVERED.inc(len(delivered))
    PUBLISHED.inc(published)
    ABSENT.inc(absent)
    return BatchResult(batch.batch, len(delivered) + published)


async def publish(hub: Hub, item: Delivery, sequencer: Sequencer) -> int:
    """Write a topic message to its subscribers here, after any of the topic's messages this node missed
    (``sequencer.py``); return the sockets it was written to (0 for a late copy)."""
    if item.topic is None:
        return 0
    high = item.priority is Priority.HIGH
    if item.position is None or not (item.topic == BROADCAST or hub.subscribers(item.topic)):
        return await hub.publish(item.message_id, item.frame, item.topic, high)
    async with sequencer.turn(item.topic):
        missed = await sequencer.admit(item.topic, item.position)
        if missed is None:  # a late copy of a message written already
            return 0
        for m in missed:
            frame = with_position(m.frame, Position(m.offset, item.position.epoch))
            await hub.publish(m.message_id, frame, item.topic, offset=m.offset)
        return await hub.publish(item.message_id, item.frame, item.topic, high, item.position.offset)


async def serve_link(ws: ServerConnection, hub: Hub, lifecycle: LifecycleWriter, node: str, sequencer: Sequencer) -> None:
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
            with tracing.span("push.batch", batch.trace, node=node, deliveries=len(batch.items)):
                result = await deliver_batch(hub, batch, lifecycle, node, sequencer)
            await ws.send(result.encode())
    except ConnectionClosed:
        pass
    log.info("dispatch link closed", extra={"peer": peer})
