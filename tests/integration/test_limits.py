"""A client cannot take more than its share of a node: connections per user and per address, acks per second."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.client import next_frame
from tests.conftest import RunningStack
from tests.integration.test_bad_input import assert_all_healthy, closed_with
from tests.waits import scaled, until


@pytest.fixture
def limited(start_stack) -> RunningStack:
    return start_stack(nodes=1, MAX_USER_CONNECTIONS="2", MAX_ADDRESS_CONNECTIONS="3", CLIENT_RATE="10", CLIENT_BURST="20")


async def test_a_users_connection_past_the_cap_is_closed_with_1008(limited: RunningStack) -> None:
    """With MAX_USER_CONNECTIONS=2 a user's third socket is closed with 1008; once one closes, a new one is welcome."""
    c = limited.client
    first, second = await c.connect("greedy"), await c.connect("greedy")
    code, reason = await closed_with(await c.open(await c.token("greedy")))
    assert code == 1008 and "2 connections" in reason
    await first.close()
    async def opened() -> tuple[Any, dict[str, Any]]:
        ws = await c.open(await c.token("greedy"))
        return ws, await next_frame(ws)

    ws, _ = await until(opened, lambda answer: answer[1]["type"] == "welcome", what="a new socket of greedy to be welcomed",
                        every=0)
    await asyncio.gather(ws.close(), second.close())
    await assert_all_healthy(limited)


async def test_an_address_past_the_cap_gets_429_and_other_addresses_still_connect(limited: RunningStack) -> None:
    """With MAX_ADDRESS_CONNECTIONS=3 the fourth upgrade from 127.0.0.1 is an HTTP 429; 127.0.0.2 still connects."""
    c = limited.client
    held = [await c.connect(f"neighbour{i}") for i in range(3)]
    with pytest.raises(InvalidStatus) as info:
        await c.open(await c.token("neighbour3"))
    assert info.value.response.status_code == 429
    url = f"ws://127.0.0.1:{limited.stack.push_ports[0]}/ws?token={await c.token('elsewhere')}"
    other = await connect(url, open_timeout=scaled(5), local_addr=("127.0.0.2", 0))
    assert (await next_frame(other))["type"] == "welcome"
    await asyncio.gather(other.close(), *(ws.close() for ws in held))


async def test_acks_faster_than_the_client_rate_close_the_socket_with_1008(limited: RunningStack) -> None:
    """With CLIENT_RATE=10 and CLIENT_BURST=20, acking 25 ids at once closes the socket with 1008; pings within budget do not."""
    ws = await limited.client.connect("ack-flooder")
    for _ in range(5):
        await ws.send('{"type": "ping"}')
        assert await next_frame(ws) == {"type": "pong"}
    await ws.send('{"type": "ack", "ids": [%s]}' % ",".join(f'"m{i}"' for i in range(25)))
    code, reason = await closed_with(ws)
    assert code == 1008 and "acks a second" in reason
    await assert_all_healthy(limited)
