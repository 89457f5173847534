"""A draining node's reconnect advice: when each socket leaves and for which node (pure logic)."""

from __future__ import annotations

import orjson

from services.push.drain import advice
from shared.wire.protocol import ReconnectFrame


def test_advice_spreads_sockets_evenly_over_the_window_and_deals_them_round_robin_over_the_other_nodes() -> None:
    """Socket i of n leaves after window * i / n ms, for node i mod the number of other nodes."""
    frames = advice(4, 10_000, ["ws://b/ws", "ws://c/ws"])
    assert [f.after_ms for f in frames] == [0, 2500, 5000, 7500]
    assert [f.url for f in frames] == ["ws://b/ws", "ws://c/ws", "ws://b/ws", "ws://c/ws"]


def test_advice_names_no_url_when_no_other_node_is_live() -> None:
    """With no other live node the frame leaves the url out (the client picks from the directory)."""
    assert [orjson.loads(f.encode()) for f in advice(2, 1000, [])] == [
        {"type": "reconnect", "after_ms": 0}, {"type": "reconnect", "after_ms": 500}]
    assert orjson.loads(ReconnectFrame(7, "ws://b/ws").encode()) == {"type": "reconnect", "after_ms": 7, "url": "ws://b/ws"}
