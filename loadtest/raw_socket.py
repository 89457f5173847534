"""A minimal websocket client for load generators that hold sockets rather than read them closely: the upgrade
request written as fixed bytes, the server's (unmasked) frames parsed by hand, a ping answered, a close frame on the
way out. A handshake costs it a small fraction of what websockets' client spends, so a scenario about what a server
can take (``bench-parts``' sockets, ``bench``'s connections) measures the server rather than its clients, which share
the 2 cores with it.

Every request carries RFC 6455's sample key (the server's answer is checked against its accept value): the key
proves nothing about the client, and a server must not expect it to differ between connections.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # the sample key's accept value
OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9
LENGTH_16, LENGTH_64 = struct.Struct("!H"), struct.Struct("!Q")
CLOSE_NORMAL = bytes((0x88, 0x82, 0, 0, 0, 0)) + struct.pack("!H", 1000)  # masked with a zero key


def upgrade_request(host: str, path: str) -> bytes:
    """The bytes of an upgrade request for ``path`` (with its query) on ``host`` (``name:port``)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {SAMPLE_KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class RawSocket(asyncio.Protocol):
    """One socket: ``welcome`` resolves with the server's first text frame (or fails: refused, closed first); each
    later text frame goes to ``on_text``."""

    def __init__(self, request: bytes, on_text: Callable[[bytes], None] = lambda _: None) -> None:
        self.request = request
        self.on_text = on_text
        self.welcome: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: Any = None  # uvloop's TCPTransport (no asyncio.Transport subclass)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.refused(exc or ConnectionResetError("closed before the welcome"))

    def refused(self, exc: Exception) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(exc)

    def close(self) -> None:
        """Say goodbye (1000) and drop the connection, without waiting for the server's answer."""
        if not self.transport.is_closing():
            self.transport.write(CLOSE_NORMAL)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, found, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101") or ACCEPT not in head:
                self.refused(ConnectionRefusedError(head.split(b"\r\n")[0].decode()))
                self.transport.close()
                return
            self.upgraded, self.buffer = True, bytearray(rest)
        while (frame := self.next_frame()) is not None:
            opcode, payload = frame
            if opcode == OP_PING:
                self.transport.write(bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload)
            elif opcode == OP_TEXT and not self.welcome.done():
                self.welcome.set_result(payload)
            elif opcode == OP_TEXT:
                self.on_text(payload)
            elif opcode == OP_CLOSE:
                code = LENGTH_16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
                self.refused(ConnectionRefusedError(f"closed by the server: {code} {payload[2:].decode(errors='replace')}"))
                self.transport.close()

    def next_frame(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        length, start = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = LENGTH_16.unpack_from(buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = LENGTH_64.unpack_from(buf, 2)[0], 10
        if len(buf) < start + length:
            return None
        frame = (buf[0] & 0x0F, bytes(buf[start:start + length]))
        del buf[:start + length]
        return frame
