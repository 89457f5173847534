"""A bounded raw-socket fuzz of a real push node: garbage bytes, bad handshakes, bad frames before and after an
authenticated handshake. Each offending connection is closed (with the documented close code once a websocket
exists), no input gets a 5xx, a 1011 or a hang, and the node stays healthy and keeps delivering."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson

from tests.client import next_frame
from tests.conftest import RunningStack, report_fuzz
from tests.waits import scaled

SESSIONS = 500  # authenticated connections, each sending a few good frames then one bad one
HANDSHAKES = 700  # connections whose bytes never make a websocket (or whose token is bad)
STALLED = 10  # handshakes left unfinished: the node drops them after its open timeout (10 s)
PARALLEL = 100
READ_TIMEOUT = scaled(20.0)  # longer than the node's open timeout: a connection still open past it is a hang
MAX_FRAME = 1024 * 1024  # the node's MAX_FRAME_BYTES default
GOOD_FRAMES = 12  # at most, before the offending one


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True,
          declared: int | None = None) -> bytes:
    """One client frame as RFC 6455 lays it out; ``declared`` claims a length other than the payload's."""
    length = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 2**16:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade(port: int, path: str, headers: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n").encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (servers never mask)."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length >= 126:
        length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8), "big")
    return b0 & 0x0F, await reader.readexactly(length)


async def until_closed(reader: asyncio.StreamReader) -> str:
    """How the node ends the connection: ``close <code>`` (a close frame), or ``eof`` (TCP closed)."""
    try:
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 8:
                return f"close {int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else 1005}"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "eof"


