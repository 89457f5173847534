"""dispatch's batching by bytes, against the bytes the link really sends (pure logic)."""

from __future__ import annotations

import itertools

from services.dispatch.forwarder import chunk_by_bytes
from shared.model.message import BROADCAST
from shared.wire.protocol import DeliverBatch, Delivery, MessageFrame

ENVELOPE = 80  # the head's length and the head's own fields around its items: {"type":"deliver","batch":...,"at":...,"items":[...]}


def test_every_batch_encodes_within_the_byte_budget_whatever_its_frames_hold() -> None:
    """Frames whose payloads hold ASCII, emoji, quotes, backslashes and control characters, to users or topics: each
    item is sized at least as large as it encodes, so every batch of several items, as sent on the link, fits."""
    payloads = ["plain", "\U0001F600" * 40, '"' * 60, "\\" * 60, "\u0000\n\t" * 20, {"é€": ["x", 1, None]}]
    shapes = [(("u1", "user-two"), None), ((), "room:42"), ((), BROADCAST)]
    items = [Delivery(f"{n:04d}", MessageFrame(f"{n:04d}", payload, 10**12, topic).encode(), 10**12, users, topic)
             for n, (payload, (users, topic)) in enumerate(itertools.product(payloads * 4, shapes))]
    for item in items:
        assert len(DeliverBatch(1, 1, (item,)).encode()) - len(DeliverBatch(1, 1, ()).encode()) <= item.encoded_size()
    chunks = chunk_by_bytes(items, 1000)
    assert [d for c in chunks for d in c] == items, "every item once, in order"
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk) == 1 or len(DeliverBatch(2**40, 2**45, tuple(chunk)).encode()) <= 1000 + ENVELOPE
