"""What a socket remembers of the frames it was written: bounded, however long its client goes without acking."""

from __future__ import annotations

from typing import cast

from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection

from services.push.hub import SENT_LIMIT, Session


def forgotten() -> float:
    return REGISTRY.get_sample_value("push_sent_forgotten_total") or 0.0


def test_a_socket_that_never_acks_remembers_only_its_newest_sent_ids_and_counts_the_rest_forgotten() -> None:
    """Written 25,000 messages and acking none, a session keeps the newest SENT_LIMIT ids (so those are still never
    written twice) and forgets the oldest, each counted."""
    session = Session(cast(ServerConnection, None), "silent")
    before = forgotten()
    ids = [f"{n:08x}0000" for n in range(25_000)]
    for message_id in ids:
        session.sent.add(message_id)
    assert len(session.sent) == SENT_LIMIT
    assert all(m in session.sent for m in ids[-SENT_LIMIT:])
    assert not any(m in session.sent for m in ids[:-SENT_LIMIT])
    assert forgotten() - before == 25_000 - SENT_LIMIT
    session.acknowledged(ids[-10:])
    assert len(session.sent) == SENT_LIMIT - 10 and ids[-1] in session.sent, "acked: not unacked, still not written again"
