"""The node pings every socket from one task: an answering socket stays open, a silent one is closed with 1011."""

from __future__ import annotations

import pytest

from tests.client import next_frame
from tests.conftest import RunningStack
from tests.integration.test_bad_input import closed_with
from tests.waits import until


@pytest.fixture
def pinging(start_stack) -> RunningStack:
    return start_stack(nodes=1, PING_INTERVAL_SECONDS="0.3")


async def test_a_socket_that_stops_answering_pings_is_closed_with_1011_and_one_that_answers_stays(pinging: RunningStack) -> None:
    """With PING_INTERVAL_SECONDS=0.3, a client that stops reading (so answers no ping) is closed with 1011 once a ping
    goes unanswered, while a client that reads on through the same passes keeps its socket."""
    c = pinging.client
    node = pinging.stack.push_url(pinging.stack.push_ports[0])
    silent, lively = await c.connect("silent"), await c.connect("lively")
    silent.transport.pause_reading()
    await until(lambda: c.metric(node, "push_keepalive_closed_total"), lambda n: n == 1, what="the node to close the silent socket")
    silent.transport.resume_reading()  # the close frame that waited in its buffer is read now
    code, reason = await closed_with(silent)
    assert (code, reason) == (1011, "keepalive ping timeout")
    await lively.send('{"type": "ping"}')
    assert await next_frame(lively) == {"type": "pong"}, "the answering socket is open after the same passes"
    assert await c.metric(node, "push_keepalive_closed_total") == 1
    await lively.close()
