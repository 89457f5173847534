"""Behind a trusted load balancer a node counts the clients it serves, not the balancer; anyone else's say is ignored."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.client import next_frame
from tests.conftest import RunningStack
from tests.integration.test_bad_input import assert_all_healthy
from tests.waits import scaled

CAP = "3"


@pytest.fixture
def trusting(start_stack) -> RunningStack:
    return start_stack(nodes=1, TRUSTED_PROXIES="127.0.0.0/8", MAX_ADDRESS_CONNECTIONS=CAP, PUSH_PROXY_PROTOCOL="1")


@pytest.fixture
def distrusting(start_stack) -> RunningStack:
    return start_stack(nodes=1, TRUSTED_PROXIES="10.0.0.0/8", MAX_ADDRESS_CONNECTIONS=CAP, PUSH_PROXY_PROTOCOL="1")


async def upgrade(running: RunningStack, user: str, forwarded_for: str | None = None, proxy_header: bytes = b"",
                  source: str = "127.0.0.1") -> ClientConnection:
    """A welcomed socket of ``user`` from ``source``, sent through a proxy that says ``forwarded_for`` or ``proxy_header``."""
    port = running.stack.push_ports[0]
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(5), source_address=(source, 0))
    sock.sendall(proxy_header)
    sock.setblocking(False)
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={await running.client.token(user)}", sock=sock,
                       additional_headers=headers, open_timeout=scaled(5))
    assert (await next_frame(ws))["type"] == "welcome"
    return ws


async def refused_status(attempt) -> int:
    with pytest.raises(InvalidStatus) as info:
        await attempt
    return info.value.response.status_code


def proxy_v2(source: str) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming ``source`` as the client."""
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("127.0.0.1").packed + struct.pack("!HH", 40000, 443)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


async def test_a_trusted_proxys_forwarded_clients_are_capped_each_not_the_proxy(trusting: RunningStack) -> None:
    """With TRUSTED_PROXIES=127.0.0.0/8 and a cap of 3, six upgrades forwarded for six addresses are all welcome,
    and a fourth forwarded for one of them gets 429."""
    held = [await upgrade(trusting, f"visitor{i}", f"198.51.100.{i}, 127.0.0.9") for i in range(6)]
    held += [await upgrade(trusting, f"regular{i}", "203.0.113.5") for i in range(3)]
    assert await refused_status(upgrade(trusting, "regular3", "203.0.113.5")) == 429
    await asyncio.gather(*(ws.close() for ws in held))
    await assert_all_healthy(trusting)


async def test_an_untrusted_peers_forwarded_for_header_and_proxy_header_are_ignored(distrusting: RunningStack) -> None:
    """With TRUSTED_PROXIES=10.0.0.0/8, loopback's X-Forwarded-For and PROXY headers name nobody: its fourth upgrade
    gets 429 whatever they say."""
    held = [await upgrade(distrusting, "spoofer0", "198.51.100.1"), await upgrade(distrusting, "spoofer1", "198.51.100.2"),
            await upgrade(distrusting, "spoofer2", proxy_header=b"PROXY TCP4 198.51.100.3 127.0.0.1 40000 443\r\n")]
    assert await refused_status(upgrade(distrusting, "spoofer3", "198.51.100.4")) == 429
    assert await refused_status(upgrade(distrusting, "spoofer4", proxy_header=proxy_v2("198.51.100.5"))) == 429
    await asyncio.gather(*(ws.close() for ws in held))
    await assert_all_healthy(distrusting)


async def test_a_trusted_balancers_proxy_headers_name_the_clients_it_passes_through(trusting: RunningStack) -> None:
    """With PUSH_PROXY_PROTOCOL=1, PROXY v1 and v2 headers from a trusted peer name the client: three from one
    address are welcome and the fourth gets 429, while another address and a headerless connection still get in."""
    v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n"
    held = [await upgrade(trusting, "tcp0", proxy_header=v1), await upgrade(trusting, "tcp1", proxy_header=proxy_v2("192.0.2.7")),
            await upgrade(trusting, "tcp2", proxy_header=v1)]
    assert await refused_status(upgrade(trusting, "tcp3", proxy_header=proxy_v2("192.0.2.7"))) == 429
    held += [await upgrade(trusting, "tcp4", proxy_header=proxy_v2("192.0.2.8")), await upgrade(trusting, "direct")]
    await asyncio.gather(*(ws.close() for ws in held))
    await assert_all_healthy(trusting)


async def test_a_malformed_proxy_header_closes_only_its_connection(trusting: RunningStack) -> None:
    """A connection that starts ``PROXY`` but is no valid header is closed before any HTTP answer; the node serves on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", trusting.stack.push_ports[0])
    writer.write(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), scaled(5)) == b""
    writer.close()
    await assert_all_healthy(trusting)