async def http_answer(reader: asyncio.StreamReader) -> str:
    """``http <status>`` for the node's answer to a handshake, or ``eof`` if it closed without one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return "eof"
    return f"http {head.split(b' ', 2)[1].decode()}"


class Fuzzer:
    def __init__(self, port: int, tokens: list[str], rng: random.Random) -> None:
        self.port = port
        self.tokens = tokens
        self.rng = rng
        self.outcomes: Counter[str] = Counter()  # per input: what the node did
        self.unexpected: list[str] = []

    def record(self, kind: str, outcome: str, expected: set[str], inputs: int = 1) -> None:
        self.outcomes[outcome] += inputs
        if outcome not in expected:
            self.unexpected.append(f"{kind}: {outcome}, expected one of {sorted(expected)}")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=4 * MAX_FRAME)

    async def handshake_case(self) -> None:
        """Bytes that are not a websocket handshake, or a handshake the node must refuse."""
        rng, port = self.rng, self.port
        cases: list[tuple[str, bytes, set[str]]] = [
            ("garbage", rng.randbytes(rng.randint(1, 3000)) + b"\r\n\r\n", {"http 400", "eof"}),
            ("garbage request line", f"{rng.choice(['GET', 'BREW', '', 'G ET'])} /{rng.randbytes(8).hex()} "
                                     f"HTTP/{rng.choice(['1.1', '9.9', '', '1'])}\r\n\r\n".encode(), {"http 400", "http 404", "eof"}),
            ("no upgrade", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", {"http 400", "http 426"}),
            ("bad version", upgrade(port, "/ws").replace(b"Version: 13", b"Version: 8"), {"http 400", "http 426"}),
            ("no key", upgrade(port, "/ws").replace(b"Sec-WebSocket-Key", b"X-Key"), {"http 400"}),
            ("bad key", upgrade(port, "/ws").replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: !"), {"http 400"}),
            ("unknown path", upgrade(port, f"/{rng.randbytes(6).hex()}"), {"http 404"}),
            ("internal without key", upgrade(port, "/internal"), {"http 401"}),
            ("long header", upgrade(port, "/ws", f"X-Long: {'a' * rng.randint(8200, 20000)}\r\n"), {"http 400", "http 431", "eof"}),
            ("many headers", upgrade(port, "/ws", "".join(f"X-{i}: {i}\r\n" for i in range(200))), {"http 400", "http 431", "eof"}),
        ]
        kind, data, expected = rng.choice(cases)
        reader, writer = await self.connect()
        try:
            writer.write(data)
            await writer.drain()
            answer = await http_answer(reader)
            self.record(kind, answer if answer == "eof" else answer + (" then eof" if await until_closed(reader) == "eof" else ""),
                        {e if e == "eof" else e + " then eof" for e in expected})
        finally:
            writer.close()

    async def bad_token_case(self) -> None:
        """A websocket whose token is garbage: opened, then closed with 4001."""
        token = self.rng.choice(["", "x", self.rng.randbytes(30).hex(), self.tokens[0][:-3] + "abc"])
        reader, writer = await self.connect()
        try:
            writer.write(upgrade(self.port, f"/ws?token={token}"))
            answer = await http_answer(reader)
            self.record("bad token", answer if answer != "http 101" else await until_closed(reader), {"close 4001"})
        finally:
            writer.close()

    async def stalled_case(self) -> None:
        """Half a handshake, then silence: the node drops it after its open timeout."""
        reader, writer = await self.connect()
        try:
            writer.write(upgrade(self.port, "/ws")[: self.rng.randint(0, 60)])
            self.record("stalled handshake", await http_answer(reader), {"eof"})
        finally:
            writer.close()

    def good_frame(self) -> tuple[list[bytes], bool]:
        """A frame the node accepts: an application ping (whole or fragmented), or a websocket ping. Returns the
        frames to send and whether a pong text frame answers them."""
        rng = self.rng
        if rng.random() < 0.3:
            return [frame(0x9, rng.randbytes(rng.randint(0, 125)))], False
        text = orjson.dumps({"type": "ping", **({"n": rng.random()} if rng.random() < 0.5 else {})})
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 3)))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        return [frame(0x1 if i == 0 else 0x0, p, fin=i == len(parts) - 1) for i, p in enumerate(parts)], True

    def bad_frame(self) -> tuple[str, bytes, set[str]]:
        """An offending frame and the close codes the node may answer it with (the node's 4002 for bad frames,
        1009 too large, 1007 bad UTF-8, 1002 a broken websocket protocol)."""
        rng = self.rng
        text = rng.choice([rng.randbytes(rng.randint(0, 200)).decode("latin-1"), '{"type": "ack"}', '{"type": "ack", "ids": [1]}',
                           '{"type": "shout"}', "[1]", "null", '{"type": "ack", "ids": []}', "{{{", ""]).encode()
        cases: list[tuple[str, bytes, set[str]]] = [
            ("garbage text", frame(0x1, text), {"close 4002"}),
            ("binary", frame(0x2, rng.randbytes(rng.randint(0, 500))), {"close 4002"}),
            ("bad utf-8", frame(0x1, b'{"type": "ping", "x": "\xff\xfe' + rng.randbytes(4) + b'"}'), {"close 1007"}),
            ("oversized", frame(rng.choice([0x1, 0x2]), b"", declared=rng.randint(MAX_FRAME + 1, 2**40)), {"close 1009"}),
            ("oversized fragments", frame(0x1, b"[", fin=False) + frame(0x0, b"", declared=MAX_FRAME + 10), {"close 1009"}),
            ("reserved opcode", frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), rng.randbytes(10)), {"close 1002"}),
            ("unmasked", frame(0x1, b'{"type": "ping"}', masked=False), {"close 1002"}),
            ("rsv bits", frame(0x1, b'{"type": "ping"}', rsv=rng.randint(1, 7)), {"close 1002"}),
            ("long control frame", frame(0x9, rng.randbytes(rng.randint(126, 3000))), {"close 1002"}),
            ("fragmented control frame", frame(0x9, b"p", fin=False), {"close 1002"}),
            ("stray continuation", frame(0x0, b"x"), {"close 1002"}),
            ("interleaved message", frame(0x1, b"{", fin=False) + frame(0x1, b"}"), {"close 1002"}),
            ("bad close code", frame(0x8, rng.choice([0, 999, 1004, 1005, 1006, 1015, 2000, 5000]).to_bytes(2, "big")),
             {"close 1002"}),
            ("one-byte close", frame(0x8, b"\x03"), {"close 1002"}),
            ("client close", frame(0x8, (1000).to_bytes(2, "big") + b"bye"), {"close 1000"}),
            ("cut off", frame(0x1, b'{"type": "ping"}')[: rng.randint(1, 10)], {"eof"}),
        ]
        return rng.choice(cases)

    async def session_case(self) -> None:
        """An authenticated websocket: a few frames the node accepts (each answered), then one that it must refuse."""
        rng = self.rng
        reader, writer = await self.connect()
        try:
            writer.write(upgrade(self.port, f"/ws?token={rng.choice(self.tokens)}"))
            assert await http_answer(reader) == "http 101"
            opcode, welcome = await read_frame(reader)
            assert opcode == 1 and orjson.loads(welcome)["type"] == "welcome"
            for _ in range(rng.randint(0, GOOD_FRAMES)):
                frames, answered = self.good_frame()
                writer.write(b"".join(frames))
                opcode, payload = await read_frame(reader)
                outcome = "pong" if (opcode, payload) == (1, b'{"type":"pong"}') or (opcode == 0xA and not answered) else "other"
                self.record("good frame", outcome, {"pong"}, len(frames))
            kind, data, expected = self.bad_frame()
            writer.write(data)
            if kind == "cut off":
                writer.write_eof()
            try:
                outcome = await asyncio.wait_for(until_closed(reader), 5)
            except TimeoutError:
                outcome = "hang"
            self.record(kind, outcome, expected)
        finally:
            writer.close()



    async def run(self, cases: list[Callable[[], Awaitable[None]]], parallel: int) -> None:
        """Run the cases, ``parallel`` connections at a time; a case the node leaves unanswered counts as a hang."""
        limit = asyncio.Semaphore(parallel)

        async def one(case: Callable[[], Awaitable[None]]) -> None:
            async with limit:
                try:
                    async with asyncio.timeout(READ_TIMEOUT):
                        await case()
                except TimeoutError:
                    self.record(case.__name__, "hang", set())

        await asyncio.gather(*(one(c) for c in cases))


async def test_push_node_survives_raw_socket_fuzzing(shared_stack: RunningStack) -> None:
    """Thousands of garbage handshakes and bad frames each close their own connection as documented, and the node
    stays healthy: /healthz answers 200 and a new client still receives a message."""
    client, port = shared_stack.client, shared_stack.stack.push_ports[0]
    seed = time.time_ns()
    fuzzer = Fuzzer(port, [await client.token(f"fuzz-{i}") for i in range(8)], random.Random(seed))
    cases = ([fuzzer.stalled_case] * STALLED + [fuzzer.session_case] * SESSIONS
             + [fuzzer.handshake_case] * HANDSHAKES + [fuzzer.bad_token_case] * (HANDSHAKES // 10))
    try:
        await fuzzer.run(cases, PARALLEL)
    finally:
        report_fuzz("raw sockets: push node", fuzzer.outcomes,
                    sum(n for o, n in fuzzer.outcomes.items() if o.startswith(("http 5", "close 1011", "hang"))))
    assert not fuzzer.unexpected, f"seed {seed}: {Counter(fuzzer.unexpected).most_common(10)}"

    async with client.session.get(f"{shared_stack.stack.push_url(port)}/healthz") as r:
        assert r.status == 200
    ws = await client.connect("after-fuzz")
    status, accepted = await client.post({"user_id": "after-fuzz", "payload": "still here"})
    assert status == 202
    assert (await next_frame(ws))["id"] == accepted["id"]
    await ws.close()
